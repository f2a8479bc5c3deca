"""Boundary detection quality in-process: ODS-F (the paper metric), OIS-F and AP (docs/method.md#boundary-metric).

The published numbers come from an external MATLAB tool (SEISM through a wrapper). This module follows
the same protocol so that users get odsF inside the framework:

1. Prediction: the uint8 0..255 map that the original writes as PNG (sigmoid·255, truncated, cropped to
   the original size from the centred padding), read as E = v/255 in float32.
2. Non-maximum suppression as the structured-edge toolbox does it (what SEISM's PNG reader calls):
   orientation from second derivatives of a triangle-smoothed copy (radius 4):
       Ox, Oy = ∂S/∂x, ∂S/∂y;  Oxx = ∂Ox/∂x;  Oxy = ∂Oy/∂x;  Oyy = ∂Oy/∂y
       O = mod(atan(Oyy · sign(-Oxy) / (Oxx + 1e-5)), π)
   (central differences inside, one-sided at the border, like MATLAB `gradient`); then a pixel of the
   *unsmoothed* E is zeroed when a bilinearly interpolated neighbour at distance 1 along ±(cos O, sin O)
   exceeds 1.01 · its value (r = 1, m = 1.01); finally values within s = 5 pixels of the border fade
   linearly to 0 (×d/5 at distance d). Differences from the MEX original: it is written with numpy in
   float32 (same formula, same interpolation with coordinates clamped to [0, size - 1.001]); the
   symmetric border padding of the triangle filter is scipy's 'reflect' mode; rounding can differ in the
   last float32 bit, which can flip a pixel whose two values tie to within 1e-7. Kept quirk of the
   formula: where Oxy is exactly 0 (e.g. along an exactly constant horizontal ridge of a uint8 map) the
   orientation is 0 and NMS compares along x; thinning then still reduces such bands to one pixel.
3. For each threshold t (101 for the full protocol: 0.001, 0.01, 0.02, …, 0.99, 0.999 as SEISM's
   HED.txt; fewer for the in-training estimate): binary map NMS(E) > t, morphological thinning
   (the algorithm of MATLAB's bwmorph 'thin', Inf iterations; `thin_binary`, a sparse re-implementation
   that gives exactly skimage.morphology.thin's result ~10x faster).
4. Matching to the GT boundary pixels with tolerance maxDist × image diagonal (PASCAL 0.0075, NYUD 0.011,
   data.tasks.EDGE_MAX_DIST), one-to-one. Per image and threshold: cntR = matched GT pixels,
   sumR = GT pixels, cntP = matched predicted pixels, sumP = predicted pixels (integers).
   Backends (the default is 'scipy'):
   * 'scipy': Python/SciPy. Builds the bipartite graph of (predicted, GT) pixel pairs at Euclidean
     distance ≤ maxDist·diag and takes a maximum-cardinality matching, computed as the maximum flow of the
     unit-capacity network source → predicted → GT → sink (scipy.sparse.csgraph.maximum_flow, Dinic,
     O(E·√V); a few ms for 5 000 boundary pixels). scipy's maximum_bipartite_matching is not used: its
     Hopcroft-Karp search takes exponential time on chain-like graphs such as boundaries (scipy issue
     26147; it hung on a 512×512 test image).
   * 'pyedgeeval': the compiled BSDS `correspondPixels` (CSA min-cost assignment with outlier nodes) of
     the optional package pyEdgeEval, imported lazily ('auto' = this one when importable, else 'scipy').
     It is what SEISM runs, but ~1 s per call on a 512×512 map with ~5 000 boundary pixels, i.e. ~100 s
     per image at 101 thresholds against ~1 s for 'scipy' (measured on synthetic Voronoi boundaries),
     which is why it is not the default: use it to cross-check.
   The CSA minimises the total distance on a graph whose outlier connections are sparse and random, so
   it sometimes leaves a matchable pair unmatched; maximum matching never does. F only uses the counts:
   'scipy' matches a few more pixels (≤ 1 % of the GT pixels per threshold) and gave odsF 0.16-0.18
   points higher (AP 0.04-0.11) than 'pyedgeeval' on the synthetic 512×512 test images.
5. ODS: sum the four counts of each threshold over images; R = ΣcntR/ΣsumR, P = ΣcntP/ΣsumP,
   F = 2PR/(P+R); odsF = 100 · max over thresholds (no interpolation between thresholds, as docs/method.md#boundary-metric).
   OIS: per image the threshold of its best F; the counts at those thresholds are summed and give oisF.
   AP: 100 · mean of the precision interpolated at recall 0, 0.01, …, 1 inside the recall range of the
   curve (the BSDS benchmark's definition). Zero denominators count as 1 (BSDS convention).

GT: the dataset's edge map (PASCAL: Laplacian of the label map, thinned; NYUD: the edge PNG), cropped,
thinned again (a no-op on thin maps). SEISM instead rebuilds PASCAL boundaries from the label map with
seg2bmap; numbers are comparable, not byte-identical. Pixels whose GT is 255 are removed from the
prediction before matching. For the published protocol byte for byte use tools/export_edges_for_seism.py.

Exact under sharding: every image's contribution is four integers per threshold, summed; ranks
all-reduce the sums, so N processes give exactly the single-process numbers.

Speed ('scipy', 512×512, 101 thresholds, ~5 000 GT boundary pixels): ~1.0-1.4 s per image on one core
(the matching about 3/4 of it). Images are spread over `workers` processes (spawn context, safe with
CUDA in the parent) while the evaluation loop keeps running; `synchronize()`/`compute()` wait for them
with a progress bar. Measured with 16 workers on a 16-core node: 0.22 s per image, i.e. ~9 min for the
2498-image PASCAL list and ~19 min for all 5105 val images; the in-training estimate (11 thresholds, 50
images) takes seconds.

Image sets: `image_list` restricts scoring to listed ids. The published PASCAL numbers use the 2498-id
`test_new` list of prismformore's Boundary-Detection-Evaluation-Tools (`seism/gt_sets/PASCALContext/
test_new.txt`, not shipped here): point `edge_eval.image_list` at a copy of it. For the in-training
estimate, `max_images` picks a fixed subset: the images with the smallest CRC32 of their id (independent
of batch order and of sharding).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import maximum_flow

from utils.signals import ignore_stop_signals

__all__ = [
    "edge_thresholds", "conv_tri", "edge_orientation", "edge_nms", "nms_edges", "match_counts",
    "evaluate_image", "pr_summary", "thin_binary", "resolve_backend", "pyedgeeval_available", "BoundaryMeter",
    "default_workers", "read_image_list",
]

BACKENDS = ("auto", "pyedgeeval", "scipy")


# ------------------------------------------------------------------------------------------------
# thresholds
# ------------------------------------------------------------------------------------------------

def edge_thresholds(n: int) -> np.ndarray:
    """n thresholds: 0.001, then n-2 evenly spaced values from 0.01 to 0.99, then 0.999.

    n = 101 gives SEISM's HED.txt list (0.001, 0.01, 0.02, ..., 0.99, 0.999); smaller n give the coarser
    grids of the in-training estimate (which then slightly underestimates odsF).
    """
    n = int(n)
    if n < 3:
        raise ValueError(f"need at least 3 edge thresholds, got {n}")
    return np.concatenate([[0.001], np.round(np.linspace(0.01, 0.99, n - 2), 10), [0.999]])


# ------------------------------------------------------------------------------------------------
# non-maximum suppression
# ------------------------------------------------------------------------------------------------

def conv_tri(img: np.ndarray, r: int) -> np.ndarray:
    """Separable triangle filter of integer radius r ([1 … r+1 … 1] / (r+1)²), symmetric borders."""
    if r < 1:
        return img
    k = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float32) / float((r + 1) ** 2)
    out = ndimage.convolve1d(img, k, axis=0, mode="reflect")
    return ndimage.convolve1d(out, k, axis=1, mode="reflect")


def edge_orientation(e: np.ndarray, r: int = 4) -> np.ndarray:
    """Edge normal orientation in [0, π) from second derivatives of the triangle-smoothed map."""
    s = conv_tri(e, r)
    oy, ox = np.gradient(s)
    oxx = np.gradient(ox, axis=1)
    oxy, oyy = np.gradient(oy, axis=1), np.gradient(oy, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = np.arctan(oyy * np.sign(-oxy) / (oxx + np.float32(1e-5)))
    return np.mod(o, np.float32(np.pi)).astype(np.float32)


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    h, w = img.shape
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0 = x.astype(np.int64)
    y0 = y.astype(np.int64)
    dx = (x - x0).astype(np.float32)
    dy = (y - y0).astype(np.float32)
    return (img[y0, x0] * (1 - dx) * (1 - dy) + img[y0, x0 + 1] * dx * (1 - dy)
            + img[y0 + 1, x0] * (1 - dx) * dy + img[y0 + 1, x0 + 1] * dx * dy)


def edge_nms(e: np.ndarray, o: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01) -> np.ndarray:
    """Suppress pixels that are not maximal along their normal; fade the s-pixel border to zero."""
    h, w = e.shape
    if h < 2 or w < 2:
        raise ValueError(f"edge maps must be at least 2x2, got {h}x{w}")
    out = e.copy()
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cos, sin = np.cos(o), np.sin(o)
    scaled = e * np.float32(m)
    for d in range(-r, r + 1):
        if d == 0:
            continue
        neighbour = _bilinear(e, ys + d * sin, xs + d * cos)
        out[scaled < neighbour] = 0
    s = min(s, w // 2, h // 2)
    for i in range(s):
        f = np.float32(i / s)
        out[:, i] *= f
        out[:, w - 1 - i] *= f
        out[i, :] *= f
        out[h - 1 - i, :] *= f
    return out


def nms_edges(e: np.ndarray) -> np.ndarray:
    """SEISM's reading of a continuous edge map: orientation (r=4) then NMS (r=1, s=5, m=1.01)."""
    e = np.asarray(e, dtype=np.float32)
    return edge_nms(e, edge_orientation(e))


