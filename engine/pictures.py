"""Overview pictures: input | ground truth | prediction per task, captioned, for TensorBoard and infer.py.

Why a size cap: a 6000×4000 photo with five tasks would give a 36000-pixel-wide PNG that image viewers
refuse (PIL warns of a decompression bomb). The panels are shrunk (aspect kept) before composing, not the
finished grid, so the captions stay legible. The per-task PNGs are not affected: they keep the input size.
"""
from __future__ import annotations

import numpy as np

from utils import visualization as vis

__all__ = ["OVERVIEW_MAX_SIDE", "visual_grid", "overview_picture"]

# The longer side, in pixels, of an overview picture.
OVERVIEW_MAX_SIDE = 4096


def visual_grid(tasks: dict, image_rgb: np.ndarray, preds: dict, targets: dict | None = None) -> np.ndarray:
    """Two rows: [input | ground truth per task] and [input | prediction per task], captioned.

    tasks: {name: data.tasks.Task}; preds: {name: Task.to_numpy map}; targets: {name: (map, valid)}."""
    top = [vis.add_caption(image_rgb, "input")]
    bottom = [vis.add_caption(image_rgb, "input")]
    for name, task in tasks.items():
        if name not in preds:
            continue
        if targets is not None and name in targets:
            gt, valid = targets[name]
            top.append(vis.add_caption(task.picture(gt, valid), f"{name} GT"))
        bottom.append(vis.add_caption(task.picture(preds[name]), f"{name} pred"))
    rows = [top, bottom] if len(top) > 1 else [bottom]
    return vis.make_grid(rows)


def _nearest(arr: np.ndarray, size) -> np.ndarray:
    """H×W(×C) array of any dtype (labels, masks, depth) resampled to `size` by nearest neighbour."""
    h, w = arr.shape[:2]
    if (h, w) == tuple(size):
        return arr
    rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
    cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
    return arr[rows][:, cols]


def _panel_size(hw, rows: int, cols: int, max_side: int, caption: int = 14, pad: int = 2) -> tuple:
    """Panel (h, w), aspect kept, so that rows×cols captioned panels (make_grid layout) fit in max_side."""
    h, w = int(hw[0]), int(hw[1])
    s = min(1.0, (max_side - pad - rows * (caption + pad)) / (rows * h), (max_side - pad - cols * pad) / (cols * w))
    return (h, w) if s >= 1.0 else (max(1, int(h * s)), max(1, int(w * s)))


def overview_picture(tasks: dict, image_rgb: np.ndarray, maps: dict, gts: dict | None = None,
                     max_side: int = OVERVIEW_MAX_SIDE) -> np.ndarray:
    """visual_grid of input | (ground truth) | predictions, its longer side at most max_side pixels
    (below the cap it is visual_grid's picture unchanged)."""
    import cv2

    rows = 2 if gts else 1
    cols = 1 + sum(1 for t in tasks if t in maps)
    size = _panel_size(image_rgb.shape[:2], rows, cols, max_side)
    if size != tuple(image_rgb.shape[:2]):
        image_rgb = cv2.resize(image_rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        maps = {t: _nearest(np.asarray(v), size) for t, v in maps.items()}
        if gts:
            gts = {t: (_nearest(np.asarray(g), size), _nearest(np.asarray(v), size)) for t, (g, v) in gts.items()}
    grid = visual_grid(tasks, image_rgb, maps, gts)
    if max(grid.shape[:2]) > max_side:  # the layout changed under us: still honour the cap
        s = max_side / max(grid.shape[:2])
        grid = cv2.resize(grid, (max(1, int(grid.shape[1] * s)), max(1, int(grid.shape[0] * s))),
                          interpolation=cv2.INTER_AREA)
    return grid
