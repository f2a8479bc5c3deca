"""The trainer's plug-ins (engine/train_plugins.py): the default is the paper's step bit for bit; the weight
EMA is evaluated next to the raw weights, checkpointed and used for prediction; every balancing method and
the EMA resume exactly (a run killed after its checkpoint and restarted equals the uninterrupted run)."""
import json

import pytest
import torch

from engine.trainer import Trainer
from tests.engine.conftest import BASE_OPTS, CONFIG, tiny_cfg


def _build(data, out, *opts, val=False):
    from data import build_dataset
    from losses import build_criterion
    from models import build_model

    cfg = tiny_cfg(data, out, *opts)
    torch.manual_seed(123)
    model = build_model(cfg)
    return cfg, model, build_criterion(cfg), build_dataset(cfg, "train"), (build_dataset(cfg, "val") if val else None)


def test_default_step_is_the_paper_recipe_bit_for_bit(tiny_data, tmp_path):
    """Two iterations of 2 micro-batches through the trainer equal a hand-written loop of the recipe
    (criterion sum, backward of loss/accum, clip at 10, Adam, poly schedule): same weights, bit for bit."""
    from engine.train_data import TrainStream
    from utils.optim import build_optimizer, build_scheduler
    from utils.seed import STEP_STREAM, mix_seed, rank_seed, seed_everything

    opts = ("max_iter=2", "val_interval=1000", "grad_accum_steps=2")
    cfg, model, crit, train, _ = _build(tiny_data, tmp_path / "t", *opts)
    t = Trainer(cfg, model, crit, train, None, torch.device("cpu"), tensorboard=False)
    t.train()
    t.close()
    ck = torch.load(tmp_path / "t" / "checkpoints" / "last.pth", weights_only=True)
    assert "ema" not in ck and "loss_balancing" not in ck  # default checkpoints are unchanged

    cfg, ref, crit, train, _ = _build(tiny_data, tmp_path / "r", *opts)
    seed_everything(rank_seed(cfg.seed, 0))
    opt = build_optimizer(cfg, ref)
    sched = build_scheduler(cfg, opt)
    stream = TrainStream(train, cfg.trBatch, cfg.seed, 0, 1, num_workers=0, start_micro=0)
    tasks = cfg.TASKS.NAMES
    for k in range(2):
        ref.train()
        opt.zero_grad(set_to_none=True)
        for m in range(2):
            seed_everything(mix_seed(cfg.seed, STEP_STREAM, 0, k, m))
            batch = next(stream)
            targets = {n: batch[n] for n in tasks}
            loss, _ = crit(ref(batch["image"], targets), targets)
            (loss / 2).backward()
        torch.nn.utils.clip_grad_norm_([p for p in ref.parameters() if p.grad is not None], 10.0)
        opt.step()
        sched.step()
    stream.close()
    for name, v in ref.state_dict().items():
        assert torch.equal(v, ck["model"][name]), name


def test_ema_is_evaluated_beside_the_raw_weights_and_used_for_prediction(tiny_data, tmp_path, monkeypatch):
    import infer
    import main as entry
    from engine.cli import load_trained_model

    out = tmp_path / "run"
    cfg, model, crit, train, val = _build(tiny_data, out, "max_iter=2", "val_interval=2", "ema.decay=0.5", val=True)
    t = Trainer(cfg, model, crit, train, val, torch.device("cpu"), tensorboard=True)
    final = t.train()
    t.close()
    assert final["weights"] == "ema" and set(final["by_weights"]) == {"ema", "raw"}
    assert final["by_weights"]["ema"]["results"] == final["results"]
    assert final["by_weights"]["raw"]["results"] != final["results"]  # two different sets of weights
    saved = json.loads((out / "metrics" / "metrics_iter000002.json").read_text())
    assert set(saved["by_weights"]) == {"ema", "raw"}
    last = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert last["ema"]["updates"] == 2 and (out / "checkpoints" / "best.pth").is_file()
    assert any(not torch.equal(last["ema"]["state"][k], v) for k, v in last["model"].items())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(out / "tb")).Reload().Tags()["scalars"]
    assert "val_ema/delta_m" in tags and "val/delta_m" in tags

    # infer.py / the SEISM tool load the EMA by default, the raw weights with --raw_weights
    ckpt = str(out / "checkpoints" / "last.pth")
    m = load_trained_model(cfg, ckpt, torch.device("cpu"))
    assert m.loaded_weights == "ema"
    assert all(torch.equal(v, last["ema"]["state"][k]) for k, v in m.state_dict().items())
    m = load_trained_model(cfg, ckpt, torch.device("cpu"), raw=True)
    assert m.loaded_weights == "raw" and all(torch.equal(v, last["model"][k]) for k, v in m.state_dict().items())
    args = infer.build_parser().parse_args(["--config_exp", CONFIG, "--trained_model", ckpt, "--input", "x",
                                            "--raw_weights"])
    assert args.raw_weights

    # --run_mode infer says which weights it evaluated
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for extra, which in (([], "ema"), (["--raw_weights"], "raw")):
        folder = tmp_path / f"infer_{which}"
        argv = ["--config_exp", CONFIG, "--run_mode", "infer", "--trained_model", ckpt, "--data_root", tiny_data,
                "--output_dir", str(folder), *extra, "--opts", *BASE_OPTS, "ema.decay=0.5"]
        assert entry.main(argv) == 0
        got = json.loads(next(folder.rglob("metrics_infer_iter000002.json")).read_text())
        assert got["weights"] == which
        assert got["results"] == final["by_weights"][which]["results"]