# ------------------------------------------------------------------------------------------------
# correspondence
# ------------------------------------------------------------------------------------------------

def pyedgeeval_available() -> bool:
    try:
        from pyEdgeEval._lib import correspond_pixels  # noqa: F401
    except Exception:  # ImportError, or a broken compiled extension
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown boundary matching backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "pyedgeeval" if pyedgeeval_available() else "scipy"
    if backend == "pyedgeeval" and not pyedgeeval_available():
        raise ImportError("boundary backend 'pyedgeeval' requested but pyEdgeEval is not importable; "
                          "`pip install pyEdgeEval` (builds a C++ extension) or use backend 'scipy'")
    return backend


def _offsets(radius: float) -> np.ndarray:
    """Integer (dy, dx) with dy² + dx² ≤ radius², nearest first."""
    k = int(math.floor(radius))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    d2 = dy ** 2 + dx ** 2
    keep = d2 <= radius * radius + 1e-9
    order = np.argsort(d2[keep], kind="stable")
    return np.stack([dy[keep][order], dx[keep][order]], axis=1)


class _FlowMatcher:
    """Maximum-cardinality matching of predicted to GT pixels within `radius`; the candidate pairs are
    enumerated once per image from the GT side, so each threshold costs one gather and one max flow."""

    def __init__(self, gt: np.ndarray, radius: float):
        h, w = gt.shape
        k = int(math.floor(radius))
        self.shape, self.k, self.wp = (h, w), k, w + 2 * k
        # Flat positions in a k-padded frame, so every shifted position is a valid index.
        gy, gx = np.nonzero(gt)
        self.n_gt = len(gy)
        shifts = np.array([dy * self.wp + dx for dy, dx in _offsets(radius)], dtype=np.int64)
        gflat = (gy + k) * self.wp + gx + k
        self.pos = (gflat[:, None] + shifts[None, :]).ravel()  # candidate predicted positions
        self.gt_of = np.repeat(np.arange(self.n_gt), len(shifts))  # ... and the GT pixel of each pair

    def count(self, pred: np.ndarray) -> int:
        h, w = self.shape
        k = self.k
        padded = np.zeros((h + 2 * k, self.wp), dtype=bool)
        padded[k:k + h, k:k + w] = pred
        hit = padded.reshape(-1)[self.pos]
        if not hit.any():
            return 0
        pred_pos, rows = np.unique(self.pos[hit], return_inverse=True)
        cols = self.gt_of[hit]
        # Unit-capacity network source -> predicted pixel -> GT pixel -> sink: its maximum flow is the
        # maximum matching size (Dinic, O(E·sqrt(V)) on such networks).
        n1, n2 = len(pred_pos), self.n_gt
        src_node, sink = n1 + n2, n1 + n2 + 1
        tail = np.concatenate([np.full(n1, src_node), rows, n1 + np.arange(n2)])
        head = np.concatenate([np.arange(n1), n1 + cols, np.full(n2, sink)])
        net = sparse.csr_matrix((np.ones(tail.size, dtype=np.int32), (tail, head)), shape=(n1 + n2 + 2,) * 2)
        return int(maximum_flow(net, src_node, sink, method="dinic").flow_value)


