"""losses/balancing: each method on hand-computed losses and gradients, the fixed method bit for bit, the
registry (a user method in a few lines, its options validated), and the gradient methods' aggregation."""
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from losses.balancing import build_balancer, register_balancer
from losses.balancing.base import LossScaling

TASKS = ["a", "b", "c"]


class FakeCriterion:
    """objectives() returns the given per-task losses (with graph), like MultiTaskCriterion's."""

    tasks = TASKS

    def __init__(self):
        self.values = None

    def objectives(self, outputs, targets, task_weights=True):
        per = OrderedDict((t, outputs["pred"][t]) for t in TASKS)
        terms = OrderedDict((f"loss/{t}", v.detach()) for t, v in per.items())
        terms["loss/total"] = sum(per.values()).detach()
        return per, None, terms

    def __call__(self, outputs, targets):
        total = sum(outputs["pred"][t] for t in TASKS)
        return total, {"loss/total": total.detach()}


def _losses(*vals):
    leaves = [torch.tensor(float(v), requires_grad=True) for v in vals]
    return leaves, {"pred": dict(zip(TASKS, leaves))}


def _make(name, **opts):
    return build_balancer({"loss_balancing": {"name": name, **opts}, "seed": 0}, FakeCriterion())


def _step(bal, k, vals):
    bal.begin_step(k)
    leaves, out = _losses(*vals)
    total, terms = bal(out, {})
    bal.backward(total, 1)
    logs = bal.finish(None)
    bal.end_step(k + 1)
    return total, [p.grad for p in leaves], logs


def test_fixed_is_the_criterion_itself():
    bal = _make("fixed")
    _, out = _losses(1.0, 2.0, 3.0)
    total, terms = bal(out, {})
    assert total.item() == 6.0 and bal.state_dict() == {} and bal.optimizer_params() == []


def test_uncertainty_hand_computed():
    bal = _make("uncertainty")
    with torch.no_grad():
        bal.log_vars.copy_(torch.tensor([0.0, math.log(2.0), -1.0]))
    total, grads, logs = _step(bal, 0, (1.0, 2.0, 3.0))
    expected = 1.0 + 0.0 + 0.5 * 2.0 + math.log(2.0) + math.e * 3.0 - 1.0
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert [g.item() for g in grads] == pytest.approx([1.0, 0.5, math.e], rel=1e-6)
    # d/ds (exp(-s) l + s) = 1 - exp(-s) l
    assert bal.log_vars.grad.tolist() == pytest.approx([0.0, 0.0, 1 - math.e * 3.0], rel=1e-6)
    assert logs["balance/weight/b"] == pytest.approx(0.5)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    bal.add_to_optimizer(opt)
    assert opt.param_groups[-1]["params"][0] is bal.log_vars and opt.param_groups[-1]["weight_decay"] == 0.0


def test_dwa_windows_hand_computed():
    bal = _make("dwa", window=2, temperature=2.0)
    seq = [(2.0, 2.0, 2.0), (2.0, 2.0, 2.0), (1.0, 2.0, 4.0), (1.0, 2.0, 4.0)]
    for k, vals in enumerate(seq):  # windows: mean (2,2,2) then (1,2,4)
        _, grads, _ = _step(bal, k, vals)
        assert [g.item() for g in grads] == [1.0, 1.0, 1.0]  # uniform until two windows are done
    rates = torch.tensor([0.5, 1.0, 2.0])
    w = 3 * torch.softmax(rates / 2.0, 0)
    _, grads, logs = _step(bal, 4, (1.0, 1.0, 1.0))
    assert [g.item() for g in grads] == pytest.approx(w.tolist(), rel=1e-6)
    assert logs["balance/weight/c"] == pytest.approx(float(w[2]), rel=1e-6)
    state = bal.state_dict()
    assert int(state["windows_done"]) == 2 and int(state["window_count"]) == 1


def test_log_balancing_divides_each_gradient_by_its_loss():
    bal = _make("log")
    total, grads, _ = _step(bal, 0, (0.5, 2.0, 4.0))
    assert total.item() == pytest.approx(math.log(0.5 * 2.0 * 4.0), rel=1e-6)
    assert [g.item() for g in grads] == pytest.approx([2.0, 0.5, 0.25], rel=1e-6)


def test_rlw_draws_depend_on_seed_and_iteration_only():
    a, b = _make("rlw"), _make("rlw")
    _, g1, _ = _step(a, 5, (1.0, 1.0, 1.0))
    _, g2, _ = _step(b, 5, (3.0, 2.0, 7.0))  # other losses, same iteration: same weights
    _, g3, _ = _step(a, 6, (1.0, 1.0, 1.0))
    w1, w3 = [g.item() for g in g1], [g.item() for g in g3]
    assert w1 == [g.item() for g in g2] and w1 != w3
    assert sum(w1) == pytest.approx(3.0, rel=1e-6) and min(w1) > 0


