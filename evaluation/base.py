"""Base class of the metric accumulators: a fixed set of float64 sums.

Why sums: every metric of docs/method.md#metrics is pooled over the whole split (IoU from one confusion matrix, maxF
from dataset-wide counts, mean angle = Σ error / #pixels, ...). Sums of counts and errors can be added
across batches (`update`), across accumulators (`merge`) and across ranks (`synchronize`, an all-reduce),
and the metric is computed once at the end, so N ranks evaluating one shard each give the result of one
process evaluating everything: bit-identical for count-based metrics (integers below 2^53 are exact in
float64), equal to float64 rounding for sums of real-valued errors (the addition order differs).

The sums live on the CPU; updates compute their per-batch contributions on the prediction's device and
add them in (one small device-to-host copy per batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from typing import Dict, Tuple

import torch

from utils.distributed import all_reduce_sum

__all__ = ["SumMeter", "EvalContext"]


@dataclass(frozen=True)
class EvalContext:
    """What a task's meter factory may need beyond the task object itself (`Task.meter(task, ctx)`):
    the dataset, the label ignore value, the config's edge/depth settings and the boundary protocol
    (keyword arguments of BoundaryMeter, or None to skip odsF)."""

    db_name: str
    ignore_index: int = 255
    edge_w: Optional[float] = None
    depth_min: float = 0.0
    depth_max: float = 80.0
    boundary: Optional[dict] = None


class SumMeter:
    """Accumulator whose whole state is `self.sums`: {name: float64 CPU tensor}.

    Subclasses declare `_shapes()` -> {name: shape}, add contributions with `_add(name, value)` in
    `update`, and read `self.sums` in `compute`.
    """

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self._synced = False
        self.reset()

    def _shapes(self) -> Dict[str, Tuple[int, ...]]:
        raise NotImplementedError

    def reset(self) -> None:
        self.sums = {k: torch.zeros(shape, dtype=torch.float64) for k, shape in self._shapes().items()}
        self._synced = False

    def _add(self, name: str, value) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().to(device="cpu", dtype=torch.float64)
        self.sums[name] += value

    @staticmethod
    def valid_uint8_scores(pred: torch.Tensor, gt: torch.Tensor, ignore_index) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scores in [0, 1] as float64, labels) of the pixels whose label is not `ignore_index`.

        For the meters fed 0-255 maps (saliency, edge): pred B×H×W, gt B×H×W or B×1×H×W.
        """
        gt = gt[:, 0] if gt.dim() == 4 else gt
        if gt.shape != pred.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} do not match")
        valid = gt != ignore_index
        return pred[valid].double() / 255.0, gt[valid]

    def merge(self, other: "SumMeter") -> "SumMeter":
        """Add another accumulator of the same kind and configuration into this one (returns self)."""
        if type(other) is not type(self) or other.sums.keys() != self.sums.keys():
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for k, v in other.sums.items():
            if v.shape != self.sums[k].shape:
                raise ValueError(f"cannot merge {type(self).__name__}: sum '{k}' has shape {tuple(v.shape)} "
                                 f"vs {tuple(self.sums[k].shape)} (different configuration)")
            self.sums[k] += v
        return self

    def synchronize(self) -> None:
        """All-reduce (sum) every sum across ranks; call once on every rank before `compute`."""
        if self._synced:
            raise RuntimeError(f"{type(self).__name__}.synchronize() called twice without reset(): the sums "
                               f"would be counted world_size times")
        for v in self.sums.values():
            all_reduce_sum(v)
        self._synced = True

    def compute(self) -> dict:
        raise NotImplementedError
