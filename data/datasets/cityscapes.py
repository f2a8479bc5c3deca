"""Cityscapes in the official layout (`<db_root>/cityscapes/`): semantic segmentation (19 train classes) and
depth from the stereo disparity, with each image's own camera. Everything the framework knows about it is
in this module: the DatasetSpec (registered on import), the reader, the download facts (four zips behind a
login), the per-file checks of `python -m data.verify --dataset cityscapes` and the synthetic look-alike of
`python -m data.synthetic --dataset cityscapes`. The protocol is docs/reproducing.md#cityscapes.

Layout (one folder per split and city; <id> = <city>_<seq>_<frame>, e.g. aachen_000000_000019):
  leftImg8bit/<split>/<city>/<id>_leftImg8bit.png    8-bit RGB, 1024×2048
  gtFine/<split>/<city>/<id>_gtFine_labelIds.png     label ids of the official table (0..33, voids included)
  disparity/<split>/<city>/<id>_disparity.png        16-bit: p > 0 → disparity d = (p − 1)/256 px; p = 0 invalid
  camera/<split>/<city>/<id>_camera.json             extrinsic.baseline (m), intrinsic.fx (px), ...
Splits: train 2975, val 500 (test has no public labels).

Decoding per task:
  semseg  labelIds → trainIds through the label table of the official `cityscapesscripts` package
          (cityscapesscripts.helpers.labels): 19 classes 0..18, every other id (void, ignoreInEval) → 255.
          Note: raw id 10 is *rail track* (ignored); sky is id 23 = trainId 10.
  depth   depth_target 'metres' (default): depth = baseline · fx / d for p > 1 (d > 0), else 0 (invalid);
          'disparity': d itself (pixels of the full-resolution image), 0 where p = 0.
          Invalid pixels are 0, the depth task's ignore value: masked in the loss (ignore_invalid_area_depth)
          and in the metrics (DepthMeter counts depth_min < gt < depth_max, the task's 0..256 range).
  edge    (optional, off in the configs) thinned 3×3 Laplacian boundaries of the labelIds map.

Resolution (docs/reproducing.md#cityscapes): `input_size: [512, 1024]` resizes every image (bilinear) before
the pipeline; training labels follow (nearest). Evaluation labels stay at their full 1024×2048 resolution
(`eval_resolution: label`, the default): the sample's meta gets `orig_size`, and the evaluator and the
prediction writers upsample the network's output to it. `eval_resolution: input` resizes them like the
training labels instead (cheaper, not the official protocol). Depth values are never rescaled: metric depth
does not change with the image size, and disparities stay in pixels of the full-resolution image, so that
scores at either resolution compare with the original files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers import labels as cs_labels

from ..base import MultiTaskDataset
from ..checks import DatasetChecks, Problem, size_problem, values_problem
from ..common import DatasetError, as_hwc, read_png_raw, read_rgb
from ..registry import Archive, DatasetSpec, register_dataset
from ..synthetic_base import SyntheticWriter
from ..tasks import Task, register_task, task_info
from .pascal_context import edges_from_labelmap

IGNORE = 255
# the official label table: every labelId with its trainId (255 = not evaluated); license plate's id is -1
LABEL_IDS = tuple(lab.id for lab in cs_labels.labels if lab.id >= 0)
TRAIN_CLASSES = tuple(cs_labels.trainId2label[t].name for t in range(19))
ID_TO_TRAIN = np.full(256, IGNORE, np.uint8)
for _lab in cs_labels.labels:
    if _lab.id >= 0 and 0 <= _lab.trainId < 19:
        ID_TO_TRAIN[_lab.id] = _lab.trainId
TRAIN_TO_ID = np.array([cs_labels.trainId2label[t].id for t in range(19)], np.uint8)
TRAIN_COLOURS = np.array([cs_labels.trainId2label[t].color for t in range(19)], np.uint8)
assert len(TRAIN_CLASSES) == 19 and TRAIN_CLASSES[10] == "sky" and ID_TO_TRAIN[10] == IGNORE

DEPTH_TARGETS = ("metres", "disparity")
DEPTH_MAX = 256.0  # the task's value range (m or px): 16-bit disparity files hold d < 256 px
SUFFIX = {"image": "_leftImg8bit.png", "semseg": "_gtFine_labelIds.png", "disparity": "_disparity.png",
          "camera": "_camera.json"}
FOLDER = {"image": "leftImg8bit", "semseg": "gtFine", "disparity": "disparity", "camera": "camera"}


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    """labelIds (any integer array) → trainIds uint8 (0..18, 255 for every other id)."""
    ids = np.asarray(label_ids)
    out = np.full(ids.shape, IGNORE, np.uint8)
    ok = (ids >= 0) & (ids < 256)
    out[ok] = ID_TO_TRAIN[ids[ok].astype(np.int64)]
    return out


def label_ids(train: np.ndarray) -> np.ndarray:
    """trainIds 0..18 → labelIds uint8 (what the official evaluator reads); 255 → 0 (unlabeled)."""
    t = np.asarray(train).astype(np.int64)
    out = np.zeros(t.shape, np.uint8)
    ok = (t >= 0) & (t < 19)
    out[ok] = TRAIN_TO_ID[t[ok]]
    return out


def city_of(sid: str) -> str:
    """'aachen_000000_000019' → 'aachen' (city names may hold '-' but never '_')."""
    return sid.rsplit("_", 2)[0]


def read_camera(path, sid) -> tuple:
    """(baseline m, fx px) of one camera JSON; a DatasetError naming the file when absent or not positive."""
    try:
        with open(path) as f:
            cam = json.load(f)
        baseline, fx = float(cam["extrinsic"]["baseline"]), float(cam["intrinsic"]["fx"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"cannot read {path} (sample {sid!r}): {type(err).__name__}: {err} (a Cityscapes camera "
                           f"JSON has extrinsic.baseline and intrinsic.fx)") from None
    if not (baseline > 0 and fx > 0 and np.isfinite(baseline) and np.isfinite(fx)):
        raise DatasetError(f"{path} (sample {sid!r}): baseline {baseline} and fx {fx} must be positive")
    return baseline, fx


def read_disparity_png(path, sid) -> np.ndarray:
    """The raw 16-bit values p of a disparity PNG (H×W uint16); an 8-bit file is an error."""
    raw = read_png_raw(path, sid)
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.int32, np.uint32):
        raise DatasetError(f"{path} (sample {sid!r}): expected a 16-bit single-channel disparity PNG, got "
                           f"{raw.dtype} {raw.shape}")
    if raw.dtype != np.uint16:
        if raw.min() < 0 or raw.max() > 65535:
            raise DatasetError(f"{path} (sample {sid!r}): disparity values outside 0..65535")
        raw = raw.astype(np.uint16)
    return raw


def disparity_from_png(p: np.ndarray) -> np.ndarray:
    """d = (p − 1)/256 px for p > 0, 0 where p = 0 (invalid), float32."""
    p = np.asarray(p).astype(np.float64)
    return np.where(p > 0, (p - 1.0) / 256.0, 0.0).astype(np.float32)


def depth_from_disparity(d: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """depth = baseline · fx / d in metres where d > 0, else 0 (invalid), float32."""
    d = np.asarray(d, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(d > 0, baseline * fx / np.where(d > 0, d, 1.0), 0.0).astype(np.float32)


def _resize(arr, hw, nearest: bool):
    import cv2

    h, w = int(hw[0]), int(hw[1])
    if arr.shape[:2] == (h, w):
        return arr
    return cv2.resize(np.ascontiguousarray(arr), (w, h), interpolation=cv2.INTER_NEAREST if nearest
                      else cv2.INTER_LINEAR)


# ---- tasks -----------------------------------------------------------------------------------------------
class CityscapesSemseg(Task):
    """The 19-class semseg task; its prediction files hold labelIds, so they go straight into the official
    evaluator (cityscapesscripts' evalPixelLevelSemanticLabeling) or the benchmark server."""

    def write(self, folder, name, value):
        from utils import visualization as vis

        path = os.path.join(folder, self.name, f"{name}.png")
        return [vis.save_png(path, label_ids(value))]

    def picture(self, value, valid=None, **kw):
        lab = np.asarray(value).astype(np.int64)
        pic = np.zeros(lab.shape + (3,), np.uint8)
        ok = (lab >= 0) & (lab < 19)
        if valid is not None:
            ok &= np.asarray(valid, bool)
        pic[ok] = TRAIN_COLOURS[lab[ok]]
        return pic


class CityscapesDepth(Task):
    """Depth in metres or disparity in pixels (config `depth_target`); written as 16-bit PNGs of value·256
    (the 1/256 steps of the Cityscapes disparity files; 0 = none) plus a colour picture."""

    def write(self, folder, name, value):
        from utils import visualization as vis
        from utils.io import atomic_write

        path = os.path.join(folder, self.name, f"{name}.png")
        q = np.clip(np.rint(np.asarray(value, np.float64) * 256.0), 0, 65535).astype(np.uint16)

        def save(tmp):
            import cv2

            if not cv2.imwrite(tmp, q):
                raise OSError(f"cannot write {path}")

        color = os.path.join(folder, f"{self.name}_color", f"{name}.png")
        return [atomic_write(path, save), vis.save_png(color, vis.depth_to_color(value))]


SEMSEG = register_task(CityscapesSemseg("semseg", "discrete", 19, 19, IGNORE, TRAIN_CLASSES, metric="mIoU",
                                        balances_crop=True), "Cityscapes")
DEPTH = register_task(CityscapesDepth(
    "depth", "continuous", -1, 1, 0, metric="rmse", higher_is_better=False, sample_rule=("clamp", 0.0, DEPTH_MAX),
    scale_divided=False,  # one rule for both targets: random scaling keeps the values (see the docstring)
    loss="losses.task_losses:masked_l1", loss_config=(("ignore_invalid", "ignore_invalid_area_depth"),),
    meter="evaluation.depth:DepthMeter.for_task", postprocess="evaluation.postprocess:depth_values"), "Cityscapes")
register_task(task_info("NYUD", "edge"), "Cityscapes")  # the label map's edges, optional and off by default


# ---- reader ----------------------------------------------------------------------------------------------
class Cityscapes(MultiTaskDataset):
    """One split of Cityscapes with any of semseg, depth, edge.

    root: db_root (the folder containing `cityscapes/`) or the `cityscapes/` folder itself.
    depth_target: 'metres' or 'disparity'. input_size: (H, W) every image is resized to, or None (native).
    eval_resolution: 'label' (labels of non-train splits keep their own size; meta['orig_size']) or 'input'.
    """

    db_name = "Cityscapes"

    def __init__(self, root, split="val", tasks=("semseg", "depth"), transform=None, depth_target="metres",
                 input_size=None, eval_resolution="label"):
        super().__init__(split, tasks, transform)
        from ..common import resolve_dataset_dir

        if depth_target not in DEPTH_TARGETS:
            raise DatasetError(f"Cityscapes: depth_target must be one of {', '.join(DEPTH_TARGETS)}, "
                               f"got {depth_target!r}")
        if eval_resolution not in ("label", "input"):
            raise DatasetError(f"Cityscapes: eval_resolution must be 'label' or 'input', got {eval_resolution!r}")
        self.depth_target, self.eval_resolution = depth_target, eval_resolution
        self.input_size = tuple(int(s) for s in input_size) if input_size else None
        self.root = resolve_dataset_dir(self.db_name, root)
        self.ids = list_split(self.root, split)
        self._check_files()

    def path(self, kind: str, sid: str) -> Path:
        return self.root / FOLDER[kind] / self.split / city_of(sid) / f"{sid}{SUFFIX[kind]}"

    def _check_files(self):
        """Fail at construction (not after an hour of training) when a needed file is missing."""
        kinds = ["image"] + (["semseg"] if {"semseg", "edge"} & set(self.tasks) else []) + \
            (["disparity", "camera"] if "depth" in self.tasks else [])
        listings = {}
        for kind in kinds:
            missing = []
            for sid in self.ids:
                p = self.path(kind, sid)
                names = listings.get(p.parent)
                if names is None:
                    names = listings[p.parent] = set(os.listdir(p.parent)) if p.parent.is_dir() else set()
                if p.name not in names:
                    missing.append(p)
            if missing:
                raise DatasetError(f"Cityscapes: {len(missing)} {kind} file(s) missing for the {self.split} split, "
                                   f"e.g. {missing[0]} (the {FOLDER[kind]}_trainvaltest.zip archive unpacked "
                                   f"into {self.root}?)")

    # labels at which size: the image's (resized) one, or their own ---------------------------------------
    def _labels_follow_image(self) -> bool:
        return self.split == "train" or self.eval_resolution == "input"

    def load_image(self, sid):
        image = read_rgb(self.path("image", sid), sid)
        return _resize(image, self.input_size, nearest=False) if self.input_size else image

    def _fit(self, label, hw):
        """A label at the image size (nearest) when labels follow the image, else at its own size."""
        if self._labels_follow_image():
            return _resize(label, hw, nearest=True)
        return label

    def load_label(self, task, sid, hw):
        if task in ("semseg", "edge"):
            ids = read_png_raw(self.path("semseg", sid), sid)
            if ids.ndim == 3:
                ids = ids[..., 0]
            if task == "semseg":
                return as_hwc(self._fit(train_ids(ids), hw))
            return as_hwc(self._fit(edges_from_labelmap(ids.astype(np.int64)).astype(np.uint8), hw))
        if task == "depth":
            d = disparity_from_png(read_disparity_png(self.path("disparity", sid), sid))
            if self.depth_target == "metres":
                d = depth_from_disparity(d, *read_camera(self.path("camera", sid), sid))
            return as_hwc(self._fit(d, hw))
        return super().load_label(task, sid, hw)

    def load_sample(self, index: int) -> dict:
        sample = super().load_sample(index)
        if not self._labels_follow_image():  # labels kept at full resolution: say so for the evaluator
            shapes = {tuple(v.shape[:2]) for k, v in sample.items() if k in self.tasks}
            if shapes:
                sample["meta"]["orig_size"] = shapes.pop()
        return sample


def list_split(root: Path, split: str) -> list:
    """Ids of a split: every `leftImg8bit/<split>/<city>/*_leftImg8bit.png`, sorted by city then name."""
    base = Path(root) / FOLDER["image"] / split
    if not base.is_dir():
        have = sorted(p.name for p in base.parent.iterdir() if p.is_dir()) if base.parent.is_dir() else []
        raise DatasetError(f"Cityscapes: no {split} split: the folder {base} is missing"
                           + (f"; available: {', '.join(have)}" if have else
                              " (unpack leftImg8bit_trainvaltest.zip there)"))
    ids = []
    for city in sorted(p.name for p in base.iterdir() if p.is_dir()):
        ids += sorted(n[: -len(SUFFIX["image"])] for n in os.listdir(base / city) if n.endswith(SUFFIX["image"]))
    if not ids:
        raise DatasetError(f"Cityscapes: {base} holds no *_leftImg8bit.png images; the split has no samples")
    return ids


# ---- data.verify -----------------------------------------------------------------------------------------
class CityscapesChecks(DatasetChecks):
    """`python -m data.verify --dataset cityscapes`: every image has its labelIds, disparity and camera files
    (pairs complete), the split sizes, and with --deep: 16-bit disparities that decode, camera JSONs with a
    positive baseline and fx, label ids of the official table, every file at its image's size."""

    files = {kind: ((FOLDER[kind],), SUFFIX[kind]) for kind in ("image", "semseg", "disparity", "camera")}

    def split_ids(self, folder, split):
        try:
            return list_split(folder, split)
        except (DatasetError, OSError) as err:
            return Problem("error", "split folder", self.split_place(split), str(err).split(": ", 1)[-1])

    def split_place(self, split):
        return f"{FOLDER['image']}/{split}/"

    def relpath(self, folder, suffix, split, sid):
        return f"{folder}/{split}/{city_of(sid)}/{sid}{suffix}"

    def check_file(self, kind, path, rel, sid, image_hw):
        if kind == "semseg":
            ids = read_png_raw(path, sid)
            if ids.ndim != 2:
                return [Problem("error", "label shape", rel, f"labelIds should be single-channel, got {ids.shape}")]
            return [size_problem(rel, path, sid, ids.shape, image_hw),
                    values_problem(rel, ids, 0, what="label ids", allowed=LABEL_IDS)]
        if kind == "disparity":
            p = read_disparity_png(path, sid)
            out = [size_problem(rel, path, sid, p.shape, image_hw)]
            if not (p > 1).any():
                out.append(Problem("warning", "value range", rel, "no valid disparity (every p <= 1)"))
            return out
        if kind == "camera":
            read_camera(path, sid)
        return []


# ---- synthetic look-alike --------------------------------------------------------------------------------
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}
FX_2048, BASELINE, CAM_HEIGHT = 2262.52, 0.2093, 1.22  # a real camera (aachen), fx at 2048 px width
ID = {name: cs_labels.name2label[name].id for name in (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "road", "sidewalk", "rail track",
    "building", "fence", "pole", "traffic sign", "traffic light", "vegetation", "terrain", "sky", "person", "car",
    "bus")}
