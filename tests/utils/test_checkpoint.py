"""utils/checkpoint.py: atomic files, last/best/periodic layout, full state, prefixes, clear errors."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from utils import checkpoint as ck
from utils.seed import get_rng_state, set_rng_state


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.heads = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))


def _state(model, it=5):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / 10)
    model.heads(model.backbone(torch.randn(3, 4))).sum().backward()
    opt.step()
    sched.step()
    return ck.build_state(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), it, rng=get_rng_state(),
                          config={"a": {"b": [1, 2]}}, best={"iteration": it, "delta_m": 1.5}), opt, sched


def test_layout_and_round_trip(tmp_path):
    model = Net()
    state, opt, sched = _state(model, it=6)
    paths = ck.save_checkpoint(state, str(tmp_path), is_best=True, periodic=True)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["best.pth", "iter_000006.pth", "last.pth"]
    assert ck.last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoints" / "last.pth")
    assert not [f for f in os.listdir(tmp_path / "checkpoints") if f.endswith(".tmp")]
    loaded = ck.load_checkpoint(paths[0])
    assert loaded["iteration"] == 6 and loaded["best"]["delta_m"] == 1.5 and loaded["config"] == {"a": {"b": [1, 2]}}
    assert all(not k.startswith("module.") for k in loaded["model"])
    fresh = Net()
    ck.load_model_weights(fresh, paths[0])
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert loaded["scheduler"]["last_epoch"] == 1


def test_ddp_prefix_and_wrappers_are_stripped(tmp_path):
    model = Net()
    sd = {"module." + k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "official.pth.tar"
    torch.save({"model": sd, "epoch": 3}, path)
    fresh = Net()
    ck.load_model_weights(fresh, str(path))
    assert torch.equal(fresh.backbone.weight, model.backbone.weight)

    class Wrapper(nn.Module):  # stands in for DDP: `.module` holds the model
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert ck.unwrap_model(Wrapper(model)) is model
    state = ck.build_state(Wrapper(model))
    assert set(state["model"]) == set(model.state_dict())


def test_mismatch_is_reported(tmp_path):
    model = Net()
    sd = model.state_dict()
    sd.pop("backbone.bias")
    sd["heads.0.weight"] = torch.zeros(3, 4)
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_model_weights(Net(), str(path))
    msg = str(e.value)
    assert "backbone.bias" in msg and "extra.weight" in msg and "heads.0.weight" in msg
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_checkpoint(str(tmp_path / "nope.pth"))
    (tmp_path / "trunc.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="cannot read"):
        ck.load_checkpoint(str(tmp_path / "trunc.pth"))


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "checkpoints" / "last.pth"
    ck.atomic_torch_save({"iteration": 1}, str(path))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("interrupted while writing")

    with pytest.raises(RuntimeError):
        ck.atomic_torch_save({"iteration": 2, "x": Boom()}, str(path))
    assert ck.load_checkpoint(str(path))["iteration"] == 1
    assert os.listdir(path.parent) == ["last.pth"]


def test_rng_state_round_trip():
    state = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b


def test_rng_state_is_plain_and_old_snapshots_still_restore(tmp_path):
    np.random.seed(7)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pth")
    loaded = torch.load(tmp_path / "rng.pth", weights_only=True)
    expected = np.random.randn(), np.random.rand()
    set_rng_state(loaded)
    assert (np.random.randn(), np.random.rand()) == expected
    old = {"numpy": np.random.get_state()}  # the format of checkpoints written before: numpy's own tuple
    expected = np.random.rand(3)
    set_rng_state(old)
    assert np.array_equal(np.random.rand(3), expected)
    listed = {"numpy": ["MT19937", old["numpy"][1].tolist(), *old["numpy"][2:]]}  # e.g. via JSON/YAML
    set_rng_state(listed)
    assert np.array_equal(np.random.rand(3), expected)


# ------------------------------------------------------------------ loading runs no code from the file
class _Planted:
    """Unpickling this object creates `marker`: stands in for any code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(tmp_path, plain_pickle=False):
    import pickle

    marker, path = tmp_path / "marker_created", tmp_path / "planted.pth"
    obj = {"model": {"w": torch.zeros(2)}, "payload": _Planted(marker)}
    if plain_pickle:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, path)
    return path, marker