def _match_pyedgeeval(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple:
    from pyEdgeEval._lib import correspond_pixels

    # The compiled matcher reads raw buffers: hand it C-ordered copies (astype keeps a Fortran layout).
    match_pred, match_gt, _, _ = correspond_pixels(np.ascontiguousarray(pred, dtype=np.float64),
                                                   np.ascontiguousarray(gt, dtype=np.float64), max_dist, 100.0)
    return int((match_pred > 0).sum()), int((match_gt > 0).sum())


def match_counts(pred: np.ndarray, gt: np.ndarray, max_dist: float, backend: str = "scipy") -> tuple:
    """(#matched predicted pixels, #matched GT pixels) of two boolean boundary maps; the tolerance is
    max_dist × the image diagonal."""
    if not pred.any() or not gt.any():
        return 0, 0
    if backend == "pyedgeeval":
        return _match_pyedgeeval(pred, gt, max_dist)
    if backend == "scipy":
        n = _FlowMatcher(gt, max_dist * math.hypot(*pred.shape)).count(pred)
        return n, n
    raise ValueError(f"backend must be resolved to 'pyedgeeval' or 'scipy', got {backend!r}")


# ------------------------------------------------------------------------------------------------
# one image, and the summary over images
# ------------------------------------------------------------------------------------------------

def _thinning_lut(subiteration: int) -> np.ndarray:
    """Deletion table over the 256 8-neighbourhoods for one subiteration of the thinning of Lam, Lee and
    Suen (1992), the algorithm of MATLAB's bwmorph 'thin' and of skimage.morphology.thin.

    Neighbours x1..x8 run counter-clockwise from east (x1 E, x2 NE, x3 N, ..., x8 SE; north = row - 1);
    bit i-1 of the code is x_i. A pixel is deleted when
      G1: exactly one 4-connected crossing: #{i in 1..4: x_{2i-1} = 0 and (x_{2i} or x_{2i+1})} = 1,
      G2: 2 <= min(n1, n2) <= 3 with n1 = #{k: x_{2k-1} or x_{2k}}, n2 = #{k: x_{2k} or x_{2k+1}},
      G3 (first subiteration): (x2 or x3 or not x8) and x1 is false;
      G3' (second): (x6 or x7 or not x4) and x5 is false.
    """
    lut = np.zeros(256, dtype=bool)
    for code in range(256):
        x = [None] + [(code >> i) & 1 for i in range(8)] + [code & 1]  # x[1..8], x[9] = x[1]
        g1 = sum(1 for i in range(1, 5) if x[2 * i - 1] == 0 and (x[2 * i] or x[2 * i + 1])) == 1
        n1 = sum(1 for k in range(1, 5) if x[2 * k - 1] or x[2 * k])
        n2 = sum(1 for k in range(1, 5) if x[2 * k] or x[2 * k + 1])
        g2 = 2 <= min(n1, n2) <= 3
        if subiteration == 1:
            g3 = not ((x[2] or x[3] or not x[8]) and x[1])
        else:
            g3 = not ((x[6] or x[7] or not x[4]) and x[5])
        lut[code] = g1 and g2 and g3
    return lut


_THIN_LUTS = (_thinning_lut(1), _thinning_lut(2))


def _padded_c_order(b: np.ndarray) -> np.ndarray:
    """Boolean copy of `b` framed by one row/column of False, always C-ordered whatever `b`'s layout.

    Why: thin_binary addresses neighbours by flat offsets and deletes pixels through a flattened view;
    both assume row-major storage of a private buffer, never the caller's array.
    """
    h, w = b.shape
    img = np.zeros((h + 2, w + 2), dtype=bool, order="C")
    img[1:-1, 1:-1] = b  # any non-zero value is set, as with astype(bool)
    return img


def thin_binary(b: np.ndarray) -> np.ndarray:
    """Morphological thinning to 1-pixel lines (Inf iterations), identical to skimage.morphology.thin.

    Why not skimage: it re-scans the whole image with a correlation in every subiteration; boundary maps
    are sparse, so this version only looks at the set pixels (8 gathers each) and is ~10x faster, which
    matters at 101 thresholds per image. Equality with skimage is checked in the tests.

    Any memory order or strided view is accepted: the pixels are copied into a fresh C-ordered padded
    array, so that `flat` is a view of it and the deletions made through it land in the returned map
    (np.pad keeps a Fortran input's order, and a flattened Fortran array is a copy that would swallow
    them, handing back the unthinned map).
    """
    b = np.asarray(b)
    if b.ndim != 2:
        raise ValueError(f"thin_binary expects a 2-D map, got shape {b.shape}")
    img = _padded_c_order(b)
    w = img.shape[1]
    flat = img.reshape(-1)  # a view: img is C-ordered and contiguous by construction
    idx = np.flatnonzero(flat)
    offsets = (1, -w + 1, -w, -w - 1, -1, w - 1, w, w + 1)  # x1..x8: E, NE, N, NW, W, SW, S, SE
    changed = True
    while changed:
        changed = False
        for lut in _THIN_LUTS:
            code = np.zeros(idx.size, dtype=np.int64)
            for bit, off in enumerate(offsets):
                code |= flat[idx + off].astype(np.int64) << bit
            delete = lut[code]  # decided for all pixels before any is removed (parallel subiteration)
            if delete.any():
                flat[idx[delete]] = False
                idx = idx[~delete]
                changed = True
    return img[1:-1, 1:-1]


def evaluate_image(pred_u8: np.ndarray, gt: np.ndarray, thresholds: Sequence[float], max_dist: float,
                   backend: str = "scipy", ignore_value: int = 255) -> np.ndarray:
    """Counts of one image: int64 array T×4 with columns (cntR, sumR, cntP, sumP) per threshold.

    pred_u8: H0×W0 uint8 (0..255) edge map; gt: H0×W0 with 1 (or any value > 0) = boundary, 0 = none,
    `ignore_value` = unlabelled.
    """
    pred_u8 = np.asarray(pred_u8)
    gt = np.asarray(gt)
    if pred_u8.shape != gt.shape or pred_u8.ndim != 2:
        raise ValueError(f"edge prediction {pred_u8.shape} and GT {gt.shape} must be equal 2-D shapes")
    ignore = gt == ignore_value
    gt_b = thin_binary((gt > 0) & ~ignore)
    sum_r = int(gt_b.sum())
    nms = nms_edges(pred_u8.astype(np.float32) / np.float32(255.0))
    nms[ignore] = 0
    out = np.zeros((len(thresholds), 4), dtype=np.int64)
    out[:, 1] = sum_r
    matcher = _FlowMatcher(gt_b, max_dist * math.hypot(*gt_b.shape)) if backend == "scipy" else None
    for i, t in enumerate(thresholds):
        b = nms > t
        if not b.any():
            break  # thresholds ascend: every later map is empty too (counts stay 0)
        b = thin_binary(b)
        if matcher is not None:
            cnt_p = cnt_r = matcher.count(b) if sum_r else 0
        else:
            cnt_p, cnt_r = match_counts(b, gt_b, max_dist, backend)
        out[i, 0], out[i, 2], out[i, 3] = cnt_r, cnt_p, int(b.sum())
    return out


def _prf(cnt_r, sum_r, cnt_p, sum_p):
    """Recall, precision, F with the BSDS guards (a zero denominator counts as 1)."""
    r = cnt_r / np.where(sum_r == 0, 1, sum_r)
    p = cnt_p / np.where(sum_p == 0, 1, sum_p)
    f = 2 * p * r / np.where(p + r == 0, 1, p + r)
    return r, p, f


def best_counts(counts: np.ndarray) -> np.ndarray:
    """The (cntR, sumR, cntP, sumP) row of an image's best-F threshold (first one on ties): OIS input."""
    _, _, f = _prf(*counts.T.astype(np.float64))
    return counts[int(np.argmax(f))]


def average_precision(r: np.ndarray, p: np.ndarray) -> float:
    """Mean precision interpolated at recall 0, 0.01, ..., 1, counting only points inside the curve's
    recall range (the BSDS benchmark's AP)."""
    r_u, idx = np.unique(r, return_index=True)
    if r_u.size < 2:
        return 0.0
    p_u = p[idx]
    grid = np.linspace(0, 1, 101)
    inside = (grid >= r_u[0]) & (grid <= r_u[-1])
    return float(np.interp(grid[inside], r_u, p_u).sum() / 100.0)


def pr_summary(totals: np.ndarray, ois_counts: np.ndarray, thresholds: Sequence[float]) -> dict:
    """odsF, oisF, AP (×100) and the ODS threshold from summed counts (T×4) and summed OIS counts (4)."""
    r, p, f = _prf(*np.asarray(totals, dtype=np.float64).T)
    k = int(np.argmax(f))
    _, _, f_ois = _prf(*np.asarray(ois_counts, dtype=np.float64))
    return {"odsF": 100.0 * float(f[k]), "oisF": 100.0 * float(f_ois), "AP": 100.0 * average_precision(r, p),
            "ods_threshold": float(thresholds[k])}


def _job(pred_u8, gt, thresholds, max_dist, backend):
    """Worker entry point (module level, so spawn can pickle it)."""
    return evaluate_image(pred_u8, gt, thresholds, max_dist, backend)


# ------------------------------------------------------------------------------------------------
# the accumulator
# ------------------------------------------------------------------------------------------------

def default_workers() -> int:
    """All cores, shared between the ranks of this node (torchrun sets LOCAL_WORLD_SIZE)."""
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, (os.cpu_count() or 1) // per_node)


def read_image_list(path: str) -> set:
    """Image ids, one per line (blank lines and '#' comments ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"edge_eval.image_list: {path!r} does not exist; give a text file with one image id "
                                f"per line (e.g. the 2498-id PASCAL test_new list of the boundary tool) or null")
    with open(path) as fh:
        ids = {ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")}
    if not ids:
        raise ValueError(f"edge_eval.image_list: {path!r} holds no image id")
    return ids


class BoundaryMeter:
    """Accumulates boundary counts image by image.

    update(preds, gts, names): lists of H0×W0 uint8 predictions and H0×W0 GT maps (0/1/255) with their ids.
    synchronize(): evaluates what is still queued and all-reduces the sums (call on every rank).
    compute() -> {'odsF', 'oisF', 'AP', 'ods_threshold', 'num_images'} (keys end in '_est' for an estimate).

    thresholds: a count (see edge_thresholds) or an explicit ascending sequence.
    max_images: score only this many images (the smallest CRC32 ids among those seen on all ranks).
    workers: processes for the matching (None: default_workers(); ≤ 1: in this process).
    """

    def __init__(self, max_dist: float, thresholds=101, max_images: Optional[int] = None,
                 image_list: Optional[Iterable[str]] = None, workers: Optional[int] = None,
                 backend: str = "scipy", estimate: bool = False, progress: bool = True):
        self.max_dist = float(max_dist)
        th = edge_thresholds(thresholds) if np.isscalar(thresholds) else np.asarray(thresholds, dtype=np.float64)
        if th.ndim != 1 or th.size < 1 or np.any(np.diff(th) <= 0):
            raise ValueError("edge thresholds must be a strictly ascending 1-D sequence")
        self.thresholds = th
        self.max_images = None if max_images is None else int(max_images)
        self.image_list = None if image_list is None else set(image_list)
        self.workers = default_workers() if workers is None else int(workers)
        self.backend = resolve_backend(backend)
        self.suffix = "_est" if estimate else ""
        self.progress = progress
        self._pool = None
        self.reset()

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        self._shutdown_pool(cancel=True)
        self.totals = np.zeros((len(self.thresholds), 4), dtype=np.float64)
        self.ois = np.zeros(4, dtype=np.float64)
        self.num_images = 0.0
        self._pending: deque = deque()
        self._candidates: dict = {}  # estimate mode: id -> (pred, gt), the max_images smallest keys seen
        self._synced = False

    def _accumulate(self, counts: np.ndarray) -> None:
        self.totals += counts
        self.ois += best_counts(counts)
        self.num_images += 1

    # -- work ----------------------------------------------------------------------------------
    def _ensure_pool(self):
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=ignore_stop_signals)
        return self._pool

    def _shutdown_pool(self, cancel: bool = False) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def _submit(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if self.workers <= 1:
            self._accumulate(evaluate_image(pred, gt, self.thresholds, self.max_dist, self.backend))
            return
        fut = self._ensure_pool().submit(_job, pred, gt, self.thresholds, self.max_dist, self.backend)
        self._pending.append(fut)
        # Bound the queue (each entry holds two images) while harvesting what is done.
        while self._pending and (self._pending[0].done() or len(self._pending) > 4 * self.workers):
            self._accumulate(self._pending.popleft().result())

    @staticmethod
    def _key(name: str) -> tuple:
        return zlib.crc32(name.encode("utf-8")), name

    def update(self, preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], names: Sequence[str]) -> None:
        if self._synced:
            raise RuntimeError("BoundaryMeter.update() after synchronize(); call reset() first")
        if not (len(preds) == len(gts) == len(names)):
            raise ValueError(f"got {len(preds)} predictions, {len(gts)} GT maps and {len(names)} names")
        for pred, gt, name in zip(preds, gts, names):
            name = str(name)
            if self.image_list is not None and name not in self.image_list:
                continue
            pred, gt = np.ascontiguousarray(pred, dtype=np.uint8), np.ascontiguousarray(gt, dtype=np.uint8)
            if self.max_images is None:
                self._submit(pred, gt)
                continue
            self._candidates[name] = (pred, gt)
            if len(self._candidates) > self.max_images:  # drop the largest key (at most max_images + 1 entries)
                del self._candidates[max(self._candidates, key=self._key)]

    def _flush(self, selected: Optional[set] = None) -> None:
        """Evaluate the chosen candidates (estimate mode) and wait for every queued image."""
        for name, (pred, gt) in sorted(self._candidates.items()):
            if selected is None or name in selected:
                self._submit(pred, gt)
        self._candidates = {}
        if self._pending:
            from tqdm.auto import tqdm

            from utils.distributed import is_main_process
            desc = f"boundary F{self.suffix} ({self.backend}, {self.workers} workers)"
            bar = tqdm(total=len(self._pending), desc=desc,
                       disable=not (self.progress and is_main_process()), leave=False)
            while self._pending:
                self._accumulate(self._pending.popleft().result())
                bar.update(1)
            bar.close()
        self._shutdown_pool()

    def merge(self, other: "BoundaryMeter") -> "BoundaryMeter":
        """Add another meter's images (same thresholds and tolerance) into this one."""
        if not np.array_equal(other.thresholds, self.thresholds) or other.max_dist != self.max_dist:
            raise ValueError("cannot merge BoundaryMeters with different thresholds or tolerance")
        if other.max_images is None:
            other._flush()
        self.totals += other.totals
        self.ois += other.ois
        self.num_images += other.num_images
        self._candidates.update(other._candidates)
        if self.max_images is not None:
            for name in sorted(self._candidates, key=self._key)[self.max_images:]:
                del self._candidates[name]
        other._candidates = {}
        return self

    def synchronize(self) -> None:
        """Collective: pick the estimate subset across ranks, finish local work, all-reduce the sums."""
        import torch

        from utils.distributed import all_gather_object, all_reduce_sum
        if self._synced:
            raise RuntimeError("BoundaryMeter.synchronize() called twice without reset()")
        selected = None
        if self.max_images is not None:
            keys = [k for part in all_gather_object([self._key(n) for n in self._candidates]) for k in part]
            selected = {name for _, name in sorted(keys)[: self.max_images]}
        self._flush(selected)
        sums = torch.from_numpy(np.concatenate([self.totals.ravel(), self.ois, [self.num_images]]))
        all_reduce_sum(sums)
        s = sums.numpy()
        n_t = self.totals.size
        self.totals = s[:n_t].reshape(self.totals.shape).copy()
        self.ois = s[n_t:n_t + 4].copy()
        self.num_images = float(s[-1])
        self._synced = True

    def compute(self) -> dict:
        """Metrics over everything seen (single process: no synchronize() needed)."""
        if not self._synced:
            self._flush()  # estimate mode: the candidates already are the max_images smallest keys
        sfx = self.suffix
        if self.num_images == 0:
            nan = float("nan")
            return {f"odsF{sfx}": nan, f"oisF{sfx}": nan, f"AP{sfx}": nan, f"ods_threshold{sfx}": nan,
                    f"num_images{sfx}": 0}
        res = pr_summary(self.totals, self.ois, self.thresholds)
        out = {f"{k}{sfx}": v for k, v in res.items()}
        out[f"num_images{sfx}"] = int(self.num_images)
        return out

    def __del__(self):
        try:
            self._shutdown_pool(cancel=True)
        except Exception:
            pass
