"""Semantic segmentation and human parts: one dataset-wide confusion matrix (docs/method.md#metrics).

IoU_c = TP / max(TP + FP + FN, 1e-8) over all pixels whose GT is not 255; a class absent from both GT
and prediction gets IoU 0 (as the original; it still counts in the mean). mIoU = 100 · mean_c IoU_c.
Pixel accuracy = 100 · Σ TP / #valid pixels (an extra key).
"""
from __future__ import annotations

from typing import Sequence

import torch

from evaluation.base import SumMeter

__all__ = ["SegmentationMeter"]


class SegmentationMeter(SumMeter):
    """update(labels B×H×W int, gt B×1×H×W float ids with 255 = ignore); compute() ->
    {'mIoU', 'pixel_acc', 'per_class': {class name: IoU×100}}."""

    def __init__(self, num_classes: int, class_names: Sequence[str] = (), ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        names = tuple(class_names)
        self.class_names = names if len(names) == num_classes else tuple(str(i) for i in range(num_classes))
        self.ignore_index = ignore_index
        super().__init__()

    def _shapes(self):
        return {"confusion": (self.num_classes, self.num_classes)}  # rows: GT class, columns: predicted class

    @classmethod
    def for_task(cls, task, ctx) -> "SegmentationMeter":
        """The meter of a discrete task (its classes and names) under `ctx` (evaluation.base.EvalContext)."""
        return cls(task.num_classes, task.class_names, ctx.ignore_index)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        k = self.num_classes
        gt = gt[:, 0] if gt.dim() == 4 else gt  # b 1 h w -> b h w
        if gt.shape != pred.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} do not match")
        valid = gt != self.ignore_index
        g = gt[valid].long()
        p = pred[valid].long()
        if g.numel() and (g.min() < 0 or g.max() >= k):
            raise ValueError(f"ground-truth labels must be 0..{k - 1} or {self.ignore_index}; found "
                             f"{int(g.min())}..{int(g.max())}")
        if p.numel() and (p.min() < 0 or p.max() >= k):
            raise ValueError(f"predicted labels must be 0..{k - 1}; found {int(p.min())}..{int(p.max())}")
        self._add("confusion", torch.bincount(g * k + p, minlength=k * k).reshape(k, k))

    def compute(self) -> dict:
        conf = self.sums["confusion"]
        tp = conf.diag()
        fp = conf.sum(0) - tp
        fn = conf.sum(1) - tp
        iou = tp / (tp + fp + fn).clamp(min=1e-8)
        total = conf.sum()
        return {
            "mIoU": float(100.0 * iou.mean()),
            "pixel_acc": float(100.0 * tp.sum() / total) if total > 0 else 0.0,
            "per_class": {n: float(100.0 * v) for n, v in zip(self.class_names, iou)},
        }
