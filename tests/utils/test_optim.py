"""utils/optim.py: docs/method.md#training-recipe learning-rate values, warm-up, resume of the schedule, weight-decay groups."""
import math

import pytest
import torch
from easydict import EasyDict
from torch import nn

from utils.optim import PolyWarmup, build_optimizer, build_scheduler, no_decay_names, param_groups


def _cfg(**kw):
    base = dict(optimizer="adam", optimizer_kwargs={"lr": 2e-5, "weight_decay": 1e-6}, scheduler="poly",
                max_iter=40000, warmup_iters=0, no_weight_decay_norm_bias=False)
    base.update(kw)
    return EasyDict(base)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.ln = nn.LayerNorm(8)
        self.emb = nn.Embedding(5, 8)
        self.fc = nn.Linear(8, 2)


def _lr_at_iteration(n, **kw):
    """lr used by the n-th iteration (1-based), as in the examples of docs/method.md#optimiser-and-schedule."""
    fn = PolyWarmup(40000, 0.9, **kw)
    return 2e-5 * fn(n - 1)


def test_spec_lr_values():
    assert _lr_at_iteration(1) == pytest.approx(2e-5, rel=1e-12)
    assert _lr_at_iteration(8000) == pytest.approx(1.636e-5, abs=5e-9)  # 4 significant digits
    assert _lr_at_iteration(20000) == pytest.approx(1.072e-5, abs=5e-9)
    assert _lr_at_iteration(40000) == pytest.approx(1.4e-9, rel=0.1)


def test_scheduler_steps_match_formula_and_never_go_complex():
    cfg = _cfg(max_iter=10)
    model = Tiny()
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt)
    seen = []
    for _ in range(12):  # two steps past the end: the original would produce a complex number here
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for k, lr in enumerate(seen[:10]):
        assert lr == pytest.approx(2e-5 * (1 - k / 10) ** 0.9, rel=1e-12)
    assert all(isinstance(x, float) and x >= 0 for x in seen)
    assert seen[10] == 0.0 and seen[11] == 0.0


def test_warmup_then_poly():
    fn = PolyWarmup(100, 0.9, warmup_iters=10)
    assert fn(0) == pytest.approx(0.1 * 1.0)
    assert fn(4) == pytest.approx(0.5 * (1 - 4 / 100) ** 0.9)
    assert fn(9) == pytest.approx(1.0 * (1 - 9 / 100) ** 0.9)
    assert fn(10) == pytest.approx((1 - 10 / 100) ** 0.9)


def test_min_lr():
    cfg = _cfg(max_iter=4, scheduler_kwargs={"power": 1.0, "min_lr": 1e-6})
    opt = build_optimizer(cfg, Tiny())
    sched = build_scheduler(cfg, opt)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-5)
    assert lrs[2] == pytest.approx((2e-5 - 1e-6) * 0.5 + 1e-6)
    assert lrs[4] == pytest.approx(1e-6)


def test_scheduler_state_dict_resumes_exactly():
    cfg = _cfg(max_iter=50, warmup_iters=5)
    m1 = Tiny()
    o1 = build_optimizer(cfg, m1)
    s1 = build_scheduler(cfg, o1)
    for _ in range(17):
        o1.step()
        s1.step()
    o2 = build_optimizer(cfg, Tiny())
    s2 = build_scheduler(cfg, o2)
    o2.load_state_dict(o1.state_dict())
    s2.load_state_dict(s1.state_dict())
    for _ in range(10):
        assert o2.param_groups[0]["lr"] == o1.param_groups[0]["lr"]
        for o, s in ((o1, s1), (o2, s2)):
            o.step()
            s.step()


def test_adam_is_l2_and_single_group_by_default():
    opt = build_optimizer(_cfg(), Tiny())
    assert type(opt) is torch.optim.Adam
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-6
    assert opt.param_groups[0]["betas"] == (0.9, 0.999) and opt.param_groups[0]["eps"] == 1e-8
    assert type(build_optimizer(_cfg(optimizer="adamw"), Tiny())) is torch.optim.AdamW


def test_no_weight_decay_groups():
    model = Tiny()
    names = no_decay_names(model)
    assert {"pos_embed", "conv.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias", "emb.weight",
            "fc.bias"} == names
    groups = param_groups(model, 0.05, exclude_norm_bias=True)
    decay_ids = {id(p) for p in groups[0]["params"]}
    assert decay_ids == {id(model.conv.weight), id(model.fc.weight)}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    opt = build_optimizer(_cfg(no_weight_decay_norm_bias=True), model)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-6, 0.0]
    n_all = sum(1 for _ in model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_all


def test_bad_optimizer_name():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(_cfg(optimizer="lion"), Tiny())
    assert math.isfinite(PolyWarmup(3)(10))