def test_famo_objective_and_logit_update():
    bal = _make("famo", famo_lr=0.1, famo_weight_decay=0.0)
    total, grads, _ = _step(bal, 0, (1.0, 2.0, 4.0))
    z = 1 / 3
    c = 1.0 / (z / 1.0 + z / 2.0 + z / 4.0)
    assert total.item() == pytest.approx(c * z * math.log(8.0), rel=1e-5)
    # gradient c·z/ℓ_t: a convex combination of the task gradients
    assert [g.item() for g in grads] == pytest.approx([c * z / 1.0, c * z / 2.0, c * z / 4.0], rel=1e-5)
    assert sum(g.item() for g in grads) == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(bal.logits.detach(), torch.zeros(3))  # the first step has nothing to compare with
    _step(bal, 1, (0.5, 2.0, 4.0))  # task a's loss halved, the others unchanged
    delta = torch.tensor([math.log(2.0), 0.0, 0.0])
    zt = torch.full((3,), z)
    g = zt * delta - zt * (zt * delta).sum()
    expected = -0.1 * g / (g.abs() + 1e-8)  # Adam's first step: lr·sign
    assert bal.logits.detach().tolist() == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-7)
    assert bal.logits[0] < 0  # the task that improved most loses weight


def test_a_user_method_registers_in_a_few_lines():
    from utils.config_schema import Spec

    class Squares(LossScaling):
        name = "squares_test"

        def weights(self, losses):
            return torch.full_like(losses, float(self.settings["power_test"]))

    register_balancer("squares_test", Squares,
                      {"power_test": Spec("float", 2.0, "squares_test: the weight", gt=0)})
    bal = _make("squares_test", power_test=3.0)
    _, grads, logs = _step(bal, 0, (1.0, 1.0, 1.0))
    assert [g.item() for g in grads] == [3.0, 3.0, 3.0] and logs["balance/weight/a"] == 3.0

    from engine.config import ConfigError, load_config
    from tests.engine.conftest import CONFIG

    cfg = load_config(CONFIG, opts=["loss_balancing.name=squares_test", "loss_balancing.power_test=4"])
    assert cfg.loss_balancing.power_test == 4.0
    with pytest.raises(ConfigError, match="power_test"):
        load_config(CONFIG, opts=["loss_balancing.name=squares_test", "loss_balancing.power_test=-1"])
    with pytest.raises(ConfigError, match="not read by method 'dwa'"):
        load_config(CONFIG, opts=["loss_balancing.name=dwa", "loss_balancing.power_test=4"])


class Toy(nn.Module):
    """backbone: 2 → 2 (identity-initialised); one linear head per task; losses are the head outputs."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2, bias=False)
        self.head = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.eye(2))

    def forward(self, x):
        y = self.head(self.backbone(x)).sum(0)
        return {"pred": {t: y[i] for i, t in enumerate(TASKS)}}


def _grad_step(name, head_rows):
    model = Toy()
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(head_rows))
    bal = _make(name)
    bal.attach(model)
    bal.train()
    model.train()
    bal.begin_step(0)
    total, _ = bal(model(torch.tensor([[1.0, 1.0]])), {})
    bal.backward(total, 1)
    logs = bal.finish(model)
    return model, logs


def test_gradient_method_without_conflict_is_the_sum():
    """UPGrad (preference: ones) on non-conflicting task gradients gives the fixed sum, on the backbone as on
    the heads; the cosines of the task gradients are logged."""
    rows = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    model, logs = _grad_step("upgrad", rows)
    ref = Toy()
    with torch.no_grad():
        ref.head.weight.copy_(torch.tensor(rows))
    sum(ref(torch.tensor([[1.0, 1.0]]))["pred"].values()).backward()
    assert torch.allclose(model.backbone.weight.grad, ref.backbone.weight.grad, atol=1e-5)
    assert torch.equal(model.head.weight.grad, ref.head.weight.grad)
    assert logs["balance/cos/a-b"] == pytest.approx(1.0) and logs["balance/cos/a-c"] == pytest.approx(0.0, abs=1e-7)
    assert not hasattr(model.backbone.weight, "jac")


def test_mgda_hand_computed_min_norm_point():
    """Two opposite-ish gradients g_a = (1, 0)-row, g_b = (0, 2)-row, g_c = g_a: MGDA's min-norm convex
    combination of {g_a, g_b} weights them 4/5 and 1/5 (|g_a|² = 1, |g_b|² = 4)."""
    model, logs = _grad_step("mgda", [[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    w = [logs[f"balance/weight/{t}"] for t in TASKS]
    assert w[0] + w[2] == pytest.approx(0.8, abs=1e-3) and w[1] == pytest.approx(0.2, abs=1e-3)
    # backbone gradient = Σ w_t J_t, J_t = ∂(head_t · W x)/∂W = head_t ⊗ x
    expected = torch.tensor([[0.8, 0.8], [0.4, 0.4]])
    assert torch.allclose(model.backbone.weight.grad, expected, atol=2e-3)
