"""Sample ensembles: N draws of the diffusion decoder -> one prediction per task and its per-pixel uncertainty.

What each task does is declared on its Task object (data/tasks.py: `aggregation_for`, `uncertainty_maps`),
by its sample rule; this module holds the maths (docs/method.md#sample-ensembles).

draws: N×B×K×H×W raw outputs of one task (logits for discrete and sigmoid tasks, values for depth,
unnormalised vectors for normals), N ≥ 1 members. Aggregations return a B×K×H×W raw output in the same
space the task's post-processing reads, so meters, writers and pictures work on an ensemble unchanged:

| rule            | tasks (sample rule)        | result                                                        |
|-----------------|----------------------------|---------------------------------------------------------------|
| mean_prob       | argmax, threshold          | log p̄, p̄ = mean over N of softmax (argmax of the mean)       |
| vote            | argmax, threshold          | log of the vote share of each class (ties: the higher p̄)      |
| mean_prob       | sigmoid                    | logit(p̄), p̄ = mean over N of sigmoid                          |
| mean / median   | clamp, identity (depth)    | mean / median over N (median of an even N: mean of the middle two) |
| mean_direction  | l2 (normals)               | mean of the unit vectors, re-normalised                        |

Uncertainty maps (B×H×W float32), from the same draws in one pass:

| map          | tasks          | definition                                                            | unit    |
|--------------|----------------|-----------------------------------------------------------------------|---------|
| entropy      | discrete       | H(p̄) = -Σ_k p̄_k ln p̄_k (predictive entropy)                          | nats    |
| mutual_info  | discrete       | H(p̄) - mean_n H(p_n) (epistemic part, ≥ 0)                            | nats    |
| entropy      | sigmoid        | Bernoulli entropy of p̄                                                | nats    |
| std          | clamp/identity | population standard deviation over N (mean over channels)            | value (m for depth) |
| angular_dev  | l2             | mean over N of the angle between each unit vector and the mean direction | degrees |

With N = 1 every map is 0 (a single draw has no spread).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from data.tasks import resolve

__all__ = ["AGGREGATIONS", "aggregate", "uncertainty", "mean_prob", "vote", "mean_sigmoid", "mean_values",
           "median_values", "mean_direction", "categorical_uncertainty", "bernoulli_entropy", "value_std",
           "angular_deviation"]

_EPS = 1e-12


def _probs(draws: torch.Tensor) -> torch.Tensor:
    return torch.softmax(draws.float(), dim=2)  # n b k h w


def _threshold(task) -> float | None:
    return float(task.sample_rule[1]) if task.sample_rule[0] == "threshold" else None


def mean_prob(draws: torch.Tensor) -> torch.Tensor:
    """Discrete: log of the mean softmax probabilities (softmax of it gives p̄ back; argmax of the mean)."""
    return _probs(draws).mean(dim=0).clamp_min(_EPS).log()


def vote(draws: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Discrete: log of each class's share of the N members' labels (argmax, or class 1 iff P > threshold
    for a threshold task); ties go to the class with the higher mean probability."""
    p = _probs(draws)
    n, k = p.shape[0], p.shape[2]
    if threshold is None:
        labels = p.argmax(dim=2)  # n b h w
    else:
        labels = (p[:, :, 1] > threshold).long()
    share = F.one_hot(labels, k).permute(0, 1, 4, 2, 3).float().mean(dim=0)  # b k h w
    return (share + 1e-6 * p.mean(dim=0) / n).clamp_min(_EPS).log()


def mean_sigmoid(draws: torch.Tensor) -> torch.Tensor:
    """Sigmoid tasks (edges): logit of the mean probability."""
    p = torch.sigmoid(draws.float()).mean(dim=0).clamp(1e-7, 1 - 1e-7)
    return p.log() - (-p).log1p()


def mean_values(draws: torch.Tensor) -> torch.Tensor:
    return draws.float().mean(dim=0)


def median_values(draws: torch.Tensor) -> torch.Tensor:
    """Median over N; for an even N the mean of the two middle values (torch.median would take the lower)."""
    v = draws.float().sort(dim=0).values
    n = v.shape[0]
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def mean_direction(draws: torch.Tensor) -> torch.Tensor:
    """Normals: the mean of the members' unit vectors (channel dim 2), re-normalised."""
    return F.normalize(F.normalize(draws.float(), dim=2, eps=_EPS).mean(dim=0), dim=1, eps=_EPS)


