"""Per-task loss functions (docs/method.md, losses); each Task object names its own (data/tasks.py).

Every function takes the prediction `pred` (B×C×H×W logits or values, any float dtype) and the
ground truth `gt` (B×C'×H×W float32 as the data loader gives it, ignore values included) and returns
a scalar float32 tensor. Each one normalises by the number of valid pixels clamped to at least 1, so a
batch in which a task has no valid pixel at all (a PASCAL image without people, say) contributes an
exact zero with a zero, finite gradient instead of 0/0 = NaN.

All arithmetic runs in float32 even when the caller is inside an autocast region: the sums run over
hundreds of thousands of pixels and bf16 would lose the small per-pixel terms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "masked_cross_entropy", "balanced_saliency_ce", "balanced_edge_bce", "normalized_l1", "masked_l1",
]

IGNORE = 255


def _count(mask: torch.Tensor) -> torch.Tensor:
    """#True in `mask` as float32, at least 1 (max(#valid, 1), docs/method.md#per-task-losses)."""
    return mask.sum().to(torch.float32).clamp(min=1.0)


def masked_cross_entropy(pred: torch.Tensor, gt: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Semseg / human parts: per-pixel CE summed over labelled pixels / max(#labelled, 1).

    pred: B×K×H×W logits; gt: B×1×H×W class ids (float) with `ignore_index` for unlabelled pixels.
    """
    label = gt[:, 0].long()  # b h w
    per_pixel = F.cross_entropy(pred.float(), label, ignore_index=ignore_index, reduction="none")  # b h w
    return per_pixel.sum() / _count(label != ignore_index)


def balanced_saliency_ce(pred: torch.Tensor, gt: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Saliency: 2-class CE with batch-balanced class weights, divided by #valid (not by the weight sum).

    Over the valid pixels of the whole batch w_pos = #negatives / #valid; class 0 gets weight 1 - w_pos
    and class 1 gets w_pos, so the rarer class weighs more. pred: B×2×H×W logits; gt: B×1×H×W in {0, 1, 255}.
    """
    label = gt[:, 0]
    valid = label != ignore_index  # b h w
    n_valid = _count(valid)
    n_neg = ((label == 0) & valid).sum().to(torch.float32)
    w_pos = n_neg / n_valid
    target = torch.where(valid, label, torch.zeros_like(label)).long()
    logp = F.log_softmax(pred.float(), dim=1).gather(1, target[:, None])[:, 0]  # b h w
    weight = torch.where(target == 1, w_pos, 1.0 - w_pos) * valid
    return -(weight * logp).sum() / n_valid


def balanced_edge_bce(pred: torch.Tensor, gt: torch.Tensor, edge_w: float, ignore_index: int = IGNORE) -> torch.Tensor:
    """Edges: mean over valid pixels of -[w·y·log σ(x) + (1-w)(1-y)·log(1-σ(x))], w = edge_w.

    Written as BCE-with-logits with pos_weight w/(1-w), times (1-w), as the original does; this form
    uses the numerically stable log-sigmoid. pred: B×1×H×W logits; gt: B×1×H×W in {0, 1, 255}.
    """
    if not 0.0 < edge_w < 1.0:
        raise ValueError(f"edge_w must lie in (0, 1), got {edge_w}; set task_dictionary.edge_w "
                         f"(PASCAL 0.95, NYUD 0.90)")
    valid = gt != ignore_index
    target = torch.where(valid, gt, torch.zeros_like(gt)).float()
    pos_weight = torch.tensor(edge_w / (1.0 - edge_w), dtype=torch.float32, device=pred.device)
    per_pixel = F.binary_cross_entropy_with_logits(pred.float(), target, pos_weight=pos_weight, reduction="none")
    return (per_pixel * valid).sum() * (1.0 - edge_w) / _count(valid)


def normalized_l1(pred: torch.Tensor, gt: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Normals: L1 between the L2-normalised prediction and the GT, summed over valid pixels and the 3
    channels, divided by the number of valid *pixels*. A pixel is valid when no GT channel is 255.

    pred: B×3×H×W; gt: B×3×H×W unit vectors or 255.
    """
    valid = (gt != ignore_index).all(dim=1, keepdim=True)  # b 1 h w
    unit = F.normalize(pred.float(), p=2, dim=1, eps=1e-12)
    target = torch.where(valid, gt, torch.zeros_like(gt)).float()
    return ((unit - target).abs() * valid).sum() / _count(valid)


def masked_l1(pred: torch.Tensor, gt: torch.Tensor, ignore_invalid: bool = True,
              invalid_value: float = 0.0) -> torch.Tensor:
    """Depth: Σ|d̂ - d| over valid pixels / max(#valid, 1); valid = GT ≠ 0 when `ignore_invalid`
    (config `ignore_invalid_area_depth`), else every pixel. pred, gt: B×1×H×W metres."""
    gt = gt.float()
    valid = gt != invalid_value if ignore_invalid else torch.ones_like(gt, dtype=torch.bool)
    return ((pred.float() - gt).abs() * valid).sum() / _count(valid)
