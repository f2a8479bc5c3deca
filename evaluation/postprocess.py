"""In-loop post-processing of raw network outputs (docs/method.md, metrics) and the crop of centred padding.

Each Task names its function (`Task.postprocess`, data/tasks.py); the table below lists the built-in ones.

These never modify their input (the original clamped depth logits in place, docs/method.md#no-in-place-changes) and always
return float32 (or int64 labels), whatever dtype the network produced under autocast.

| family       | input            | output                                            |
|--------------|------------------|---------------------------------------------------|
| segmentation | B×K×H×W logits   | B×H×W int64 class ids (argmax)                    |
| saliency     | B×2×H×W logits   | B×H×W float32, softmax probability of class 1 ×255 |
| boundary     | B×1×H×W logit    | B×H×W float32, sigmoid ×255                        |
| normals      | B×3×H×W          | B×3×H×W float32, (n̂ + 1)·255/2, n̂ L2-normalised (channel-first) |
| depth        | B×1×H×W          | B×1×H×W float32, clamped at min 0                  |

The original returned normals channel-last (B×H×W×3); channel-first here matches the GT layout.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "segmentation_labels", "saliency_scores", "edge_scores", "normals_scores", "depth_values",
    "crop_offsets", "crop_to_original", "edge_uint8",
]


def segmentation_labels(pred: torch.Tensor) -> torch.Tensor:
    return pred.argmax(dim=1)  # b h w


def saliency_scores(pred: torch.Tensor) -> torch.Tensor:
    return F.softmax(pred.float(), dim=1)[:, 1] * 255.0  # b h w


def edge_scores(pred: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(pred.float())[:, 0] * 255.0  # b h w


def normals_scores(pred: torch.Tensor) -> torch.Tensor:
    return (F.normalize(pred.float(), p=2, dim=1) + 1.0) * (255.0 / 2.0)  # b 3 h w


def depth_values(pred: torch.Tensor) -> torch.Tensor:
    return pred.float().clamp(min=0.0)  # b 1 h w (a new tensor: the input is left alone)


def crop_offsets(padded_hw: Sequence[int], img_size) -> tuple:
    """(top, left, H0, W0) of the original image inside the centred padding of the val transform."""
    h, w = int(padded_hw[0]), int(padded_hw[1])
    h0, w0 = (int(v) for v in (img_size.tolist() if isinstance(img_size, torch.Tensor) else img_size))
    if h0 > h or w0 > w:
        raise ValueError(f"original size {h0}x{w0} is larger than the padded prediction {h}x{w}; "
                         f"meta['img_size'] must hold the size before padding")
    return (h - h0) // 2, (w - w0) // 2, h0, w0


def crop_to_original(x: torch.Tensor, img_size) -> torch.Tensor:
    """Crop the last two dims of x (…×H×W at padded size) back to the original H0×W0."""
    top, left, h0, w0 = crop_offsets(x.shape[-2:], img_size)
    return x[..., top:top + h0, left:left + w0]


def edge_uint8(scores: torch.Tensor, img_size) -> torch.Tensor:
    """One image's sigmoid×255 map (H×W, padded) -> cropped H0×W0 uint8 CPU tensor, truncated as the
    original's PNG writer does (docs/method.md#edge-prediction-pngs)."""
    return crop_to_original(scores, img_size).clamp(0, 255).to(device="cpu", dtype=torch.uint8)
