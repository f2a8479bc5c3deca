"""Turning images, labels and predictions into pictures: colour maps, grids and PNG writers.

Every picture is an RGB uint8 H×W×3 numpy array. What a task looks like is decided by its entry in the
task table (`TaskInfo.sample_rule`, the same rule that turns a prediction back into a label), not by its
name:
    ('argmax',)       class labels, coloured with the VOC bit-interleaved palette (ignore 255 -> its
                      palette colour, the VOC "void" cream)
    ('threshold', p)  two-class probability map (saliency): P(class 1) as grey
    ('sigmoid',)      single-channel probability (edges): sigmoid as grey
    ('clamp', lo, hi) metric depth: colormap (TURBO by default, JET optional) over the valid range
    ('l2',)           unit vectors (normals): (n + 1) / 2 as RGB
PNG writers are atomic (temporary file + rename) so an interrupted run never leaves half a picture.
"""
from __future__ import annotations

import numpy as np

from utils.io import atomic_write

__all__ = ["voc_palette", "colorize_labels", "depth_to_color", "normals_to_rgb", "gray_to_rgb",
           "denormalize_image", "prediction_to_numpy", "target_to_numpy", "task_picture", "make_grid",
           "add_caption", "save_png", "save_label_png", "save_depth_png16"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard PASCAL VOC palette: class c's colour bits come from c's bits, interleaved (n×3 uint8)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for c in range(n):
        r = g = b = 0
        cid = c
        for j in range(8):
            r |= ((cid >> 0) & 1) << (7 - j)
            g |= ((cid >> 1) & 1) << (7 - j)
            b |= ((cid >> 2) & 1) << (7 - j)
            cid >>= 3
        pal[c] = (r, g, b)
    return pal


_PALETTE = voc_palette(256)


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """H×W integer labels (0..255; 255 = ignore) -> H×W×3 RGB with the VOC palette."""
    lab = np.asarray(labels)
    if lab.ndim == 3 and lab.shape[0] == 1:
        lab = lab[0]
    lab = np.clip(np.rint(lab), 0, 255).astype(np.uint8)
    return _PALETTE[lab]


def depth_to_color(depth: np.ndarray, valid: np.ndarray | None = None, vmin: float | None = None,
                   vmax: float | None = None, cmap: str = "turbo") -> np.ndarray:
    """H×W metric depth -> RGB colormap over [vmin, vmax] (default: min/max of the valid pixels); invalid black."""
    import cv2

    d = np.asarray(depth, dtype=np.float32)
    if d.ndim == 3:
        d = d[0] if d.shape[0] == 1 else d[..., 0]
    valid = np.isfinite(d) & (d > 0) if valid is None else np.asarray(valid, dtype=bool)
    vals = d[valid]
    lo = float(vals.min()) if vmin is None and vals.size else float(vmin or 0.0)
    hi = float(vals.max()) if vmax is None and vals.size else float(vmax if vmax is not None else 1.0)
    scaled = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)
    code = {"turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET}[cmap.lower()]
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), code)
    rgb = bgr[..., ::-1].copy()
    rgb[~valid] = 0
    return rgb