@pytest.mark.parametrize("plain_pickle", [False, True], ids=["torch_save", "plain_pickle"])
def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path, plain_pickle):
    path, marker = _plant(tmp_path, plain_pickle)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_checkpoint(str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "--trust_checkpoint" in msg
    assert "Python objects beyond tensors" in msg and "execute code" in msg and "open" in msg
    with pytest.raises(ck.CheckpointError):
        ck.load_model_weights(Net(), str(path))
    assert not marker.exists()


def test_infer_refuses_a_planted_checkpoint_without_running_it(tmp_path):
    """End to end through the CLI: the safe default holds whether or not infer.py passes --trust_checkpoint."""
    import subprocess
    import sys

    from PIL import Image

    from tests.engine.conftest import CONFIG, ROOT, env_for_subprocess

    path, marker = _plant(tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    proc = subprocess.run([sys.executable, "infer.py", "--config_exp", CONFIG, "--trained_model", str(path),
                           "--input", str(tmp_path / "img.png"), "--output", str(tmp_path / "out"), "--device", "cpu"],
                          cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert not marker.exists()
    assert "Traceback" not in proc.stderr and "--trust_checkpoint" in proc.stderr, proc.stderr


def test_trusted_loads_an_original_style_full_pickle(tmp_path):
    import argparse

    from easydict import EasyDict

    model = Net()
    path = tmp_path / "orig.pth.tar"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()},
                "args": argparse.Namespace(lr=0.1), "p": EasyDict({"epochs": 3})}, path)
    with pytest.raises(ck.CheckpointError, match="argparse.Namespace"):
        ck.load_checkpoint(str(path))
    loaded = ck.load_checkpoint(str(path), trusted=True)
    assert loaded["args"].lr == 0.1 and loaded["p"].epochs == 3
    fresh = Net()
    ck.load_model_weights(fresh, str(path), trusted=True)
    assert torch.equal(fresh.backbone.weight, model.backbone.weight)


def test_unreadable_files_keep_a_clear_one_line_error(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(3)}, good)
    data = good.read_bytes()
    cases = {"trunc.pth": data[: len(data) // 2], "junk.pth": b"not a checkpoint", "empty.pth": b""}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        for trusted in (False, True):
            with pytest.raises(ck.CheckpointError, match="cannot read") as e:
                ck.load_checkpoint(str(tmp_path / name), trusted=trusted)
            assert "\n" not in str(e.value) and name in str(e.value)


def test_our_checkpoint_is_weights_only_even_with_numpy_values(tmp_path):
    model = Net()
    state, _, _ = _state(model)
    state = ck.build_state(model, rng={"0": get_rng_state()}, config={"x": np.float32(0.5), "t": (1, 2)},
                           best={"iteration": np.int64(3), "delta_m": np.float64(1.25),
                                 "headline": {"semseg": np.float32(40.0)}, "hist": np.arange(3)},
                           extra={"note": np.str_("n")})
    path = ck.save_checkpoint(state, str(tmp_path))[0]
    loaded = torch.load(path, weights_only=True)
    assert type(loaded["best"]["iteration"]) is int and loaded["best"]["delta_m"] == 1.25
    assert type(loaded["best"]["headline"]["semseg"]) is float and torch.equal(loaded["best"]["hist"], torch.arange(3))
    assert loaded["config"] == {"x": 0.5, "t": [1, 2]} and loaded["note"] == "n"
    assert isinstance(loaded["rng"]["0"]["numpy"]["key"], torch.Tensor)


def test_a_trainer_checkpoint_loads_weights_only_and_resumes(tmp_path):
    import subprocess
    import sys

    from tests.engine.conftest import ROOT, tiny_cfg

    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "data.synthetic", "--dataset", "pascal", "--out", str(data),
                    "--train", "4", "--val", "2", "--seed", "0", "--size", "48", "48"],
                   cwd=ROOT, check=True, capture_output=True)
    from data import build_dataset
    from engine.trainer import Trainer
    from losses import build_criterion
    from models import build_model

    def trainer(max_iter):
        cfg = tiny_cfg(str(data), tmp_path / "run", f"max_iter={max_iter}", "val_interval=1", "ckpt_interval=1")
        torch.manual_seed(0)
        return Trainer(cfg, build_model(cfg), build_criterion(cfg), build_dataset(cfg, "train"),
                       build_dataset(cfg, "val"), torch.device("cpu"), tensorboard=False)

    t = trainer(1)
    t.train()
    t.close()
    folder = tmp_path / "run" / "checkpoints"
    for name in ("last.pth", "best.pth", "iter_000001.pth"):
        loaded = torch.load(folder / name, weights_only=True)
        assert loaded["iteration"] == 1 and set(loaded["rng"]["0"]) >= {"python", "numpy", "torch"}
        assert loaded["optimizer"]["state"] and loaded["config"]["max_iter"] == 1
        assert name == "iter_000001.pth" or loaded["best"]["headline"]  # metrics of the evaluation
    resumed = trainer(2)  # resuming goes through load_checkpoint (weights only) and set_rng_state
    assert resumed.resumed_from == str(folder / "last.pth") and resumed.iteration == 1
    resumed.close()


