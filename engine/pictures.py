"""Overview pictures: input | ground truth | prediction (| uncertainty) per task, captioned, with class legends
and colour bars, for TensorBoard and infer.py.

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


def _annotated(task, value, valid=None, depth_range=None) -> np.ndarray:
    """A task map's picture with what is needed to read it: the legend of the classes present (label maps,
    names from the task's class_names) or the colour bar of the depth range (metres)."""
    if task.sample_rule[0] == "argmax":
        pic = task.picture(value, valid)
        lab = np.asarray(value) if valid is None else np.where(np.asarray(valid), np.asarray(value), 255)
        legend = vis.class_legend(lab, task.class_names, pic.shape[1])
        return pic if legend is None else _stack(pic, legend)
    if task.sample_rule[0] == "clamp" and depth_range is not None:
        pic = task.picture(value, valid, depth_range=depth_range)
        return vis.with_colorbar(pic, depth_range[0], depth_range[1], "m", cmap="turbo")
    return task.picture(value, valid)


def _stack(pic: np.ndarray, below: np.ndarray) -> np.ndarray:
    """`below` under `pic`, the narrower of the two padded with white to the other's width."""
    w = max(pic.shape[1], below.shape[1])
    pad = lambda a: a if a.shape[1] == w else np.concatenate(  # noqa: E731
        [a, np.full((a.shape[0], w - a.shape[1], 3), 255, np.uint8)], axis=1)
    return np.concatenate([pad(pic), pad(below)], axis=0)


def _depth_range(value) -> tuple:
    """(lo, hi) of a depth map's valid (> 0, finite) values, the colour scale of its GT and prediction panels."""
    v = np.asarray(value, dtype=np.float32)
    v = v[np.isfinite(v) & (v > 0)]
    return (float(v.min()), float(v.max())) if v.size and v.max() > v.min() else (0.0, max(float(v.max()) if v.size else 1.0, 1e-3))


def visual_grid(tasks: dict, image_rgb: np.ndarray, preds: dict, targets: dict | None = None,
                uncertainty: dict | None = None) -> np.ndarray:
    """Rows: [input | ground truth per task], [input | prediction per task] and, for an ensemble,
    [blank | uncertainty per task (its first map, with a colour bar)], captioned. Label maps carry a legend
    of the classes present, depth maps a colour bar in metres (GT and prediction on the prediction's scale).

    tasks: {name: data.tasks.Task}; preds: {name: Task.to_numpy map}; targets: {name: (map, valid)};
    uncertainty: {name: {map name: H×W}} (engine.predict.PredictedBatch.uncertainty_maps)."""
    top = [vis.add_caption(image_rgb, "input")]
    bottom = [vis.add_caption(image_rgb, "input")]
    third = [vis.add_caption(np.full_like(image_rgb, 255), "uncertainty")]
    for name, task in tasks.items():
        if name not in preds:
            continue
        rng = _depth_range(preds[name]) if task.sample_rule[0] == "clamp" else None
        if targets is not None and name in targets:
            gt, valid = targets[name]
            top.append(vis.add_caption(_annotated(task, gt, valid, rng), f"{name} GT"))
        bottom.append(vis.add_caption(_annotated(task, preds[name], None, rng), f"{name} pred"))
        maps = (uncertainty or {}).get(name)
        if maps:
            key = next(iter(maps))
            third.append(vis.add_caption(task.uncertainty_picture(key, maps[key]), f"{name} {key}"))
    rows = [top] if len(top) > 1 else []
    rows.append(bottom)
    if len(third) > 1:
        rows.append(third)
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
                     max_side: int = OVERVIEW_MAX_SIDE, uncertainty: dict | None = None) -> np.ndarray:
    """visual_grid of input | (ground truth) | predictions (| uncertainty), its longer side at most max_side
    pixels (below the cap it is visual_grid's picture unchanged)."""
    import cv2

    rows = (2 if gts else 1) + (1 if uncertainty else 0)
    cols = 1 + sum(1 for t in tasks if t in maps)
    size = _panel_size(image_rgb.shape[:2], rows, cols, max_side)
    if size != tuple(image_rgb.shape[:2]):
        image_rgb = cv2.resize(image_rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        maps = {t: _nearest(np.asarray(v), size) for t, v in maps.items()}
        if gts:
            gts = {t: (_nearest(np.asarray(g), size), _nearest(np.asarray(v), size)) for t, (g, v) in gts.items()}
        if uncertainty:
            uncertainty = {t: {k: _nearest(np.asarray(u), size) for k, u in m.items()} for t, m in uncertainty.items()}
    grid = visual_grid(tasks, image_rgb, maps, gts, uncertainty)
    if max(grid.shape[:2]) > max_side:  # the layout changed under us: still honour the cap
        s = max_side / max(grid.shape[:2])
        grid = cv2.resize(grid, (max(1, int(grid.shape[1] * s)), max(1, int(grid.shape[0] * s))),
                          interpolation=cv2.INTER_AREA)
    return grid
