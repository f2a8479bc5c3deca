"""Saliency: dataset-wide maxF (docs/method.md#metrics) and a 2-class mIoU at probability 0.5 (extra key).

maxF: p = score/255; for each threshold t of arange(0.05, 1, 0.05) (19 values) a pixel is predicted
salient iff p ≥ t; over all valid pixels (GT ≠ 255) of the split count TP_t, predicted positives PP_t
and actual positives AP; P = TP/PP, R = TP/AP, F_t = (1+β²)PR/(β²P + R), β² = 0.3, 0/0 → 0;
maxF = 100 · max_t F_t. Comparisons run in float64.
mIoU: salient iff p ≥ 0.5 (the same rule as the thresholds); mean of the background and salient IoUs ×100.
The original reports no saliency mIoU; it is here because older multi-task papers quote it.
"""
from __future__ import annotations

import numpy as np
import torch

from evaluation.base import SumMeter

__all__ = ["SaliencyMeter", "SAL_THRESHOLDS", "BETA2"]

SAL_THRESHOLDS = np.arange(0.05, 1.0, 0.05)  # 19 float64 values, as the original builds them
BETA2 = 0.3


class SaliencyMeter(SumMeter):
    """update(scores B×H×W in [0, 255], gt B×1×H×W in {0, 1, 255}); compute() -> {'maxF', 'mIoU'}."""

    def __init__(self, ignore_index: int = 255, thresholds=SAL_THRESHOLDS):
        self.ignore_index = ignore_index
        self.thresholds = torch.as_tensor(np.asarray(thresholds, dtype=np.float64))
        super().__init__()

    def _shapes(self):
        n = len(self.thresholds)
        # per threshold: true positives, predicted positives; then actual positives, #valid, and the
        # 0.5-threshold counts (TP, predicted positives) for the mIoU.
        return {"tp": (n,), "pp": (n,), "ap": (), "valid": (), "tp_half": (), "pp_half": ()}

    @classmethod
    def for_task(cls, task, ctx) -> "SaliencyMeter":
        return cls(ctx.ignore_index)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        p, labels = self.valid_uint8_scores(pred, gt, self.ignore_index)
        pos = labels == 1
        thr = self.thresholds.to(p.device)
        # k = number of thresholds t_j <= p, i.e. p >= t_j exactly for j < k.
        k = torch.searchsorted(thr, p, right=True)
        n = len(thr)
        # predicted positives at threshold j = #pixels with k > j (a reversed cumulative count).
        all_k = torch.bincount(k, minlength=n + 1).flip(0).cumsum(0).flip(0)[1:]
        pos_k = torch.bincount(k[pos], minlength=n + 1).flip(0).cumsum(0).flip(0)[1:]
        self._add("tp", pos_k)
        self._add("pp", all_k)
        self._add("ap", pos.sum())
        self._add("valid", p.numel())
        half = p >= 0.5
        self._add("tp_half", (half & pos).sum())
        self._add("pp_half", half.sum())

    def compute(self) -> dict:
        s = self.sums
        tp, pp, ap = s["tp"], s["pp"], s["ap"]
        prec = tp / pp
        rec = tp / ap
        f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
        f = torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
        n, tp5, pp5 = s["valid"], s["tp_half"], s["pp_half"]
        union_fg = pp5 + ap - tp5
        tn = n - pp5 - ap + tp5
        union_bg = n - tp5
        iou_fg = tp5 / union_fg if union_fg > 0 else torch.zeros((), dtype=torch.float64)
        iou_bg = tn / union_bg if union_bg > 0 else torch.zeros((), dtype=torch.float64)
        return {"maxF": float(100.0 * f.max()), "mIoU": float(50.0 * (iou_fg + iou_bg))}
