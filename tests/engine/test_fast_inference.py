"""engine/fast_inference.py: amp_cpu auto measured on the configured model, compile: true for inference."""
import logging

import torch
from easydict import EasyDict

from engine.fast_inference import compile_for_inference, inference_probe, precision_key, prepare_inference
from models import build_model
from utils.precision import FORCE_ENV, precision_cache_path


def _cfg(**kw):
    return EasyDict(model="TaskDiffusion", backbone="TaskDiffusion_vitT",
                    backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2, taps=[1, 2, 3]),
                    backbone_weights=None, drop_path_rate=0.0, final_embed_dim=16, timesteps=3, randsteps=1,
                    bit_scales={"all": 0.01}, module_layer=3, with_aux=True, db_name="PASCALContext",
                    TASKS=dict(NAMES=["semseg", "sal"]), TRAIN=dict(SCALE=[32, 48]), ignore_index=255,
                    amp=True, **kw)


def test_auto_times_the_model_once_logs_and_caches(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.setenv("TASKDIFFUSION_CACHE", str(tmp_path))
    cfg = _cfg(amp_cpu="auto")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(torch.is_autocast_enabled("cpu")) or forward(*a, **k))
    with caplog.at_level(logging.INFO, logger="taskdiffusion"):
        amp = prepare_inference(cfg, model, "cpu")
    assert isinstance(amp, bool) and set(calls) == {True, False}  # both precisions ran on this model
    assert "amp_cpu auto: CPU inference in" in caplog.text and "measured now" in caplog.text
    assert precision_key(cfg) in precision_cache_path().read_text()
    calls.clear()
    assert prepare_inference(cfg, model, "cpu") == amp and calls == []  # cached: no second timing
    assert not prepare_inference(_cfg(amp_cpu=False), model, "cpu") and calls == []


def test_probe_runs_at_the_configured_crop():
    cfg = _cfg()
    model = build_model(cfg).eval()
    seen = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    inference_probe(model, cfg, "cpu")(False)
    assert seen == [(1, 3, 32, 48)]


def test_compile_true_compiles_regions_and_logs_the_warm_up(caplog):
    torch._dynamo.reset()
    cfg = _cfg(compile=True, compile_options={"backend": "eager"})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randn(1, 3, 32, 48)
    noise = model.initial_noise(x, ["a"], 0)
    with torch.no_grad():
        ref = model(x, noise=noise)["pred"]
    with caplog.at_level(logging.INFO, logger="taskdiffusion"):
        compile_for_inference(cfg, model, "cpu", amp=False)
    assert "compile: warm-up done in" in caplog.text
    assert hasattr(model.backbone, "_compiled_call_impl") and model.backbone._compiled_call_impl is not None
    with torch.no_grad():
        out = model(x, noise=noise)["pred"]
    for t in ref:
        torch.testing.assert_close(out[t], ref[t], rtol=1e-5, atol=1e-6)
    assert compile_for_inference(_cfg(), build_model(_cfg()), "cpu", amp=False) is not None  # compile off: no-op