METHODS = {
    "ema": ["ema.decay=0.5", "ema.start_iter=1", "grad_accum_steps=2"],
    "uncertainty": ["loss_balancing.name=uncertainty"],
    "dwa": ["loss_balancing.name=dwa", "loss_balancing.window=1"],
    "log": ["loss_balancing.name=log"],
    "rlw": ["loss_balancing.name=rlw"],
    "famo": ["loss_balancing.name=famo"],
    "upgrad": ["loss_balancing.name=upgrad", "grad_accum_steps=2"],
    "nash_mtl": ["loss_balancing.name=nash_mtl"],
    "mgda_bf16": ["loss_balancing.name=mgda", "amp=true", "amp_cpu=true"],
}
N = 2


def _run(data, out, opts, stop_at=None):
    cfg, model, crit, train, _ = _build(data, out, f"max_iter={N}", "val_interval=1000", f"ckpt_interval={N // 2}",
                                        *opts)
    t = Trainer(cfg, model, crit, train, None, torch.device("cpu"), tensorboard=False)
    t.train(stop_at=stop_at)
    t.close()
    return t


@pytest.mark.parametrize("method", list(METHODS))
def test_resume_is_exact(method, tiny_data, tmp_path):
    opts = METHODS[method]
    full = _run(tiny_data, tmp_path / "full", opts)
    _run(tiny_data, tmp_path / "cut", opts, stop_at=N // 2)
    second = _run(tiny_data, tmp_path / "cut", opts)
    assert second.resumed_from is not None
    ref = dict(full.history)
    for k, terms in second.history:
        assert terms.keys() == ref[k].keys()
        for name, v in terms.items():
            assert v == ref[k][name], (method, k, name, v, ref[k][name])
    if method != "ema":  # each method logs its weights (or cosines)
        assert any(n.startswith("balance/") for n in full.history[-1][1]), full.history[-1][1].keys()
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pth", weights_only=True)
    for name, v in a["model"].items():
        assert torch.equal(v, b["model"][name]), name
    for key in ("ema", "loss_balancing"):
        assert (key in a) == (key in b)
        if key in a:
            flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
            assert flat_a.keys() == flat_b.keys()
            for n in flat_a:
                assert torch.equal(flat_a[n], flat_b[n]), (key, n)


def _tensors(d, prefix=""):
    out = {}
    for k, v in (d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, (list, tuple)) else ()):
        if torch.is_tensor(v):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, (dict, list, tuple)):
            out.update(_tensors(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = torch.tensor(float(v))
    return out


def test_resuming_with_another_method_is_refused(tiny_data, tmp_path):
    from utils.checkpoint import CheckpointError

    _run(tiny_data, tmp_path / "r", ["loss_balancing.name=uncertainty"], stop_at=N // 2)
    with pytest.raises(CheckpointError, match="loss_balancing.name uncertainty"):
        _run(tiny_data, tmp_path / "r", ["loss_balancing.name=dwa"])
