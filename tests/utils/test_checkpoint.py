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
