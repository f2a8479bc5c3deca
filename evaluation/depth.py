"""Depth: errors pooled over all valid pixels of the split (docs/method.md#metrics).

Valid = depth_min < GT < depth_max (NYUD: 0 < GT < 80 m). Non-positive predictions (and GT, though those
are invalid anyway) are replaced by 1e-9 before the logs, on copies: the inputs are never modified.
With N valid pixels:
    rmse     = sqrt(Σ (g - p)² / N)        (the paper metric, metres)
    log_rmse = sqrt(Σ (ln g - ln p)² / N)
    abs_rel  = Σ |g - p| / g / N
    sq_rel   = Σ (g - p)² / g / N
    delta_k  = 100 · #{max(g/p, p/g) < 1.25^k} / N,  k = 1, 2, 3  (extra keys, percent)
With no valid pixel every value is NaN.
"""
from __future__ import annotations

import math

import torch

from data.tasks import DEPTH_MAX, DEPTH_MIN
from evaluation.base import SumMeter

__all__ = ["DepthMeter"]

_TINY = 1e-9


class DepthMeter(SumMeter):
    """update(pred B×1×H×W metres (already clamped at 0), gt B×1×H×W metres, 0 = invalid);
    compute() -> {'rmse', 'log_rmse', 'abs_rel', 'sq_rel', 'delta1', 'delta2', 'delta3'}."""

    def __init__(self, depth_min: float = DEPTH_MIN, depth_max: float = DEPTH_MAX):
        self.depth_min, self.depth_max = float(depth_min), float(depth_max)
        super().__init__()

    def _shapes(self):
        return {"n": (), "sq": (), "log_sq": (), "abs_rel": (), "sq_rel": (), "delta": (3,)}

    @classmethod
    def for_task(cls, task, ctx) -> "DepthMeter":
        return cls(ctx.depth_min, ctx.depth_max)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"depth prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} do not match")
        valid = (gt > self.depth_min) & (gt < self.depth_max)
        p = pred[valid].double()
        g = gt[valid].double()
        p = torch.where(p > 0, p, torch.full_like(p, _TINY))
        g = torch.where(g > 0, g, torch.full_like(g, _TINY))
        diff = g - p
        ratio = torch.maximum(g / p, p / g)
        self._add("n", valid.sum())
        self._add("sq", diff.square().sum())
        self._add("log_sq", (g.log() - p.log()).square().sum())
        self._add("abs_rel", (diff.abs() / g).sum())
        self._add("sq_rel", (diff.square() / g).sum())
        self._add("delta", torch.stack([(ratio < 1.25 ** k).sum() for k in (1, 2, 3)]))

    def compute(self) -> dict:
        s = self.sums
        n = float(s["n"])
        keys = ("rmse", "log_rmse", "abs_rel", "sq_rel", "delta1", "delta2", "delta3")
        if n == 0:
            return {k: float("nan") for k in keys}
        return {
            "rmse": math.sqrt(float(s["sq"]) / n),
            "log_rmse": math.sqrt(float(s["log_sq"]) / n),
            "abs_rel": float(s["abs_rel"]) / n,
            "sq_rel": float(s["sq_rel"]) / n,
            **{f"delta{k}": 100.0 * float(s["delta"][k - 1]) / n for k in (1, 2, 3)},
        }