COLOUR = {ID["road"]: (128, 64, 128), ID["sidewalk"]: (232, 35, 244), ID["building"]: (70, 70, 70),
          ID["fence"]: (190, 153, 153), ID["pole"]: (153, 153, 153), ID["traffic sign"]: (220, 220, 0),
          ID["traffic light"]: (250, 170, 30), ID["vegetation"]: (107, 142, 35), ID["terrain"]: (152, 251, 152),
          ID["sky"]: (70, 130, 180), ID["person"]: (220, 20, 60), ID["car"]: (0, 0, 142), ID["bus"]: (0, 60, 100),
          ID["rail track"]: (230, 150, 140), ID["static"]: (110, 190, 160), ID["ego vehicle"]: (30, 30, 30),
          ID["rectification border"]: (0, 0, 0), ID["out of roi"]: (0, 0, 0), ID["unlabeled"]: (0, 0, 0)}


def _render_street(rng, h, w, idx):
    """A ray-cast street: road and sidewalks on the ground plane, building fronts on both sides and at the
    end, cars, buses, persons, poles with signs or lights, trees, a rail track or terrain patch, sky, and the
    void ids of real frames (ego vehicle, rectification border, out of roi, static)."""
    fx = FX_2048 * w / 2048.0 * rng.uniform(0.98, 1.02)
    baseline = BASELINE * rng.uniform(0.99, 1.06)
    u0, v0 = w / 2.0 + rng.uniform(-2, 2), h / 2.0 + rng.uniform(-2, 2)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    dx, dy = (u - u0) / fx, (v - v0) / fx  # ray (dx, dy, 1): y points down, the ground is y = CAM_HEIGHT
    depth = np.full((h, w), np.inf)
    label = np.full((h, w), ID["sky"], np.uint8)

    def commit(z, lab):
        z = np.where(np.isfinite(z) & (z > 0.5), z, np.inf)
        closer = z < depth
        depth[closer] = z[closer]
        label[closer] = lab[closer] if np.ndim(lab) else lab

    road_half = rng.uniform(3.5, 6.0)
    walk = rng.uniform(2.0, 4.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        zg = np.where(dy > 0, CAM_HEIGHT / dy, np.inf)
        xg = dx * zg
        ground = np.where(np.abs(xg) < road_half, ID["road"], ID["sidewalk"]).astype(np.uint8)
        if idx % 4 == 2:  # a rail track in the road (raw id 10: ignored, not the sky)
            ground[(np.abs(xg - rng.uniform(-1, 1)) < 0.8) & (zg < 60)] = ID["rail track"]
        elif idx % 4 == 3:
            ground[(np.abs(xg) > road_half + walk * 0.6)] = ID["terrain"]
        commit(zg, ground)
        for side in (-1, 1):  # building fronts at x = ±(road + walk): blocks of their own heights, sky between
            xb = side * (road_half + walk + rng.uniform(0, 2))
            zb = np.where(dx * side > 0, xb / dx, np.inf)
            yb = dy * zb
            z0 = rng.uniform(0, 6)
            while z0 < 90:
                z1 = z0 + rng.uniform(10, 30)
                top = CAM_HEIGHT - rng.uniform(4, 14)  # roof height (y points down)
                commit(np.where((yb > top) & (yb < CAM_HEIGHT) & (zb > z0) & (zb < z1), zb, np.inf), ID["building"])
                z0 = z1 + rng.uniform(0, 8)
        zend = rng.uniform(60, 120)
        half = rng.uniform(5, 25)
        commit(np.where((np.abs(dx * zend) < half) & (dy * zend > CAM_HEIGHT - rng.uniform(3, 12)),
                        np.full((h, w), zend), np.inf), ID["building"])

        def box(x0, x1, y0, y1, z, lab):
            xs, ys = dx * z, dy * z
            commit(np.where((xs > x0) & (xs < x1) & (ys > y0) & (ys < y1), z, np.inf), lab)

        for _ in range(int(rng.integers(1, 4))):  # cars (and now and then a bus) on the road
            z = rng.uniform(6, 40)
            x = rng.uniform(-road_half + 1, road_half - 1)
            bus = rng.random() < 0.2
            wd, ht = (2.5, 3.2) if bus else (1.8, 1.5)
            box(x - wd / 2, x + wd / 2, CAM_HEIGHT - ht, CAM_HEIGHT, z, ID["bus" if bus else "car"])
        for _ in range(int(rng.integers(1, 4))):  # persons on the sidewalks
            z = rng.uniform(5, 30)
            x = rng.choice([-1, 1]) * rng.uniform(road_half + 0.3, road_half + walk - 0.3)
            box(x - 0.25, x + 0.25, CAM_HEIGHT - 1.75, CAM_HEIGHT, z, ID["person"])
        for _ in range(int(rng.integers(1, 3))):  # poles with a sign or a light
            z = rng.uniform(8, 35)
            x = rng.choice([-1, 1]) * (road_half + 0.4)
            box(x - 0.08, x + 0.08, CAM_HEIGHT - 4.0, CAM_HEIGHT, z, ID["pole"])
            box(x - 0.4, x + 0.4, CAM_HEIGHT - 4.4, CAM_HEIGHT - 3.6, z - 0.05,
                ID["traffic sign"] if rng.random() < 0.6 else ID["traffic light"])
        for _ in range(int(rng.integers(0, 3))):  # trees: round crowns on the sidewalk
            z = rng.uniform(10, 45)
            x = rng.choice([-1, 1]) * (road_half + walk * 0.5)
            r = rng.uniform(1.5, 3.0)
            cy = CAM_HEIGHT - 3.0 - r
            xs, ys = dx * z, dy * z
            commit(np.where((xs - x) ** 2 + (ys - cy) ** 2 < r * r, z, np.inf), ID["vegetation"])
        if rng.random() < 0.5:  # a fence along one sidewalk
            side = rng.choice([-1, 1])
            xf = side * (road_half + walk - 0.2)
            zf = np.where(dx * side > 0, xf / dx, np.inf)
            commit(np.where((dy * zf > CAM_HEIGHT - 1.1) & (dy * zf < CAM_HEIGHT), zf, np.inf), ID["fence"])

    sky = ~np.isfinite(depth)
    seg = label.copy()
    # void ids of real frames: ego vehicle (bonnet), rectification border, out of roi corners, static blobs
    hood = v > h * (1 - rng.uniform(0.06, 0.1)) + 0.02 * h * np.cos((u - u0) / w * 3)
    seg[hood] = ID["ego vehicle"]
    border = max(1, w // 128)
    seg[:, :border] = ID["rectification border"]
    seg[:, -border:] = ID["rectification border"]
    seg[(v > h - 2 * border) & ((u < w * 0.1) | (u > w * 0.9))] = ID["out of roi"]
    for _ in range(int(rng.integers(1, 3))):
        cy, cx, r = rng.uniform(h * 0.4, h * 0.8), rng.uniform(0, w), rng.uniform(1.5, 4)
        seg[(v - cy) ** 2 + (u - cx) ** 2 < r * r] = ID["static"]

    disparity = np.where(sky, 0.0, baseline * fx / np.where(sky, 1.0, depth))
    p = np.where(sky | hood, 0, np.rint(disparity * 256.0 + 1.0)).astype(np.int64)
    for _ in range(int(rng.integers(2, 5))):  # stereo holes (p = 0)
        cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.5, 4), rng.uniform(2, 8)
        p[((v - cy) / ry) ** 2 + ((u - cx) / rx) ** 2 < 1] = 0
    p = np.clip(p, 0, 65535).astype(np.uint16)

    albedo = np.zeros((h, w, 3))
    for lab, colour in COLOUR.items():
        albedo[seg == lab] = colour
    texture = 0.85 + 0.15 * np.sign(np.sin(u * 0.7 + (seg % 5) * v * 0.3))
    fog = np.where(sky, 1.0, np.exp(-np.where(sky, 0, depth) / 150.0))[..., None]
    image = albedo * texture[..., None] * fog + (1 - fog) * 200 + rng.normal(0, 4.0, (h, w, 3))
    camera = {"extrinsic": {"baseline": round(float(baseline), 6), "pitch": 0.0, "roll": 0.0, "x": 1.7, "y": 0.1,
                            "yaw": 0.0, "z": CAM_HEIGHT},
              "intrinsic": {"fx": round(float(fx), 4), "fy": round(float(fx), 4), "u0": round(float(u0), 4),
                            "v0": round(float(v0), 4)}}
    return {"image": np.clip(image, 0, 255).astype(np.uint8), "labelIds": seg, "disparity_png": p,
            "camera": camera, "depth": np.where(sky, 0.0, depth).astype(np.float32)}


class CityscapesSynthetic(SyntheticWriter):
    """Synthetic Cityscapes in the exact layout: cities, file names, 16-bit disparity, camera JSON with a
    realistic baseline and an fx scaled to the image width, labelIds in the real id space with void ids."""

    name, db_name, stream = "cityscapes", "Cityscapes", 2
    default_size = (128, 256)
    description = "Cityscapes-style streets: labelIds with voids, 16-bit disparity, camera JSON, real file names"

    def sample_id(self, idx, split="train"):
        cities = CITIES.get(split, CITIES["train"])
        return f"{cities[idx % len(cities)]}_{idx:06d}_000019"

    def sample_index(self, sid):
        return int(sid.rsplit("_", 2)[1])

    def render(self, rng, h, w, idx):
        return _render_street(rng, h, w, idx)

    def write(self, root, split, sid, scene):
        import cv2
        from PIL import Image

        def target(kind):
            path = root / FOLDER[kind] / split / city_of(sid) / f"{sid}{SUFFIX[kind]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            return path

        Image.fromarray(scene["image"]).save(target("image"))
        Image.fromarray(scene["labelIds"]).save(target("semseg"))
        if not cv2.imwrite(str(target("disparity")), scene["disparity_png"]):
            raise OSError(f"cannot write {target('disparity')}")
        target("camera").write_text(json.dumps(scene["camera"], indent=2) + "\n")

    def write_splits(self, root, ids_by_split, scenes_by_split):
        """Nothing to write: a Cityscapes split is its folder."""


# ---- the spec --------------------------------------------------------------------------------------------
SPEC = register_dataset(DatasetSpec(
    name="Cityscapes", folder="cityscapes", reader=Cityscapes, crop_size=(512, 1024),
    split_sizes={"train": 2975, "val": 500},
    description="Cityscapes (official layout): semseg (19 classes) and depth from disparity; optional edge",
    download=("Register at https://www.cityscapes-dataset.com/, download leftImg8bit_trainvaltest.zip, "
              "gtFine_trainvaltest.zip, disparity_trainvaltest.zip and camera_trainvaltest.zip, and unzip all "
              "four into <root>/cityscapes/ (or install them with data.download --archive, below)."),
    layout="""\
<db_root>/cityscapes/
    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png     RGB input
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      official label ids
    disparity/{train,val}/<city>/<city>_<seq>_<frame>_disparity.png         16-bit, (p - 1)/256 px, 0 invalid
    camera/{train,val}/<city>/<city>_<seq>_<frame>_camera.json              baseline, fx""",
    synthetic="cityscapes",
    reader_config=(("depth_target", "depth_target"), ("input_size", "input_size"),
                   ("eval_resolution", "eval_resolution")),
    archives=tuple(Archive(f"{what}_trainvaltest.zip", (), desc) for what, desc in (
        ("leftImg8bit", "left 8-bit images, 11 GB"), ("gtFine", "fine annotations, 241 MB"),
        ("disparity", "16-bit disparity maps, 3.5 GB"), ("camera", "camera calibration JSONs, 2 MB"))),
    login_hint=("they need a (free) account: log in at https://www.cityscapes-dataset.com/downloads/ and download "
                "them, or use the official downloader of the cityscapesscripts package (installed with this "
                "framework): `csDownload leftImg8bit_trainvaltest.zip gtFine_trainvaltest.zip "
                "disparity_trainvaltest.zip camera_trainvaltest.zip` (it asks for the account)."),
    checks=CityscapesChecks(), synthesizer=CityscapesSynthetic(),
))