def normals_to_rgb(normals: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """3×H×W or H×W×3 unit vectors in [-1, 1] -> RGB (n + 1)/2·255; invalid pixels black."""
    n = np.asarray(normals, dtype=np.float32)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
        n = n.transpose(1, 2, 0)
    rgb = np.clip((n + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    if valid is not None:
        rgb[~np.asarray(valid, dtype=bool)] = 0
    return rgb


def gray_to_rgb(prob: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """H×W values in [0, 1] -> grey RGB; invalid pixels shown dark red so they are not read as 0."""
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim == 3:
        p = p[0]
    g = np.clip(p * 255.0, 0, 255).round().astype(np.uint8)
    rgb = np.repeat(g[..., None], 3, axis=2)
    if valid is not None:
        rgb[~np.asarray(valid, dtype=bool)] = (96, 0, 0)
    return rgb


def denormalize_image(image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A normalised 3×H×W tensor/array (the network input) -> RGB uint8 H×W×3."""
    x = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image, np.float32)
    x = x.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(x * 255.0, 0, 255).round().astype(np.uint8)


def prediction_to_numpy(info, logits) -> np.ndarray:
    """Raw network output K×H×W of one image -> the task's displayable/savable map (per the sample rule).

    argmax -> H×W int labels; threshold -> H×W P(class 1); sigmoid -> H×W probability;
    clamp -> H×W depth clamped to [lo, hi]; l2 -> H×W×3 unit normals.
    """
    import torch

    x = logits.detach().float().cpu() if hasattr(logits, "detach") else torch.as_tensor(logits).float()
    rule = info.sample_rule[0]
    if rule == "argmax":
        return x.argmax(0).numpy().astype(np.int64)
    if rule == "threshold":
        return torch.softmax(x, 0)[1].numpy()
    if rule == "sigmoid":
        return torch.sigmoid(x[0]).numpy()
    if rule == "clamp":
        return x[0].clamp(float(info.sample_rule[1]), float(info.sample_rule[2])).numpy()
    if rule == "l2":
        return torch.nn.functional.normalize(x, dim=0, eps=1e-12).permute(1, 2, 0).numpy()
    raise ValueError(f"task {info.name}: unknown sample rule {info.sample_rule!r}")


def target_to_numpy(info, target) -> tuple:
    """Ground truth C×H×W of one image -> (map in prediction_to_numpy's format, valid mask H×W)."""
    t = target.detach().float().cpu().numpy() if hasattr(target, "detach") else np.asarray(target, np.float32)
    rule = info.sample_rule[0]
    if rule == "l2":
        valid = ~(t == info.ignore_value).all(axis=0) if t.shape[0] == 3 else np.ones(t.shape[1:], bool)
        valid &= ~(t == info.ignore_value).any(axis=0)
        return t.transpose(1, 2, 0), valid
    m = t[0]
    valid = m != info.ignore_value
    if rule == "threshold":  # labels 0/1 shown as probability
        return m.astype(np.float32), valid
    if rule == "sigmoid":
        return m.astype(np.float32), valid
    return m, valid


def task_picture(info, value: np.ndarray, valid: np.ndarray | None = None, depth_range=None,
                 cmap: str = "turbo") -> np.ndarray:
    """RGB picture of a task map in prediction_to_numpy's format (labels, probabilities, depth, normals)."""
    rule = info.sample_rule[0]
    if rule == "argmax":
        lab = np.asarray(value).copy()
        if valid is not None:
            lab = np.where(valid, lab, 255)
        return colorize_labels(lab)
    if rule in ("threshold", "sigmoid"):
        return gray_to_rgb(value, valid)
    if rule == "clamp":
        lo, hi = depth_range if depth_range is not None else (None, None)
        return depth_to_color(value, valid=valid if valid is not None else None, vmin=lo, vmax=hi, cmap=cmap)
    if rule == "l2":
        return normals_to_rgb(value, valid)
    raise ValueError(f"task {info.name}: unknown sample rule {info.sample_rule!r}")


def add_caption(img: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    """Put a caption strip above a picture."""
    import cv2

    h, w = img.shape[:2]
    strip = np.full((height, w, 3), 255, np.uint8)
    scale = max(min(0.35, w / max(len(text), 1) / 16.0), 0.25)
    cv2.putText(strip, text, (2, height - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, img], axis=0)


def make_grid(rows, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Rows of RGB pictures -> one picture; cells are padded to the largest cell size, rows to the longest row."""
    rows = [list(r) for r in rows if len(r)]
    if not rows:
        raise ValueError("make_grid: no pictures")
    ch = max(p.shape[0] for r in rows for p in r)
    cw = max(p.shape[1] for r in rows for p in r)
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (ch + pad) + pad, ncol * (cw + pad) + pad, 3), fill, np.uint8)
    for i, r in enumerate(rows):
        for j, p in enumerate(r):
            p = np.asarray(p)
            if p.ndim == 2:
                p = np.repeat(p[..., None], 3, axis=2)
            y, x = pad + i * (ch + pad), pad + j * (cw + pad)
            out[y:y + p.shape[0], x:x + p.shape[1]] = p[..., :3]
    return out


def save_png(path: str, img: np.ndarray) -> str:
    """Write an RGB (H×W×3) or grey (H×W) uint8 picture as PNG."""
    from PIL import Image

    arr = np.ascontiguousarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"save_png({path}): expected uint8, got {arr.dtype}")
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def save_label_png(path: str, labels: np.ndarray) -> str:
    """Class labels as an indexed ('P' mode) PNG with the VOC palette: pixel values are the class ids."""
    from PIL import Image

    lab = np.clip(np.asarray(labels), 0, 255).astype(np.uint8)
    im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), np.ascontiguousarray(lab).tobytes())
    im.putpalette(_PALETTE.reshape(-1).tolist())
    return atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def save_depth_png16(path: str, depth_m: np.ndarray) -> str:
    """Metric depth (metres) as a 16-bit PNG in millimetres (0 = invalid; max 65.535 m)."""
    import cv2

    mm = np.clip(np.rint(np.asarray(depth_m, np.float64) * 1000.0), 0, 65535).astype(np.uint16)

    def write(tmp):
        if not cv2.imwrite(tmp, mm):
            raise OSError(f"cannot write {path}")

    return atomic_write(path, write)
