"""MLoRE expert load-balancing term (docs/method.md#load-balancing-loss).

Why: without it the routers collapse onto a few experts. The term is the squared coefficient of
variation of the mean gate value per expert: zero when every expert receives the same average weight.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

__all__ = ["cv_squared", "load_balancing_loss"]


def cv_squared(u: torch.Tensor) -> torch.Tensor:
    """(std(u) / mean(u))² with the unbiased std (N-1), of a 1-D vector u (one entry per expert)."""
    u = u.float().flatten()
    if u.numel() < 2:
        return u.new_zeros(())
    return u.var(unbiased=True) / u.mean().square()


def load_balancing_loss(route: Mapping[str, Sequence[Mapping[str, torch.Tensor]]]) -> torch.Tensor:
    """Sum of cv² over every routing list and level.

    route: {'route_1_prob': [per level {task: B×E×1×1×1}], 'route_2_prob': [...]} as the MLoRE model
    returns it (E = 15 experts; post-top-k, noise-perturbed gates). For each level the task tensors are
    concatenated along the batch (T·B×E×…) and averaged over it → u (E); the term is cv²(u).
    """
    terms = []
    for key in sorted(route):
        if "route" not in key:
            continue
        for level, per_task in enumerate(route[key]):
            if not per_task:
                continue
            gates = torch.cat([g.float().flatten(1) for g in per_task.values()], dim=0)  # (t b) e
            terms.append(cv_squared(gates.mean(dim=0)))
    if not terms:
        raise ValueError("outputs['route'] holds no routing probabilities (expected keys like 'route_1_prob' "
                         "with a list of {task: B×15×1×1×1} per level)")
    return torch.stack(terms).sum()
