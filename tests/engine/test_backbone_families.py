"""Every timm backbone family through the whole engine (docs/extending.md#a-new-backbone): per family (Swin,
ConvNeXt, DINOv2) a tiny random-init model of the shipped demo config trains through main.main at an odd,
non-square crop that is a valid multiple, resumes from last.pth when the same command asks for more
iterations, and infer.py writes predictions at the size of an odd-sized image. Local weight files in
timm's formats load offline through build_model; a missing or wrong file stops main.main with one
`error:` line naming the file and the timm tag (exit status 2).

Sizes are for a 2-core CI machine: the 48 px synthetic set of conftest.py padded into tiny crops, batch 2,
2 + 2 iterations, 4 val images with few edge thresholds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import infer
import main as main_mod
from tests.engine.conftest import BASE_OPTS, ROOT

DEMO = ROOT / "configs" / "demo"
# family -> (demo config, crop H x W: a multiple of the backbone's input multiple, extra --opts)
FAMILIES = {
    # strides 4..32: input multiple 32; window 4x6 divides every stage grid (16x24, 8x12, 4x6; 2x3 is one window)
    "swin": ("synthetic_pascal_swin.yml", (64, 96), ["backbone_kwargs.model_kwargs.window_size=[4,6]"]),
    # decoder stride 8 (a 12x8 grid): the stride-4 stage is averaged down, the 16/32 ones enlarged
    "convnext": ("synthetic_pascal_convnext.yml", (96, 64), ["decoder_stride=8"]),
    # patch 14 on a stride-14 decoder: input multiple 14, a 4x5 grid
    "dinov2": ("synthetic_pascal_dinov2.yml", (56, 70), []),
}
TASKS = ("semseg", "human_parts", "sal", "normals", "edge")
ODD = (37, 53)  # the infer.py image: H x W


def _opts(family: str, *more: str) -> list:
    _, (h, w), extra = FAMILIES[family]
    return [*BASE_OPTS, f"crop_size=[{h},{w}]", "val_interval=1000", *extra, *more]


def _train_argv(family, data, out, *more):
    return ["--config_exp", str(DEMO / FAMILIES[family][0]), "--run_mode", "train", "--data_root", str(data),
            "--output_dir", str(out), "--device", "cpu", "--opts", *_opts(family, *more)]


def _iteration(out) -> int:
    return int(torch.load(out / "checkpoints" / "last.pth", map_location="cpu", weights_only=False)["iteration"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_resumes_and_infers(family, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert main_mod.main(_train_argv(family, tiny_data, out, "max_iter=2")) == 0
    assert _iteration(out) == 2
    assert main_mod.main(_train_argv(family, tiny_data, out, "max_iter=4")) == 0  # same command, more iterations
    assert _iteration(out) == 4
    log = (out / "log.txt").read_text()
    assert "resumed from" in log and "2 of 4 iterations done" in log, log[-2000:]

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*ODD, 3), dtype=np.uint8)).save(images / "odd.png")
    pred = tmp_path / "pred"
    argv = ["--config_exp", str(DEMO / FAMILIES[family][0]), "--trained_model", str(out / "checkpoints" / "last.pth"),
            "--input", str(images), "--output", str(pred), "--device", "cpu", "--opts", *_opts(family)]
    assert infer.main(argv) == 0
    for t in TASKS:
        assert Image.open(pred / t / "odd.png").size == (ODD[1], ODD[0]), t


# ------------------------------------------------------------------------------------- weights, offline
def _cfg(family, data, out, *more):
    from engine.config import load_config

    return load_config(DEMO / FAMILIES[family][0], opts=_opts(family, *more), data_root=data, output_dir=str(out))


def _save_timm_weights(model, path):
    """The wrapped timm model's weights as timm names them, in the file's format (safetensors or .pth)."""
    import timm

    full = timm.create_model(model.timm_name, pretrained=False, num_classes=0, **model.timm_kwargs)
    sd = {k: v.contiguous() for k, v in full.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)  # a training checkpoint layout: timm's reader unwraps it
    return sd


@pytest.mark.parametrize("family,fmt", [("swin", "safetensors"), ("convnext", "pth"), ("dinov2", "safetensors")])
def test_local_weights_load_through_build_model(family, fmt, tiny_data, tmp_path):
    from models import build_model

    probe = build_model(_cfg(family, tiny_data, tmp_path / "a"))
    path = tmp_path / f"{family}.{fmt}"
    sd = _save_timm_weights(probe.backbone, path)
    model = build_model(_cfg(family, tiny_data, tmp_path / "b", f"backbone_weights={path}"))
    own = model.backbone.model.state_dict()
    assert own and all(torch.equal(own[k], sd[k]) for k in own)  # every kept timm weight came from the file


@pytest.mark.parametrize("what", ["missing", "wrong"])
def test_missing_or_wrong_weights_are_one_error_line(what, tiny_data, tmp_path, capsys):
    from models import build_model

    tag = "convnext_atto"
    if what == "missing":
        path = tmp_path / "nowhere" / f"{tag}.safetensors"
    else:  # another family's file under the expected name
        path = tmp_path / f"{tag}.safetensors"
        _save_timm_weights(build_model(_cfg("swin", tiny_data, tmp_path / "s")).backbone, path)
    capsys.readouterr()
    status = main_mod.main(_train_argv("convnext", tiny_data, tmp_path / "run", "max_iter=1",
                                       f"backbone_weights={path}"))
    cap = capsys.readouterr()
    text = cap.out + cap.err
    lines = [ln for ln in text.splitlines() if "error:" in ln]
    assert status == 2 and len(lines) == 1 and "Traceback" not in text, text[-3000:]
    assert str(path) in lines[0] and tag in lines[0], lines[0]