AGGREGATIONS = {
    ("argmax", "mean_prob"): lambda d, task: mean_prob(d),
    ("threshold", "mean_prob"): lambda d, task: mean_prob(d),
    ("argmax", "vote"): lambda d, task: vote(d),
    ("threshold", "vote"): lambda d, task: vote(d, _threshold(task)),
    ("sigmoid", "mean_prob"): lambda d, task: mean_sigmoid(d),
    ("clamp", "mean"): lambda d, task: mean_values(d),
    ("identity", "mean"): lambda d, task: mean_values(d),
    ("clamp", "median"): lambda d, task: median_values(d),
    ("identity", "median"): lambda d, task: median_values(d),
    ("l2", "mean_direction"): lambda d, task: mean_direction(d),
}


def aggregate(task, draws: torch.Tensor, override=None) -> torch.Tensor:
    """One B×K×H×W raw prediction of `task` from its N draws, by the task's aggregation (data/tasks.py
    Task.aggregation_for; override: the config's eval_aggregation entry)."""
    rule = task.aggregation_for(override)
    if isinstance(rule, str) and ":" not in rule:
        return AGGREGATIONS[(task.sample_rule[0], rule)](draws, task)
    return resolve(rule)(draws)


# ------------------------------------------------------------------------------------------ uncertainty


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * p.clamp_min(_EPS).log()).sum(dim=dim)


def categorical_uncertainty(draws: torch.Tensor) -> dict:
    """Discrete: predictive entropy H(p̄) and mutual information H(p̄) - mean_n H(p_n), B×H×W, nats."""
    p = _probs(draws)
    total = _entropy(p.mean(dim=0), dim=1)
    aleatoric = _entropy(p, dim=2).mean(dim=0)
    return {"entropy": total, "mutual_info": (total - aleatoric).clamp_min(0.0)}


def bernoulli_entropy(draws: torch.Tensor) -> dict:
    """Sigmoid tasks: the entropy of Bernoulli(p̄), p̄ the mean sigmoid, B×H×W, nats."""
    p = torch.sigmoid(draws.float()[:, :, 0]).mean(dim=0)
    q = torch.stack([p, 1 - p], dim=1)
    return {"entropy": _entropy(q, dim=1)}


def value_std(draws: torch.Tensor) -> dict:
    """Regression: the population standard deviation over N (mean over channels), B×H×W, the task's unit."""
    return {"std": draws.float().std(dim=0, unbiased=False).mean(dim=1)}


def angular_deviation(draws: torch.Tensor) -> dict:
    """Normals: mean over N of the angle (degrees) between each member's unit vector and the mean direction."""
    u = F.normalize(draws.float(), dim=2, eps=_EPS)
    m = F.normalize(u.mean(dim=0), dim=1, eps=_EPS)
    mm = m.unsqueeze(0)
    # 2·atan2(|u - m|, |u + m|): exact for small angles, where acos of a float32 dot product is not
    ang = 2.0 * torch.atan2((u - mm).norm(dim=2), (u + mm).norm(dim=2))
    return {"angular_dev": torch.rad2deg(ang).mean(dim=0)}


UNCERTAINTY = {"argmax": categorical_uncertainty, "threshold": categorical_uncertainty, "sigmoid": bernoulli_entropy,
               "clamp": value_std, "identity": value_std, "l2": angular_deviation}


def uncertainty(task, draws: torch.Tensor) -> dict:
    """{map name: B×H×W float32} of `task`'s declared uncertainty maps (Task.uncertainty_maps) from its draws."""
    fn = resolve(task.uncertainty_fn) if task.uncertainty_fn is not None else UNCERTAINTY.get(task.sample_rule[0])
    if fn is None:
        raise ValueError(f"task {task.name}: no uncertainty maps for sample rule {task.sample_rule!r}; declare "
                         f"Task(uncertainty=((name, unit), ...), uncertainty_fn=fn) (fn(draws) -> {{name: B×H×W}})")
    maps = fn(draws)
    names = [n for n, _ in task.uncertainty_maps]
    missing = [n for n in names if n not in maps]
    if missing:
        raise ValueError(f"task {task.name}: uncertainty function gave {sorted(maps)}, the task declares {names}")
    return {n: maps[n].float() for n in names}