# ------------------------------------------------------------------ stale temporaries and pruning
def test_remove_stale_temporaries_only_touches_atomic_write_leftovers(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    keep = ["last.pth", "best.pth", "iter_000004.pth", "notes.txt", ".hidden.pth", ".last.pth.tmp.pth",
            ".last.pth.abcdefgh.tmp.json"]
    stale = [".last.pth.ab3_x9zq.tmp.pth", ".iter_000008.pth.k2l3m4n5.tmp.pth", ".best.pth.00000000.tmp.pth"]
    for name in keep + stale:
        (folder / name).write_bytes(b"x")
    removed = ck.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted(stale)
    assert sorted(os.listdir(folder)) == sorted(keep)
    assert ck.remove_stale_temporaries(str(tmp_path)) == []
    assert ck.remove_stale_temporaries(str(tmp_path / "no_run_here")) == []


def test_a_real_atomic_write_temporary_is_recognised(tmp_path):
    """The pattern matches what atomic_write really creates (its name seen while the write is running)."""
    seen = []

    def write(tmp):
        seen.append(os.path.basename(tmp))
        raise KeyboardInterrupt  # stands in for a SIGKILL: the name is what a kill would leave behind

    from utils.io import atomic_write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "checkpoints" / "last.pth"), write)
    (tmp_path / "checkpoints" / seen[0]).write_bytes(b"partial")
    assert [os.path.basename(p) for p in ck.remove_stale_temporaries(str(tmp_path))] == seen


def test_keep_prunes_old_periodic_copies_only(tmp_path):
    model = Net()
    written = []
    for it in (2, 4, 6, 8, 10):
        state = ck.build_state(model, iteration=it)
        written.append(ck.save_checkpoint(state, str(tmp_path), is_best=it == 2, periodic=True, keep=2))
    assert [os.path.basename(p) for p in written[-1]] == ["last.pth", "iter_000010.pth"]
    folder = tmp_path / "checkpoints"
    assert sorted(os.listdir(folder)) == ["best.pth", "iter_000008.pth", "iter_000010.pth", "last.pth"]
    assert ck.load_checkpoint(str(folder / "best.pth"))["iteration"] == 2
    # numeric order, not text order: iteration 1000000 is newer than 999999
    ck.save_checkpoint(ck.build_state(model, iteration=999999), str(tmp_path), periodic=True)
    ck.save_checkpoint(ck.build_state(model, iteration=1000000), str(tmp_path), periodic=True, keep=1)
    assert sorted(os.listdir(folder)) == ["best.pth", "iter_1000000.pth", "last.pth"]
    # no periodic copy written: nothing pruned; keep=None keeps everything
    ck.save_checkpoint(ck.build_state(model, iteration=3), str(tmp_path), periodic=True)
    ck.save_checkpoint(ck.build_state(model, iteration=5), str(tmp_path), keep=1)
    assert "iter_000003.pth" in os.listdir(folder)
    with pytest.raises(ValueError, match="keep"):
        ck.save_checkpoint(ck.build_state(model, iteration=7), str(tmp_path), periodic=True, keep=0)
