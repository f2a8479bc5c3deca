"""Each per-task loss against a direct (loop / formula) computation, incl. the all-ignore case (docs/method.md#losses)."""
import math

import pytest
import torch

from losses import (balanced_edge_bce, balanced_saliency_ce, cv_squared, load_balancing_loss, masked_cross_entropy,
                    masked_l1, normalized_l1)


def _gen(seed=0):
    g = torch.Generator().manual_seed(seed)
    return g


def _assert_zero_finite(loss_fn, pred, gt, **kw):
    pred = pred.clone().requires_grad_(True)
    loss = loss_fn(pred, gt, **kw)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().max().item() == 0.0


def test_masked_ce_matches_direct_sum_over_valid():
    g = _gen(0)
    pred = torch.randn(2, 4, 3, 5, generator=g)
    gt = torch.randint(0, 4, (2, 1, 3, 5), generator=g).float()
    gt[0, 0, 0, :3] = 255
    gt[1, 0, 2, 4] = 255
    total, n = 0.0, 0
    for b in range(2):
        for y in range(3):
            for x in range(5):
                lab = int(gt[b, 0, y, x])
                if lab == 255:
                    continue
                total += -torch.log_softmax(pred[b, :, y, x], 0)[lab].item()
                n += 1
    assert n == 26
    assert masked_cross_entropy(pred, gt).item() == pytest.approx(total / n, rel=1e-6)


def test_masked_ce_all_ignore_is_zero_with_zero_grad():
    _assert_zero_finite(masked_cross_entropy, torch.randn(2, 3, 4, 4), torch.full((2, 1, 4, 4), 255.0))


def test_saliency_balanced_ce_weights_and_normaliser():
    g = _gen(1)
    pred = torch.randn(2, 2, 4, 4, generator=g)
    gt = torch.randint(0, 2, (2, 1, 4, 4), generator=g).float()
    gt[0, 0, 0] = 255  # 4 ignored pixels
    valid = gt != 255
    n_valid = valid.sum().item()
    n_neg = ((gt == 0) & valid).sum().item()
    w_pos = n_neg / n_valid
    total = 0.0
    for b in range(2):
        for y in range(4):
            for x in range(4):
                lab = int(gt[b, 0, y, x])
                if lab == 255:
                    continue
                w = w_pos if lab == 1 else 1 - w_pos
                total += -w * torch.log_softmax(pred[b, :, y, x], 0)[lab].item()
    assert balanced_saliency_ce(pred, gt).item() == pytest.approx(total / n_valid, rel=1e-6)


def test_saliency_all_ignore_zero():
    _assert_zero_finite(balanced_saliency_ce, torch.randn(1, 2, 3, 3), torch.full((1, 1, 3, 3), 255.0))


@pytest.mark.parametrize("w", [0.95, 0.9])
def test_edge_bce_formula(w):
    g = _gen(2)
    x = torch.randn(2, 1, 5, 5, generator=g) * 3
    y = (torch.rand(2, 1, 5, 5, generator=g) < 0.3).float()
    y[1, 0, :2] = 255
    valid = y != 255
    s = torch.sigmoid(x.double())
    per = -(w * y * torch.log(s) + (1 - w) * (1 - y) * torch.log(1 - s))
    expected = per[valid].mean().item()
    assert balanced_edge_bce(x, y, edge_w=w).item() == pytest.approx(expected, rel=1e-5)


def test_edge_all_ignore_zero_and_bad_weight():
    _assert_zero_finite(balanced_edge_bce, torch.randn(1, 1, 3, 3), torch.full((1, 1, 3, 3), 255.0), edge_w=0.95)
    with pytest.raises(ValueError, match="edge_w"):
        balanced_edge_bce(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), edge_w=1.0)


def test_normals_l1_divides_by_valid_pixels_not_channels():
    pred = torch.zeros(1, 3, 1, 3)
    pred[0, :, 0, 0] = torch.tensor([2.0, 0.0, 0.0])  # normalises to (1, 0, 0)
    pred[0, :, 0, 1] = torch.tensor([0.0, 3.0, 4.0])  # -> (0, .6, .8)
    pred[0, :, 0, 2] = torch.tensor([1.0, 1.0, 1.0])
    gt = torch.zeros(1, 3, 1, 3)
    gt[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0])  # |1| + |−1| + 0 = 2
    gt[0, :, 0, 1] = torch.tensor([0.0, 0.0, 1.0])  # 0 + .6 + .2 = .8
    gt[0, :, 0, 2] = 255.0  # ignored
    assert normalized_l1(pred, gt).item() == pytest.approx((2.0 + 0.8) / 2, rel=1e-6)


def test_normals_all_ignore_zero():
    _assert_zero_finite(normalized_l1, torch.randn(1, 3, 2, 2), torch.full((1, 3, 2, 2), 255.0))


def test_depth_masked_l1():
    pred = torch.tensor([1.0, 2.0, 5.0, 7.0]).reshape(1, 1, 2, 2)
    gt = torch.tensor([2.0, 0.0, 4.0, 7.5]).reshape(1, 1, 2, 2)
    assert masked_l1(pred, gt, ignore_invalid=True).item() == pytest.approx((1 + 1 + 0.5) / 3)
    assert masked_l1(pred, gt, ignore_invalid=False).item() == pytest.approx((1 + 2 + 1 + 0.5) / 4)
    _assert_zero_finite(masked_l1, torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_cv_squared_unbiased_and_load_balancing_sum():
    u = torch.tensor([1.0, 2.0, 3.0, 6.0])
    mean, var = 3.0, ((4 + 1 + 0 + 9) / 3)  # unbiased
    assert cv_squared(u).item() == pytest.approx(var / mean ** 2)
    # one level, two tasks, B = 1: u = mean over the 2 rows
    a = torch.tensor([0.5, 0.5, 0.0]).reshape(1, 3, 1, 1, 1)
    b = torch.tensor([0.0, 0.5, 0.5]).reshape(1, 3, 1, 1, 1)
    route = {"route_1_prob": [{"semseg": a, "sal": b}], "route_2_prob": [{"semseg": a, "sal": a}]}
    u1 = torch.tensor([0.25, 0.5, 0.25])
    u2 = torch.tensor([0.5, 0.5, 0.0])
    expected = (u1.var() / u1.mean() ** 2 + u2.var() / u2.mean() ** 2).item()
    assert load_balancing_loss(route).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        load_balancing_loss({"route_1_prob": []})


def test_losses_are_float32_from_bf16_inputs():
    g = _gen(3)
    pred = torch.randn(1, 5, 4, 4, generator=g).bfloat16()
    gt = torch.randint(0, 5, (1, 1, 4, 4), generator=g).float()
    loss = masked_cross_entropy(pred, gt)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(masked_cross_entropy(pred.float(), gt).item(), rel=1e-6)
    assert math.isfinite(loss.item())
