"""Sparsification, AUSE and rank correlation (evaluation/uncertainty.py) on constructed cases with known values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.tasks import task_info
from evaluation.uncertainty import FRACTIONS, UncertaintyMeter, spearman_from_joint, sparsification

SEMSEG = task_info("PASCALContext", "semseg")
DEPTH = task_info("NYUD", "depth")
EDGE = task_info("PASCALContext", "edge")


def _semseg_case(u_wrong: float, u_right: float, n=1000, wrong=100):
    """n pixels, `wrong` of them misclassified; uncertainty u_wrong on those, u_right on the others."""
    gt = torch.zeros(1, 1, 1, n)
    pred = torch.zeros(1, 21, 1, n)
    pred[0, 0] = 5.0
    pred[0, 0, 0, :wrong], pred[0, 3, 0, :wrong] = 0.0, 5.0  # class 3 where the GT is 0
    u = torch.full((1, 1, n), u_right)
    u[0, 0, :wrong] = u_wrong
    return pred, u, gt


def _oracle_area(p: float) -> float:
    """∫ (random - oracle) over the fraction grid for a 0/1 error of rate p: oracle (p - f)/(1 - f), then 0."""
    oracle = np.where(FRACTIONS < p, (p - FRACTIONS) / (1 - FRACTIONS), 0.0)
    return float(np.trapezoid(p - oracle, FRACTIONS))


def test_perfect_uncertainty_has_zero_ause_and_constant_has_the_random_value():
    m = UncertaintyMeter(SEMSEG, "entropy")
    m.update(*_semseg_case(2.0, 0.1))
    good = m.compute()
    assert good["unc_pixels"] == 1000
    assert good["unc_ause"] == pytest.approx(0.0, abs=1e-12)
    assert good["unc_ause_random"] == pytest.approx(_oracle_area(0.1), rel=1e-12)
    assert good["unc_spearman"] == pytest.approx(1.0)
    assert good["unc_curves"]["sparsification"][0] == pytest.approx(0.1)
    flat = UncertaintyMeter(SEMSEG, "entropy")
    flat.update(*_semseg_case(0.5, 0.5))
    res = flat.compute()
    assert res["unc_ause"] == pytest.approx(res["unc_ause_random"], rel=1e-9)
    assert res["unc_ause_ratio"] == pytest.approx(1.0)
    bad = UncertaintyMeter(SEMSEG, "entropy")
    bad.update(*_semseg_case(0.1, 2.0))  # confident exactly where it is wrong
    res = bad.compute()
    assert res["unc_ause"] > res["unc_ause_random"] and res["unc_spearman"] < 0


def test_depth_errors_ranked_by_std():
    errors = torch.tensor([0.5, 2.0, 8.0, 0.5])
    gt = torch.full((1, 1, 1, 4), 10.0)
    pred = (gt + errors.view(1, 1, 1, 4))
    m = UncertaintyMeter(DEPTH, "std")
    m.update(pred, (errors / 4).view(1, 1, 4), gt)
    res = m.compute()
    assert res["unc_ause"] == pytest.approx(0.0, abs=1e-4) and res["unc_spearman"] == pytest.approx(1.0)
    # by hand: removing 25% (the 8 m pixel) leaves (0.5 + 2 + 0.5) / 3
    assert res["unc_curves"]["sparsification"][25] == pytest.approx(1.0, abs=1e-4)
    assert res["unc_curves"]["random"][0] == pytest.approx(11.0 / 4, abs=1e-4)
    # invalid depth (0) is left out
    m2 = UncertaintyMeter(DEPTH, "std")
    m2.update(pred, (errors / 4).view(1, 1, 4), torch.tensor([10.0, 10.0, 10.0, 0.0]).view(1, 1, 1, 4))
    assert m2.compute()["unc_pixels"] == 3


def test_sparsification_removes_a_bin_in_proportion():
    # two bins: 2 pixels with total error 2 (low u), 2 pixels with total error 0 (high u)
    curve = sparsification([2, 2], [2.0, 0.0], fractions=[0.0, 0.25, 0.5])
    np.testing.assert_allclose(curve, [0.5, 2 / 3, 1.0])


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    u = rng.integers(0, 5, 400)
    e = np.clip(u + rng.integers(-2, 3, 400), 0, 5)
    joint = np.zeros((5, 6))
    np.add.at(joint, (u, e), 1)
    assert spearman_from_joint(joint) == pytest.approx(spearmanr(u, e).statistic, rel=1e-12)


def test_edge_error_at_the_ods_threshold():
    # probabilities 0.3 and 0.7 on GT edges / non-edges; at threshold 0.5 the 0.3-edge and 0.7-non-edge are wrong
    p = torch.tensor([0.3, 0.7, 0.3, 0.7])
    gt = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    u = torch.tensor([0.6, 0.1, 0.1, 0.6]).view(1, 1, 4)
    m = UncertaintyMeter(EDGE, "entropy")
    m.update(torch.logit(p).view(1, 1, 1, 4), u, gt)
    at_half = m.compute(0.5)
    assert at_half["unc_threshold"] == 0.5 and at_half["unc_ause"] == pytest.approx(0.0, abs=1e-12)
    assert at_half["unc_curves"]["random"][0] == pytest.approx(0.5)
    at_low = m.compute(0.2)  # everything is an edge: the two non-edges are wrong
    assert at_low["unc_curves"]["random"][0] == pytest.approx(0.5) and at_low["unc_spearman"] < 1


def test_shards_merge_exactly():
    """Two ranks' integer sums add up to one process's, bit for bit (what all_reduce_sum does under DDP)."""
    rng = torch.Generator().manual_seed(0)
    gt = torch.rand(4, 1, 8, 8, generator=rng) * 10 + 0.5
    pred = gt + torch.randn(4, 1, 8, 8, generator=rng)
    u = torch.rand(4, 8, 8, generator=rng)
    whole, a, b = (UncertaintyMeter(DEPTH, "std") for _ in range(3))
    whole.update(pred, u, gt)
    a.update(pred[:1], u[:1], gt[:1])
    b.update(pred[1:], u[1:], gt[1:])
    for k in a.sums:
        a.sums[k] += b.sums[k]
    assert a.compute() == whole.compute()
