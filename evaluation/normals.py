"""Surface normals: angular error pooled over the split (docs/method.md#metrics) plus the usual extra statistics.

The prediction arrives post-processed ((n̂+1)·255/2, float); it is mapped back (2v/255 - 1) and both it
and the GT are re-normalised (zero vectors stay zero). Error = 2·atan2(‖p - g‖, ‖p + g‖) in degrees
(accurate also near 0° and 180°). Valid pixel = no GT channel equals 255.

Reported: `mean` (the paper metric, Σ error / #valid), `rmse`, `median`, and the percentages of valid
pixels with error < 11.25°, 22.5°, 30° (keys '11.25', '22.5', '30'). With no valid pixel at all every
value is NaN (undefined; 0 would read as a perfect score).

Why a histogram for the median: a median is not a sum, so it cannot be all-reduced exactly from
per-rank medians. The meter keeps a histogram of errors with 0.01° bins over [0°, 180°] (18 000 bins,
float64 counts, 144 KB): it is a sum, so sharded and single-process runs agree exactly, and the median
read from it (centre of the bin holding the lower median) is within 0.005° of the exact value. Mean,
RMSE and the percentages come from exact sums/counts, not from the histogram.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from evaluation.base import SumMeter

__all__ = ["NormalsMeter", "HIST_BIN_DEG", "ANGLE_THRESHOLDS"]

HIST_BIN_DEG = 0.01
_NUM_BINS = int(round(180.0 / HIST_BIN_DEG))
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


def angular_error_deg(pred_unit: torch.Tensor, gt_unit: torch.Tensor) -> torch.Tensor:
    """Angle between vectors along dim 1 in degrees: 2·atan2(|p - g|, |p + g|)."""
    diff = (pred_unit - gt_unit).norm(dim=1)
    summ = (pred_unit + gt_unit).norm(dim=1)
    return torch.rad2deg(2.0 * torch.atan2(diff, summ))


class NormalsMeter(SumMeter):
    """update(scores B×3×H×W in [0, 255], gt B×3×H×W unit vectors or 255); compute() ->
    {'mean', 'rmse', 'median', '11.25', '22.5', '30'} (degrees; the last three in %)."""

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index
        super().__init__()

    def _shapes(self):
        return {"n": (), "sum": (), "sum_sq": (), "below": (len(ANGLE_THRESHOLDS),), "hist": (_NUM_BINS,)}

    @classmethod
    def for_task(cls, task, ctx) -> "NormalsMeter":
        return cls(ctx.ignore_index)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"normals prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} must both "
                             f"be B×3×H×W")
        valid = (gt != self.ignore_index).all(dim=1)  # b h w
        p = F.normalize(pred.float() * (2.0 / 255.0) - 1.0, p=2, dim=1)
        g = F.normalize(torch.where(valid[:, None], gt.float(), torch.zeros_like(gt, dtype=torch.float32)), p=2, dim=1)
        err = angular_error_deg(p, g)[valid].double()  # (n_valid,)
        self._add("n", valid.sum())
        self._add("sum", err.sum())
        self._add("sum_sq", err.square().sum())
        self._add("below", torch.stack([(err < t).sum() for t in ANGLE_THRESHOLDS]))
        bins = (err / HIST_BIN_DEG).floor().long().clamp(0, _NUM_BINS - 1)
        self._add("hist", torch.bincount(bins, minlength=_NUM_BINS))

    def median_from_hist(self) -> float:
        hist, n = self.sums["hist"], float(self.sums["n"])
        if n == 0:
            return 0.0
        # lower median: the ceil(n/2)-th smallest error
        idx = int(torch.searchsorted(hist.cumsum(0), torch.tensor(math.ceil(n / 2), dtype=torch.float64)))
        return (idx + 0.5) * HIST_BIN_DEG

    def compute(self) -> dict:
        n = float(self.sums["n"])
        if n == 0:  # no valid pixel: undefined, and 0 would read as a perfect score
            return {k: float("nan") for k in ("mean", "rmse", "median", *(f"{t:g}" for t in ANGLE_THRESHOLDS))}
        denom = n
        out = {
            "mean": float(self.sums["sum"]) / denom,
            "rmse": math.sqrt(float(self.sums["sum_sq"]) / denom),
            "median": self.median_from_hist(),
        }
        for t, c in zip(ANGLE_THRESHOLDS, self.sums["below"]):
            out[f"{t:g}"] = 100.0 * float(c) / denom
        return out
