"""The original's in-loop edge number (spec §7.1), kept for comparison with its logs. NOT a quality metric.

It is the balanced BCE of the training loss (positive weight edge_w) evaluated on the probabilities
p = score/255 *treated as logits*, i.e. σ(p) with p ∈ [0, 1], averaged per valid pixel over the split.
Because σ(p) only spans [0.5, 0.73] it barely reacts to the prediction; it is reported as `loss` (lower is
better) only so logs can be compared with the original's. The boundary quality metric is odsF
(evaluation/boundary.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from evaluation.base import SumMeter

__all__ = ["EdgeProxyMeter"]


class EdgeProxyMeter(SumMeter):
    """update(scores B×H×W in [0, 255], gt B×1×H×W in {0, 1, 255}); compute() -> {'loss'}."""

    def __init__(self, edge_w: float, ignore_index: int = 255):
        if not 0.0 < edge_w < 1.0:
            raise ValueError(f"edge_w must lie in (0, 1), got {edge_w}")
        self.edge_w = float(edge_w)
        self.ignore_index = ignore_index
        super().__init__()

    def _shapes(self):
        return {"n": (), "sum": ()}

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        x, y = self.valid_uint8_scores(pred, gt, self.ignore_index)
        y = y.double()
        w = self.edge_w
        pos_weight = torch.tensor(w / (1.0 - w), dtype=torch.float64, device=x.device)
        per_pixel = F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight, reduction="none") * (1.0 - w)
        self._add("n", x.numel())
        self._add("sum", per_pixel.sum())

    def compute(self) -> dict:
        n = float(self.sums["n"])
        return {"loss": float(self.sums["sum"]) / n if n > 0 else float("nan")}
