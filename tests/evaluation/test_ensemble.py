"""Ensemble aggregation and uncertainty on hand-computed draws (evaluation/ensemble.py, Task declarations)."""
from __future__ import annotations

import math

import pytest
import torch

from data.tasks import Task, task_info
from evaluation import ensemble

SEMSEG = task_info("PASCALContext", "semseg")
SAL = task_info("PASCALContext", "sal")
EDGE = task_info("PASCALContext", "edge")
DEPTH = task_info("NYUD", "depth")
NORMALS = task_info("NYUD", "normals")


def _draws_from_probs(probs):
    """N×K probabilities of one pixel -> N×1×K×1×1 logits (log p)."""
    return torch.tensor(probs, dtype=torch.float64).log().view(len(probs), 1, -1, 1, 1)


def test_defaults_are_declared_by_the_sample_rule():
    assert SEMSEG.aggregation_for() == "mean_prob" and SEMSEG.aggregation_rules == ("mean_prob", "vote")
    assert SAL.aggregation_for() == "mean_prob" and EDGE.aggregation_for() == "mean_prob"
    assert DEPTH.aggregation_rules == ("mean", "median") and NORMALS.aggregation_for() == "mean_direction"
    assert [n for n, _ in SEMSEG.uncertainty_maps] == ["entropy", "mutual_info"]
    assert [n for n, _ in EDGE.uncertainty_maps] == ["entropy"]
    assert DEPTH.uncertainty_maps[0][0] == "std" and NORMALS.uncertainty_maps == (("angular_dev", "degrees"),)
    assert DEPTH.aggregation_for("median") == "median"
    with pytest.raises(ValueError, match="unknown ensemble aggregation 'vote'.*mean, median"):
        DEPTH.aggregation_for("vote")


def test_mean_prob_and_vote_on_three_draws():
    # 3 draws over 3 classes: two say class 0 weakly, one says class 2 strongly
    d = _draws_from_probs([[0.5, 0.2, 0.3], [0.5, 0.2, 0.3], [0.05, 0.05, 0.9]])
    mean = ensemble.aggregate(SEMSEG, d)
    pbar = torch.tensor([1.05 / 3, 0.45 / 3, 1.5 / 3])
    torch.testing.assert_close(torch.softmax(mean, 1).flatten(), pbar, rtol=1e-5, atol=1e-6)
    assert mean.argmax(1).item() == 2  # mean of probabilities: class 2
    voted = ensemble.aggregate(SEMSEG, d, "vote")
    assert voted.argmax(1).item() == 0  # majority: class 0 (2 of 3 votes)
    torch.testing.assert_close(torch.softmax(voted, 1).flatten()[0], torch.tensor(2 / 3), rtol=1e-4, atol=1e-5)


def test_categorical_entropy_and_mutual_information():
    d = _draws_from_probs([[0.9, 0.1], [0.1, 0.9]])
    u = ensemble.uncertainty(SAL, d)
    h = lambda p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert u["entropy"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert u["mutual_info"].item() == pytest.approx(math.log(2) - h([0.9, 0.1]), abs=1e-6)
    same = ensemble.uncertainty(SAL, _draws_from_probs([[0.7, 0.3]] * 4))
    assert same["entropy"].item() == pytest.approx(h([0.7, 0.3]), abs=1e-6)
    assert same["mutual_info"].item() == pytest.approx(0.0, abs=1e-6)  # agreeing draws: no epistemic part


def test_saliency_vote_uses_the_threshold_rule():
    # P(salient) 0.8, 0.9, 0.95 with the 0.85 threshold: votes 0, 1, 1 -> share 2/3 salient
    d = _draws_from_probs([[0.2, 0.8], [0.1, 0.9], [0.05, 0.95]])
    p = torch.softmax(ensemble.aggregate(SAL, d, "vote"), 1).flatten()
    assert p[1].item() == pytest.approx(2 / 3, abs=1e-4)


def test_edge_mean_probability_and_bernoulli_entropy():
    p = torch.tensor([0.2, 0.6])
    d = torch.logit(p).view(2, 1, 1, 1, 1)
    agg = ensemble.aggregate(EDGE, d)
    assert torch.sigmoid(agg).item() == pytest.approx(0.4, abs=1e-6)
    u = ensemble.uncertainty(EDGE, d)["entropy"].item()
    assert u == pytest.approx(-(0.4 * math.log(0.4) + 0.6 * math.log(0.6)), abs=1e-6)


def test_depth_mean_median_and_std():
    d = torch.tensor([1.0, 2.0, 4.0, 9.0]).view(4, 1, 1, 1, 1)
    assert ensemble.aggregate(DEPTH, d).item() == 4.0
    assert ensemble.aggregate(DEPTH, d, "median").item() == 3.0  # mean of the two middle values
    assert ensemble.aggregate(DEPTH, d[:3], "median").item() == 2.0
    assert ensemble.uncertainty(DEPTH, d)["std"].item() == pytest.approx(math.sqrt((9 + 4 + 0 + 25) / 4))


def test_normals_mean_direction_and_angular_deviation():
    a = math.radians(30)
    d = torch.tensor([[math.sin(a), 0, math.cos(a)], [-math.sin(a), 0, math.cos(a)]]).mul(
        torch.tensor([[2.0], [0.5]])).view(2, 1, 3, 1, 1)  # lengths do not matter
    m = ensemble.aggregate(NORMALS, d).flatten()
    torch.testing.assert_close(m, torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    assert ensemble.uncertainty(NORMALS, d)["angular_dev"].item() == pytest.approx(30.0, abs=1e-4)


def test_a_user_defined_task_gets_defaults_from_its_kind_or_declares_its_own():
    fg = Task("foreground", "discrete", 2, 2, 255, ("background", "foreground"), sample_rule=("argmax",))
    assert fg.aggregation_for() == "mean_prob" and fg.uncertainty_maps[0][0] == "entropy"
    odd = Task("odd", "continuous", -1, 1, 255, sample_rule=("cube",))
    with pytest.raises(ValueError, match="no default ensemble aggregation"):
        odd.aggregation_for()
    own = Task("odd", "continuous", -1, 1, 255, sample_rule=("cube",), aggregation=lambda d: d.amax(0),
               uncertainty=(("range", "units"),), uncertainty_fn=lambda d: {"range": (d.amax(0) - d.amin(0))[:, 0]})
    d = torch.tensor([1.0, 5.0, 2.0]).view(3, 1, 1, 1, 1)
    assert ensemble.aggregate(own, d).item() == 5.0
    assert ensemble.uncertainty(own, d)["range"].item() == 4.0


def test_config_overrides_the_aggregation_and_rejects_an_unknown_rule():
    from pathlib import Path

    from engine.config import load_config
    from utils.config import ConfigError

    path = Path(__file__).resolve().parents[2] / "configs/demo/synthetic_nyud.yml"
    cfg = load_config(str(path), opts=["eval_aggregation.depth=median", "eval_samples=4"])
    from engine.evaluator import ensemble_options

    opts = ensemble_options(cfg)
    assert opts == {"samples": 4, "samples_chunk": None, "aggregation": {"depth": "median"}}
    with pytest.raises(ConfigError, match="eval_aggregation.depth.*unknown aggregation 'vote'.*mean, median"):
        load_config(str(path), opts=["eval_aggregation.depth=vote"])
