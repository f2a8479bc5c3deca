"""A NaN/Inf loss never reaches the weights: 'abort' stops with the task and iteration named, 'skip' skips."""
import pytest
import torch
from torch import nn

from engine.trainer import NonFiniteLossError, Trainer
from tests.engine.conftest import tiny_cfg


class NaNAt(nn.Module):
    """The real criterion, but the edge loss is NaN at one (1-based) iteration."""

    def __init__(self, criterion, trainer_ref, bad_iteration):
        super().__init__()
        self.criterion, self.ref, self.bad = criterion, trainer_ref, bad_iteration

    def forward(self, outputs, targets):
        total, terms = self.criterion(outputs, targets)
        if self.ref[0].iteration + 1 == self.bad:
            terms["loss/edge"] = torch.tensor(float("nan"))
            total = total + torch.tensor(float("nan"))
        return total, terms


def _setup(data, out, policy):
    from data import build_dataset
    from losses import build_criterion
    from models import build_model

    cfg = tiny_cfg(data, out, "max_iter=3", "val_interval=1000", f"nonfinite_loss={policy}")
    ref = []
    t = Trainer(cfg, build_model(cfg), NaNAt(build_criterion(cfg), ref, 2), build_dataset(cfg, "train"), None,
                torch.device("cpu"), tensorboard=False)
    ref.append(t)
    return t


def _weights(t):
    return {k: v.clone() for k, v in t.model.state_dict().items()}


def test_abort_names_task_and_iteration_and_keeps_weights(tiny_data, tmp_path):
    t = _setup(tiny_data, tmp_path / "abort", "abort")
    t.train(stop_at=1)
    before = _weights(t)
    with pytest.raises(NonFiniteLossError) as e:
        t.train()
    msg = str(e.value)
    assert "iteration 2" in msg and "edge" in msg and "not corrupted" in msg
    after = _weights(t)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert t.iteration == 1
    t.close()


def test_skip_continues_without_touching_weights(tiny_data, tmp_path):
    t = _setup(tiny_data, tmp_path / "skip", "skip")
    t.train(stop_at=1)
    before = _weights(t)
    lr_before = t.optimizer.param_groups[0]["lr"]
    t.train(stop_at=2)  # the NaN step
    assert t.iteration == 2 and [k for k, _ in t.history] == [1]
    after = _weights(t)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert t.optimizer.param_groups[0]["lr"] < lr_before  # the schedule still advanced
    t.train()
    assert [k for k, _ in t.history] == [1, 3]
    assert all(torch.isfinite(v).all() for v in t.model.state_dict().values() if v.is_floating_point())
    t.close()
