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
           "add_caption", "save_png", "save_label_png", "save_depth_png16", "uncertainty_range",
           "uncertainty_to_color", "colorbar", "with_colorbar", "class_legend", "save_float_array",
           "sparsification_plot"]

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


# ---- ensembles: uncertainty maps, colour bars, class legends (docs/method.md#sample-ensembles) ----------

def _colormap(scaled: np.ndarray, cmap: str) -> np.ndarray:
    """H×W values in [0, 1] -> RGB uint8 with an OpenCV colour map (turbo, jet, inferno, magma, viridis)."""
    import cv2

    codes = {"turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO,
             "magma": cv2.COLORMAP_MAGMA, "viridis": cv2.COLORMAP_VIRIDIS}
    u8 = (np.clip(np.nan_to_num(scaled), 0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(u8, codes[cmap.lower()])[..., ::-1].copy()


def uncertainty_range(values: np.ndarray, bound: float | None = None) -> tuple:
    """(0, hi) of an uncertainty map's colour scale: the map's theoretical maximum `bound` when it has one
    (entropy ln K, 180°: pictures comparable across images), else the map's own maximum."""
    v = np.asarray(values, dtype=np.float32)
    hi = float(bound) if bound is not None else float(np.nanmax(v)) if v.size else 1.0
    return 0.0, hi if hi > 0 else 1.0


def uncertainty_to_color(values: np.ndarray, vmin: float, vmax: float, cmap: str = "inferno") -> np.ndarray:
    """H×W uncertainty -> RGB over [vmin, vmax] (dark: certain, bright: uncertain)."""
    v = np.asarray(values, dtype=np.float32)
    return _colormap((v - vmin) / max(vmax - vmin, 1e-12), cmap)


def _fmt_tick(v: float) -> str:
    return f"{v:.3g}"


def colorbar(width: int, vmin: float, vmax: float, label: str = "", cmap: str = "inferno",
             height: int = 26) -> np.ndarray:
    """A horizontal colour bar `width` pixels wide: the gradient over [vmin, vmax] and a strip with the two
    end values and the label (unit) between them (height×width×3 RGB)."""
    import cv2

    width = max(int(width), 8)
    bar_h = max(height // 2 - 2, 4)
    grad = _colormap(np.tile(np.linspace(0, 1, width, dtype=np.float32), (bar_h, 1)), cmap)
    text = np.full((height - bar_h, width, 3), 255, np.uint8)
    scale = 0.3
    size = lambda t: cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]  # noqa: E731
    lo, hi = _fmt_tick(vmin), _fmt_tick(vmax)
    if label and size(lo) + size(hi) + size(label) + 20 > width:  # no room in the middle: "hi unit", or no unit
        hi, label = (f"{hi} {label}", "") if size(lo) + size(f"{hi} {label}") + 4 <= width else (hi, "")
    y = text.shape[0] - 3
    put = lambda t, x: cv2.putText(text, t, (max(int(x), 0), y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,  # noqa: E731
                                   cv2.LINE_AA)
    put(lo, 1)
    put(hi, width - size(hi) - 1)
    if label:
        put(label, (width - size(label)) // 2)
    return np.concatenate([grad, text], axis=0)


def with_colorbar(picture: np.ndarray, vmin: float, vmax: float, label: str = "", cmap: str = "inferno") -> np.ndarray:
    """A picture with its colour bar underneath (same width)."""
    return np.concatenate([picture, colorbar(picture.shape[1], vmin, vmax, label, cmap)], axis=0)


def class_legend(labels: np.ndarray, names, width: int, row_height: int = 11) -> np.ndarray | None:
    """A legend of the classes present in a label map: palette swatch + class name, in columns that fit
    `width`; None when no class is present. names: the task's class names (ids beyond them print as ids)."""
    import cv2

    ids = [int(i) for i in np.unique(np.asarray(labels)) if 0 <= int(i) < 255]
    if not ids:
        return None
    label = lambda i: names[i] if i < len(names) else str(i)  # noqa: E731
    scale = 0.3
    text_w = max(cv2.getTextSize(label(i), cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for i in ids)
    col_w = min(max(int(width), 20), text_w + row_height + 6)
    cols = max(1, int(width) // col_w)
    rows = -(-len(ids) // cols)
    out = np.full((rows * row_height + 2, max(int(width), col_w), 3), 255, np.uint8)
    for n, i in enumerate(ids):
        y, x = 1 + (n // cols) * row_height, (n % cols) * col_w
        out[y + 1:y + row_height - 1, x + 1:x + row_height - 1] = _PALETTE[i]
        cv2.putText(out, label(i), (x + row_height + 2, y + row_height - 3), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return out


def save_float_array(path: str, values: np.ndarray) -> str:
    """An H×W map as a float32 .npy file (numpy.load reads it), written atomically."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float32))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr)

    return atomic_write(path, write)


def sparsification_plot(task_name: str, res: dict, size=(480, 360)) -> np.ndarray:
    """RGB picture of a task's sparsification, oracle and random curves (evaluation/uncertainty.py result:
    'unc_curves', 'unc_ause', 'unc_ause_random', 'unc_spearman', 'unc_map')."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    c = res["unc_curves"]
    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(c["fractions"], c["sparsification"], label=f"by {res.get('unc_map', 'uncertainty')}", color="C0")
    ax.plot(c["fractions"], c["oracle"], label="oracle (by true error)", color="C2", linestyle="--")
    ax.plot(c["fractions"], c["random"], label="random order", color="C7", linestyle=":")
    ax.set_xlabel("fraction of pixels removed (most uncertain first)")
    ax.set_ylabel("mean error of the rest")
    ax.set_title(f"{task_name}: AUSE {res['unc_ause']:.4g} (random {res['unc_ause_random']:.4g}), "
                 f"Spearman {res['unc_spearman']:.3f}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
