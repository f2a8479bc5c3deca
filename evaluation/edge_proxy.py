"""The original's in-loop edge number (docs/method.md#metrics), kept for comparison with its logs. NOT a quality metric.

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

__all__ = ["EdgeProxyMeter", "EdgeMeter"]


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


class EdgeMeter:
    """The boundary task's meter: the proxy `loss` above plus, when the protocol asks for it, odsF/oisF/AP
    from evaluation/boundary.BoundaryMeter on the predictions cropped back to each image's original size.

    update(scores B×H×W sigmoid×255 at the padded size, gt B×1×H×W, meta {img_size, img_name}).
    """

    wants_meta = True  # the evaluator passes the batch's meta (sizes for the crop, names for the matcher)

    def __init__(self, edge_w: float, ignore_index: int = 255, boundary=None):
        self.proxy = EdgeProxyMeter(edge_w, ignore_index)
        self.boundary = boundary
        self._seen = 0

    @classmethod
    def for_task(cls, task, ctx) -> "EdgeMeter":
        from evaluation.boundary import BoundaryMeter

        if ctx.edge_w is None:
            raise ValueError(f"task {task.name!r}: the boundary meter needs edge_w (task_dictionary.edge_w)")
        boundary = BoundaryMeter(**ctx.boundary) if ctx.boundary is not None else None
        return cls(ctx.edge_w, ctx.ignore_index, boundary)

    def reset(self) -> None:
        self.proxy.reset()
        if self.boundary is not None:
            self.boundary.reset()
        self._seen = 0

    @torch.no_grad()
    def update(self, scores: torch.Tensor, gt: torch.Tensor, meta=None) -> None:
        self.proxy.update(scores, gt)
        if self.boundary is not None:
            self._update_boundary(scores, gt, meta or {})
        self._seen += scores.shape[0]

    def _update_boundary(self, scores: torch.Tensor, gt: torch.Tensor, meta) -> None:
        from evaluation.postprocess import crop_to_original, edge_uint8

        n = scores.shape[0]
        sizes = meta.get("img_size")
        if sizes is None:  # no meta: the prediction is taken as unpadded
            sizes = [scores.shape[-2:]] * n
        names = meta.get("img_name")
        if names is None:
            names = [f"{self._seen + i:06d}" for i in range(n)]
        preds, gts = [], []
        for i in range(n):
            preds.append(edge_uint8(scores[i], sizes[i]).numpy())
            gts.append(crop_to_original(gt[i, 0], sizes[i]).to(device="cpu", dtype=torch.uint8).numpy())
        self.boundary.update(preds, gts, [str(x) for x in names])

    def merge(self, other: "EdgeMeter") -> "EdgeMeter":
        self.proxy.merge(other.proxy)
        if self.boundary is not None:
            if other.boundary is None:
                raise ValueError("cannot merge an evaluator without boundary metrics into one with them")
            self.boundary.merge(other.boundary)
        self._seen += other._seen
        return self

    def synchronize(self) -> None:
        self.proxy.synchronize()
        if self.boundary is not None:
            self.boundary.synchronize()

    def compute(self) -> dict:
        out = self.proxy.compute()
        if self.boundary is not None:
            out.update(self.boundary.compute())
        return out
