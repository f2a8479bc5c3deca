"""PASCAL-Context as prepared by ATRC (`<db_root>/PASCALContext/`, docs/method.md#pascal-context-labels): everything
the framework knows about it, in one module: its DatasetSpec (registered on import), the reader and its
label decoding, the download facts, the per-file checks of `python -m data.verify` and the synthetic
look-alike of `python -m data.synthetic --dataset pascal`.

Decoding per task:
  semseg       semseg/VOC12/<id>.png, else semseg/pascal-context/<id>.png; values 0..20, 255 ignore.
  human_parts  human_parts/<id>.mat (PASCAL-Part `anno` struct), person parts grouped into 6 parts.
  sal          sal_distill/<id>.png / 255 > 0.5.
  normals      normals_distill/<id>.png, 2v/255 − 1, zeroed where the LabelMap class is not normals-valid.
  edge         LabelMap of pascal-context/trainval/<id>.mat → 3×3 Laplacian ≠ 0 → thinning.

Caching (why: the original re-read and re-thinned the .mat on every sample, docs/method.md#dataset-caches), all under a
cache folder OUTSIDE the dataset (`cache_dir` > $TASKDIFFUSION_CACHE > ~/.cache/taskdiffusion; the
dataset may be read-only) in `<cache>/PASCALContext-<hash of the dataset path>/`:
  parts_index_<split>.json   image id → object class list (the part index); rebuilt when the split's ids
                             or the .mat files' sizes/mtimes change. Not needed when the dataset ships
                             the index: ImageSets/Parts/<split>.txt (JSON {id: [class_ind or −1, ...]},
                             written by the original code) is used when it covers the split's ids and
                             is not older than any of their human_parts .mat files.
  labelmap/<id>.npz          edge map and normals-valid mask (bit-packed), computed on first use.
  parts/<id>.npz             the 6-group human-part map of images that have parts, on first use.
In memory, only the last sample's LabelMap products are kept (edge and normals both need them).

Synthetic scenes (default 128×128; every 4th image is 8 px shorter, every 4th+1 is 8 px narrower, to
exercise padding): a background of two or three "stuff" regions (some of them normals-valid
PASCAL-Context classes, some not) and 1–4 objects of six VOC classes (person, car, cat, bottle,
tvmonitor, sofa), each with its own shape, colour and texture, placed on the ground plane and drawn back
to front. Persons are built from PASCAL-Part parts with part-dependent colours; a few persons carry no
part annotation; every third image (idx % 3 == 0) has a person, the next one none. Normals come from the
geometry, the image is shaded with them, saliency marks the objects, the LabelMap carries PASCAL-Context
ids from which the reader derives edges and the normals mask. Like the real tarball, the set also holds
the part index `ImageSets/Parts/{train,val}.txt` (see `part_index_text`), written after the human_parts
.mat files it describes.
Each npz stores the (size, mtime) of its source .mat and is recomputed when that changes. Files are
written atomically, so DataLoader workers and ranks may fill the cache concurrently. With
`disk_cache=False` (or an unwritable cache folder) the same values are computed on every read.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from utils.io import atomic_write

from ..base import MultiTaskDataset
from ..checks import DatasetChecks, Problem, size_problem, values_problem
from ..common import (
    DatasetError,
    as_hwc,
    atomic_save_npz,
    check_files_exist,
    dataset_cache_dir,
    decode_normals,
    default_cache_root,
    exclusive_lock,
    file_stamp,
    fit_to_image,
    load_mat,
    read_rgb,
    read_rgb_png,
    read_single_channel,
    read_split,
    resolve_dataset_dir,
)
from ..synthetic_base import SyntheticWriter, encode_normals, unit
from ..registry import Archive, DatasetSpec, register_dataset

HUMAN_PARTS_CATEGORY = 15  # VOC "person"
PART_AREA_THRES = 0  # an object counts in the part index only if its mask area exceeds this

# PASCAL-Part fine part names → the 6 groups used for training (docs/method.md#human-parts); 0 is background.
HUMAN_PART_GROUPS = {
    **{n: 1 for n in ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose")},
    **{n: 2 for n in ("neck", "torso")},
    **{n: 3 for n in ("luarm", "ruarm")},
    **{n: 4 for n in ("llarm", "rlarm", "lhand", "rhand")},
    **{n: 5 for n in ("luleg", "ruleg")},
    **{n: 6 for n in ("llleg", "rlleg", "lfoot", "rfoot")},
}

# PASCAL-Context ids (1..459) on which the distilled normals are trusted (docs/method.md#pascal-context-surface-normals). Derived by the
# original as: every class name of NYU's 894-class list (`nyu_classes.json`) that is also a key of
# `context_classes.json`, except 'unknown', mapped to its PASCAL-Context id, plus tvmonitor (427).
# The two JSON files are not shipped with the tarball, so the resulting 170 ids are fixed here.
NORMALS_VALID_IDS = np.array(
    [3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51,
     53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107,
     111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183,
     184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239,
     242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287,
     288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345,
     349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408,
     411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457],
    dtype=np.int64,
)
assert NORMALS_VALID_IDS.size == 170

# PASCAL-Context id of each VOC class 0..20 (docs/method.md#tasks-classes-and-outputs; the reader does not need it, the generator does).
VOC_CONTEXT_IDS = (0, 2, 23, 25, 31, 34, 45, 59, 65, 72, 98, 397, 113, 207, 258, 284, 308, 347, 368, 416, 427)

CACHE_VERSION = 1


def edges_from_labelmap(label_map: np.ndarray) -> np.ndarray:
    """Boundary map of a label map (docs/method.md#pascal-context-boundaries): 3×3 Laplacian (float64, reflect-101) ≠ 0, then thinning."""
    import cv2
    from skimage.morphology import thin

    lap = cv2.Laplacian(np.ascontiguousarray(label_map, dtype=np.float64), cv2.CV_64F)
    return thin(lap != 0)


def normals_valid_mask(label_map: np.ndarray) -> np.ndarray:
    """True where the context class is one of the 170 normals-valid ids."""
    return np.isin(label_map, NORMALS_VALID_IDS)


def _scalar(x):
    """The single value inside MATLAB's nested 1×1 arrays (`[[15]]` → 15, `['head']` → 'head')."""
    a = np.asarray(x)
    while a.dtype == object and a.size == 1:
        a = np.asarray(a.reshape(-1)[0])
    return a.reshape(-1)[0].item() if a.size else None


def _objects(anno, path, sid):
    """The object records `anno[0][0][1][0]` of a PASCAL-Part struct (class, class_ind, mask, parts)."""
    try:
        return list(anno[0][0][1][0])
    except (IndexError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{path} (sample {sid!r}): not a PASCAL-Part `anno` struct (anno[0][0][1][0] should be the "
            f"objects array): {err}"
        ) from err


def part_index_entry(anno, path, sid) -> list:
    """Class index of every object whose mask area exceeds the threshold, else −1 (docs/method.md#human-parts)."""
    out = []
    for obj in _objects(anno, path, sid):
        try:
            cls = int(_scalar(obj[1]))
            area = int(np.asarray(obj[2]).sum())
        except (IndexError, TypeError, ValueError) as err:
            raise DatasetError(f"{path} (sample {sid!r}): malformed object record: {err}") from err
        out.append(cls if area > PART_AREA_THRES else -1)
    return out


def human_parts_from_anno(anno, path, sid) -> np.ndarray | None:
    """6-group part map (uint8) of a PASCAL-Part struct, or None when no person has part annotations.

    Persons are written in file order and parts in list order, later ones overwriting earlier ones;
    pixels outside every part (including all non-person pixels) stay 0.
    """
    target = None
    for obj in _objects(anno, path, sid):
        try:
            cls = int(_scalar(obj[1]))
            parts = np.asarray(obj[3])
            if cls != HUMAN_PARTS_CATEGORY or len(parts) == 0 or parts.size == 0:
                continue
            if target is None:
                target = np.zeros(np.asarray(obj[2]).shape[:2], dtype=np.uint8)
            for part in parts[0]:
                name = str(_scalar(part[0]))
                if name not in HUMAN_PART_GROUPS:
                    raise DatasetError(
                        f"{path} (sample {sid!r}): unknown person part name {name!r}; "
                        f"known: {', '.join(sorted(HUMAN_PART_GROUPS))}"
                    )
                mask = np.asarray(part[1]).astype(bool)
                if mask.shape != target.shape:
                    raise DatasetError(
                        f"{path} (sample {sid!r}): part mask {name!r} is {mask.shape}, the person mask {target.shape}"
                    )
                target[mask] = HUMAN_PART_GROUPS[name]
        except (IndexError, TypeError, ValueError) as err:
            raise DatasetError(f"{path} (sample {sid!r}): malformed object/part record: {err}") from err
    return target


def parse_part_index(text: str, ids) -> dict | None:
    """{id: [class or −1, ...]} for `ids` (in that order) from the JSON text of a part index file, or
    None when the text is no such object or lacks one of the ids.

    Why strict: a wrong index silently drops or invents human-part labels, so anything but a JSON
    object of integer lists sends the reader back to scanning the .mat files.
    """
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    out = {}
    for sid in ids:
        classes = raw.get(sid)
        if not isinstance(classes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
            return None
        out[sid] = [int(c) for c in classes]
    return out


class PASCALContext(MultiTaskDataset):
    """One split of PASCAL-Context with any of semseg, human_parts, sal, normals, edge.

    root: db_root (the folder containing `PASCALContext/`) or the `PASCALContext/` folder itself.
    """

    db_name = "PASCALContext"

    def __init__(self, root, split="val", tasks=("semseg", "human_parts", "sal", "normals", "edge"),
                 transform=None, cache_dir=None, disk_cache=True, progress=True):
        super().__init__(split, tasks, transform)
        self.root = resolve_dataset_dir(self.db_name, root)
        self.ids = read_split(self.root / "ImageSets" / "Context" / f"{split}.txt", self.db_name)
        self.disk_cache = disk_cache
        self.cache = dataset_cache_dir(default_cache_root(cache_dir), self.db_name, self.root)
        self._progress = progress
        self._last_labelmap = (None, None)
        self._check_files()
        self.part_index = self._load_part_index() if "human_parts" in self.tasks else {}
        self.has_parts = {sid: HUMAN_PARTS_CATEGORY in cl for sid, cl in self.part_index.items()}

    # paths ----------------------------------------------------------------------------------------
    def image_path(self, sid):
        return self.root / "JPEGImages" / f"{sid}.jpg"

    def labelmap_path(self, sid):
        return self.root / "pascal-context" / "trainval" / f"{sid}.mat"

    def parts_path(self, sid):
        return self.root / "human_parts" / f"{sid}.mat"

    def _check_files(self):
        """Fail at construction (not after an hour of training) when a needed file is missing."""
        r, ids = self.root, self.ids
        check_files_exist(self.db_name, r / "JPEGImages", ids, ".jpg", "image")
        if "semseg" in self.tasks:
            voc = set(os.listdir(r / "semseg" / "VOC12")) if (r / "semseg" / "VOC12").is_dir() else set()
            ctx_dir = r / "semseg" / "pascal-context"
            ctx = set(os.listdir(ctx_dir)) if ctx_dir.is_dir() else set()
            self.semseg_paths, missing = {}, []
            for sid in ids:
                name = f"{sid}.png"
                if name in voc:
                    self.semseg_paths[sid] = r / "semseg" / "VOC12" / name
                elif name in ctx:
                    self.semseg_paths[sid] = ctx_dir / name
                else:
                    missing.append(sid)
            if missing:
                raise DatasetError(
                    f"{self.db_name}: no semseg label for {len(missing)} image(s), e.g. sample {missing[0]!r}: "
                    f"looked for {r / 'semseg' / 'VOC12' / (missing[0] + '.png')} and {ctx_dir / (missing[0] + '.png')}"
                )
        if "edge" in self.tasks or "normals" in self.tasks:
            check_files_exist(self.db_name, r / "pascal-context" / "trainval", ids, ".mat", "context label map")
        if "human_parts" in self.tasks:
            check_files_exist(self.db_name, r / "human_parts", ids, ".mat", "human parts")
        if "normals" in self.tasks:
            check_files_exist(self.db_name, r / "normals_distill", ids, ".png", "normals")
        if "sal" in self.tasks:
            check_files_exist(self.db_name, r / "sal_distill", ids, ".png", "saliency")

    # part index -----------------------------------------------------------------------------------
    def _parts_fingerprint(self) -> str:
        h = hashlib.sha1()
        for sid in self.ids:
            h.update(f"{sid}:{file_stamp(self.parts_path(sid))};".encode())
        return h.hexdigest()

    def shipped_part_index_path(self) -> Path:
        """Where the tarball keeps the original code's part index of this split (may be absent)."""
        return self.root / "ImageSets" / "Parts" / f"{self.split}.txt"

    def _load_part_index(self) -> dict:
        """image id → object classes: the dataset's shipped index when usable, else the cache folder's,
        else built once (one .mat read per image)."""
        shipped = self._read_shipped_part_index()
        if shipped is not None:
            return shipped
        want = set(self.ids)
        fingerprint = self._parts_fingerprint()
        path = self.cache / f"parts_index_{self.split}.json"
        index = self._read_part_cache(path, fingerprint, want)
        if index is not None:
            return index
        # one builder: other ranks/processes wait here, then find its file
        with exclusive_lock(self.cache / f".parts_index_{self.split}.lock"):
            index = self._read_part_cache(path, fingerprint, want)
            if index is not None:
                return index
            index = self._build_part_index()
            blob = json.dumps({"version": CACHE_VERSION, "fingerprint": fingerprint, "index": index})
            try:
                atomic_write(path, lambda tmp: Path(tmp).write_text(blob))
            except OSError:
                pass  # read-only cache location: keep the index in memory only
        return index

    def _read_shipped_part_index(self) -> dict | None:
        """The split's entries of `ImageSets/Parts/<split>.txt`, in split order, or None when unusable.

        Why: the tarball ships the index the original code built, and reading it spares opening every
        human_parts .mat file (minutes on the real train split). It is ignored, and the index is scanned
        instead, when it is missing, malformed, lacks an id of the split, or is older than one of the
        split's .mat files (then it may describe other annotations than those on disk). Extra ids are
        fine (e.g. a shortened split file): only the split's entries are kept.
        """
        path = self.shipped_part_index_path()
        try:
            written = os.stat(path).st_mtime_ns
            index = parse_part_index(path.read_text(), self.ids)
            if index is None or any(file_stamp(self.parts_path(sid))[1] > written for sid in self.ids):
                return None
        except (OSError, ValueError):
            return None
        return index

    @staticmethod
    def _read_part_cache(path, fingerprint: str, want: set) -> dict | None:
        if not path.is_file():
            return None
        try:
            blob = json.loads(path.read_text())
            if blob.get("fingerprint") == fingerprint and set(blob["index"]) == want:
                return blob["index"]
        except (ValueError, OSError, KeyError, TypeError):
            pass
        return None

    def _build_part_index(self) -> dict:
        index = {}
        it = self.ids
        if self._progress and len(self.ids) > 200:
            from tqdm import tqdm

            it = tqdm(self.ids, desc=f"PASCALContext/{self.split}: indexing human parts (once)", unit="img")
        for sid in it:
            p = self.parts_path(sid)
            index[sid] = part_index_entry(load_mat(p, sid, "anno"), p, sid)
        return index

    # per-sample derived maps (cached) -------------------------------------------------------------
    def _labelmap_products(self, sid):
        """(edge bool H×W, normals-valid bool H×W) from the LabelMap, via the disk cache.

        The last result is also kept in memory: edge and normals of one sample need it twice in a row.
        """
        stamp = file_stamp(self.labelmap_path(sid))
        if self._last_labelmap[0] == (sid, stamp):
            return self._last_labelmap[1]
        out = self._labelmap_products_uncached(sid, stamp)
        self._last_labelmap = ((sid, stamp), out)
        return out

    def _labelmap_products_uncached(self, sid, stamp):
        src = self.labelmap_path(sid)
        cpath = self.cache / "labelmap" / f"{sid}.npz"
        if self.disk_cache and cpath.is_file():
            try:
                with np.load(cpath) as z:
                    if list(z["stamp"]) == stamp and int(z["version"]) == CACHE_VERSION:
                        h, w = (int(v) for v in z["shape"])
                        edge = np.unpackbits(z["edge"], count=h * w).reshape(h, w).astype(bool)
                        valid = np.unpackbits(z["valid"], count=h * w).reshape(h, w).astype(bool)
                        return edge, valid
            except Exception:  # noqa: BLE001 - a broken cache entry is just recomputed
                pass
        label_map = load_mat(src, sid, "LabelMap")
        if label_map.ndim != 2:
            raise DatasetError(f"{src} (sample {sid!r}): LabelMap should be 2-D, got shape {label_map.shape}")
        edge, valid = edges_from_labelmap(label_map), normals_valid_mask(label_map)
        if self.disk_cache:
            atomic_save_npz(cpath, edge=np.packbits(edge), valid=np.packbits(valid),
                            shape=np.array(edge.shape), stamp=np.array(stamp), version=np.array(CACHE_VERSION))
        return edge, valid

    def _human_parts(self, sid) -> np.ndarray | None:
        if not self.has_parts.get(sid, False):
            return None
        src = self.parts_path(sid)
        cpath = self.cache / "parts" / f"{sid}.npz"
        stamp = file_stamp(src)
        if self.disk_cache and cpath.is_file():
            try:
                with np.load(cpath) as z:
                    if list(z["stamp"]) == stamp and int(z["version"]) == CACHE_VERSION:
                        return z["parts"] if bool(z["has"]) else None
            except Exception:  # noqa: BLE001
                pass
        parts = human_parts_from_anno(load_mat(src, sid, "anno"), src, sid)
        if self.disk_cache:
            atomic_save_npz(cpath, parts=parts if parts is not None else np.zeros((0, 0), np.uint8),
                            has=np.array(parts is not None), stamp=np.array(stamp), version=np.array(CACHE_VERSION))
        return parts

    # sample assembly ------------------------------------------------------------------------------
    def load_image(self, sid):
        return read_rgb(self.image_path(sid), sid)

    def load_label(self, task, sid, hw):
        if task == "semseg":
            p = self.semseg_paths[sid]
            return fit_to_image(as_hwc(read_single_channel(p, sid)), hw, p, sid)
        if task == "sal":
            p = self.root / "sal_distill" / f"{sid}.png"
            sal = (read_single_channel(p, sid).astype(np.float32) / 255.0 > 0.5).astype(np.float32)
            return fit_to_image(as_hwc(sal), hw, p, sid)
        if task == "edge":
            edge, _ = self._labelmap_products(sid)
            return fit_to_image(as_hwc(edge), hw, self.labelmap_path(sid), sid)
        if task == "normals":
            p = self.root / "normals_distill" / f"{sid}.png"
            normals = fit_to_image(decode_normals(read_rgb_png(p, sid)), hw, p, sid, cubic=True)
            _, valid = self._labelmap_products(sid)
            valid = fit_to_image(valid.astype(np.uint8), hw, self.labelmap_path(sid), sid).astype(bool)
            normals[~valid] = 0.0
            return normals
        if task == "human_parts":
            parts = self._human_parts(sid)
            if parts is None:  # no annotated person: all background, turned into ignore by AddIgnoreRegions
                return np.zeros((int(hw[0]), int(hw[1]), 1), dtype=np.float32)
            return fit_to_image(as_hwc(parts), hw, self.parts_path(sid), sid)
        return super().load_label(task, sid, hw)

    def summary(self) -> str:
        s = super().summary()
        if self.has_parts:
            s += f"; {sum(self.has_parts.values())} with human parts"
        return s


# --------------------------------------------------------------------------------------------------
# synthetic PASCAL-style scenes (python -m data.synthetic --dataset pascal)

# PASCAL-Context stand-in "stuff" ids: (context id, normals-valid?, base colour, texture). Names do not
# matter to the reader, only whether the id is in the 170 normals-valid ids.
STUFF_UPPER = [(7, (110, 160, 230), "gradient"), (440, (200, 185, 150), "vstripes")]  # sky-like / wall-like
STUFF_LOWER = [(8, (70, 150, 60), "noise"), (9, (140, 95, 55), "planks")]  # grass-like / floor-like
STUFF_BLOCK = (18, (150, 150, 160), "windows")  # a building-like block in the background
VOC_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
             "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
             "train", "tvmonitor")
PERSON, CAR, CAT, BOTTLE, TV, SOFA = 15, 7, 8, 5, 20, 18
OBJECT_CLASSES = (PERSON, CAR, CAT, BOTTLE, TV, SOFA)
OBJECT_PROBS = (0.3, 0.14, 0.14, 0.14, 0.14, 0.14)
GROUND_NORMAL = unit([0.0, 0.9, 0.44])
FACING = np.array([0.0, 0.0, 1.0], np.float32)
LIGHT = unit([-0.4, 0.6, 0.7])
SHIRTS = ((200, 40, 40), (40, 90, 200), (230, 200, 40), (40, 170, 90), (240, 240, 240))
SKIN, HAIR, PANTS, SHOES = (225, 180, 150), (60, 40, 25), (40, 45, 80), (20, 20, 20)


class _Canvas:
    """Pixel grids of one image and helpers that rasterise primitives with their normals."""

    def __init__(self, h, w):
        self.h, self.w = h, w
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5

    def const_normals(self, n):
        return np.broadcast_to(np.asarray(n, np.float32), (self.h, self.w, 3)).copy()

    def box(self, y0, y1, x0, x1):
        return (self.yy >= y0) & (self.yy < y1) & (self.xx >= x0) & (self.xx < x1)

    def ellipse(self, cy, cx, ry, rx):
        """mask and ellipsoid normals (x right, y up, z toward the camera)."""
        u, v = (self.xx - cx) / rx, (self.yy - cy) / ry
        r2 = u * u + v * v
        mask = r2 < 1.0
        n = np.stack([u, -v, np.sqrt(np.clip(1.0 - r2, 0, 1))], -1)
        return mask, unit(n)

    def capsule(self, p0, p1, r):
        """mask and cylinder normals of the segment p0→p1 ((y, x) points) thickened by r."""
        (y0, x0), (y1, x1) = p0, p1
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((self.yy - y0) * dy + (self.xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
        oy, ox = self.yy - (y0 + t * dy), self.xx - (x0 + t * dx)
        d2 = (oy * oy + ox * ox) / (r * r)
        mask = d2 < 1.0
        n = np.stack([ox / r, -oy / r, np.sqrt(np.clip(1.0 - d2, 0, 1))], -1)
        return mask, unit(n)

    def triangle(self, a, b, c):
        def side(p, q):
            return (self.xx - p[1]) * (q[0] - p[0]) - (self.yy - p[0]) * (q[1] - p[1])

        s1, s2, s3 = side(a, b), side(b, c), side(c, a)
        return ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))


def _texture(cv: _Canvas, kind: str, rng, scale=1.0):
    """Multiplicative texture in ~[0.6, 1.2] that tells classes apart."""
    yy, xx = cv.yy, cv.xx
    if kind == "hstripes":
        return 0.85 + 0.15 * np.sign(np.sin(yy * 0.9 / scale))
    if kind == "vstripes":
        return 0.9 + 0.1 * np.sign(np.sin(xx * 0.5 + rng.uniform(0, 6)))
    if kind == "checker":
        return 0.8 + 0.2 * ((np.floor(yy / 4) + np.floor(xx / 4)) % 2)
    if kind == "dots":
        return 1.0 - 0.35 * (np.sin(yy * 1.3) * np.sin(xx * 1.3) > 0.6)
    if kind == "planks":
        return 0.85 + 0.15 * ((np.floor(yy / 5) % 2) * 0.6 + 0.4 * np.sin(xx * 0.15 + np.floor(yy / 5) * 3))
    if kind == "gradient":
        return 0.8 + 0.35 * (1.0 - yy / cv.h)
    if kind == "windows":
        return 0.75 + 0.35 * ((yy % 10 < 5) & (xx % 10 < 5))
    if kind == "scanlines":
        return 0.9 + 0.1 * np.sign(np.sin(yy * 2.0))
    return np.ones_like(yy) * (0.9 + 0.1 * rng.standard_normal(yy.shape).clip(-2, 2))


class _Obj:
    """One object instance: class, visible-to-be mask, normals, albedo and (persons) part label map."""

    def __init__(self, cls, mask, normals, albedo, parts=None, part_names=None, annotate_parts=True):
        self.cls, self.mask, self.normals, self.albedo = cls, mask, normals, albedo
        self.parts, self.part_names, self.annotate_parts = parts, part_names, annotate_parts


def _paint(dst_mask, dst_n, dst_a, mask, normals, colour, tex):
    dst_mask |= mask
    dst_n[mask] = normals[mask] if normals.ndim == 3 else normals
    dst_a[mask] = (np.asarray(colour, np.float32)[None] * tex[mask][:, None])


def _person(cv, rng, foot_y, cx, height):
    """A standing person from PASCAL-Part parts (painted in order; later parts cover earlier ones)."""
    h, w = cv.h, cv.w
    mask = np.zeros((h, w), bool)
    normals = np.zeros((h, w, 3), np.float32)
    albedo = np.zeros((h, w, 3), np.float32)
    partmap = np.zeros((h, w), np.uint8)
    names = []
    u = height / 8.0  # a head height
    shirt = SHIRTS[rng.integers(len(SHIRTS))]
    hip_y, shoulder_y, knee_y = foot_y - 4 * u, foot_y - 6.6 * u, foot_y - 2 * u
    lw = max(0.45 * u, 1.2)  # limb radius
    arm = rng.uniform(-0.5, 0.5)  # arm swing

    def add(name, m, n, colour):
        names.append(name)
        _paint(mask, normals, albedo, m, n, colour, np.ones((h, w), np.float32))
        partmap[m] = len(names)

    for side, sx in (("l", -1), ("r", 1)):
        hx = cx + sx * 0.6 * u
        kx = hx + sx * rng.uniform(0, 0.3) * u
        add(f"{side}uleg", *cv.capsule((hip_y, hx), (knee_y, kx), lw * 1.15), PANTS)
        add(f"{side}lleg", *cv.capsule((knee_y, kx), (foot_y - 0.35 * u, kx), lw), PANTS)
        add(f"{side}foot", *cv.capsule((foot_y - 0.2 * u, kx), (foot_y - 0.2 * u, kx + sx * 0.5 * u), 0.3 * u), SHOES)
    torso = cv.box(shoulder_y, hip_y + 0.3 * u, cx - 1.1 * u, cx + 1.1 * u)
    tn = cv.const_normals(FACING)  # a slightly rounded chest
    tn[..., 0] = np.clip((cv.xx - cx) / (1.3 * u), -0.7, 0.7)
    add("torso", torso, unit(tn), shirt)
    add("neck", *cv.capsule((shoulder_y - 0.4 * u, cx), (shoulder_y + 0.1 * u, cx), 0.35 * u), SKIN)
    for side, sx in (("l", -1), ("r", 1)):
        sh = (shoulder_y + 0.3 * u, cx + sx * 1.3 * u)
        el = (sh[0] + 1.4 * u, sh[1] + sx * (0.3 + arm * sx) * u)
        wr = (el[0] + 1.3 * u, el[1] + sx * rng.uniform(-0.2, 0.6) * u)
        add(f"{side}uarm", *cv.capsule(sh, el, lw), shirt)
        add(f"{side}larm", *cv.capsule(el, wr, lw * 0.9), SKIN)
        add(f"{side}hand", *cv.ellipse(wr[0] + 0.3 * u, wr[1], 0.35 * u, 0.3 * u), SKIN)
    head_c = (shoulder_y - 0.95 * u, cx)
    add("head", *cv.ellipse(head_c[0], head_c[1], 0.6 * u, 0.5 * u), SKIN)
    hm, hn = cv.ellipse(head_c[0] - 0.35 * u, head_c[1], 0.3 * u, 0.52 * u)
    add("hair", hm & (cv.yy < head_c[0] - 0.25 * u), hn, HAIR)
    return _Obj(PERSON, mask, normals, albedo, partmap, names)


def _object(cv, rng, cls, foot_y, cx, size):
    """Non-person objects: each class its own shape, colour family, texture and normals."""
    h, w = cv.h, cv.w
    mask = np.zeros((h, w), bool)
    normals = np.zeros((h, w, 3), np.float32)
    albedo = np.zeros((h, w, 3), np.float32)
    jitter = rng.uniform(0.85, 1.15)

    def col(c):
        return tuple(np.clip(np.asarray(c) * jitter, 0, 255))

    if cls == CAR:
        bw, bh = 1.8 * size, 0.5 * size
        body = cv.box(foot_y - 0.15 * size - bh, foot_y - 0.15 * size, cx - bw / 2, cx + bw / 2)
        cabin = cv.box(foot_y - 0.15 * size - bh - 0.35 * size, foot_y - 0.15 * size - bh + 1,
                       cx - 0.5 * bw / 2, cx + 0.6 * bw / 2)
        _paint(mask, normals, albedo, body, FACING, col((200, 30, 35)), _texture(cv, "hstripes", rng))
        _paint(mask, normals, albedo, cabin, unit([0, 0.4, 0.9]), (120, 170, 210), _texture(cv, "plain", rng))
        for wx in (cx - 0.55 * bw / 2, cx + 0.55 * bw / 2):
            m, n = cv.ellipse(foot_y - 0.17 * size, wx, 0.17 * size, 0.17 * size)
            _paint(mask, normals, albedo, m, n, (25, 25, 25), _texture(cv, "plain", rng))
    elif cls == CAT:
        m, n = cv.ellipse(foot_y - 0.3 * size, cx, 0.3 * size, 0.55 * size)
        _paint(mask, normals, albedo, m, n, col((225, 140, 45)), _texture(cv, "dots", rng))
        hx = cx + 0.5 * size * (1 if rng.random() < 0.5 else -1)
        hy = foot_y - 0.6 * size
        m, n = cv.ellipse(hy, hx, 0.22 * size, 0.22 * size)
        _paint(mask, normals, albedo, m, n, col((225, 140, 45)), _texture(cv, "dots", rng))
        for ex in (-1, 1):
            ear = cv.triangle((hy - 0.15 * size, hx + ex * 0.18 * size), (hy - 0.4 * size, hx + ex * 0.12 * size),
                              (hy - 0.15 * size, hx + ex * 0.02 * size))
            _paint(mask, normals, albedo, ear, FACING, col((200, 110, 30)), _texture(cv, "plain", rng))
    elif cls == BOTTLE:
        r = 0.18 * size
        m, n = cv.capsule((foot_y - 0.75 * size, cx), (foot_y - r, cx), r)
        _paint(mask, normals, albedo, m, n, col((40, 150, 60)), 0.8 + 0.4 * (np.abs(cv.xx - cx + 0.3 * r) < 0.25 * r))
        m, n = cv.capsule((foot_y - 1.05 * size, cx), (foot_y - 0.75 * size, cx), 0.45 * r)
        _paint(mask, normals, albedo, m, n, col((30, 120, 50)), _texture(cv, "plain", rng))
    elif cls == TV:
        top = foot_y - 1.0 * size
        frame = cv.box(top, top + 0.7 * size, cx - 0.55 * size, cx + 0.55 * size)
        screen = cv.box(top + 0.07 * size, top + 0.63 * size, cx - 0.47 * size, cx + 0.47 * size)
        stand = cv.box(top + 0.7 * size, foot_y, cx - 0.08 * size, cx + 0.08 * size)
        _paint(mask, normals, albedo, stand, FACING, (40, 40, 40), _texture(cv, "plain", rng))
        _paint(mask, normals, albedo, frame, FACING, (30, 30, 35), _texture(cv, "plain", rng))
        _paint(mask, normals, albedo, screen, FACING, col((70, 130, 230)), _texture(cv, "scanlines", rng))
    elif cls == SOFA:
        sw = 1.6 * size
        back = cv.box(foot_y - 0.8 * size, foot_y - 0.35 * size, cx - sw / 2, cx + sw / 2)
        seat = cv.box(foot_y - 0.4 * size, foot_y, cx - sw / 2, cx + sw / 2)
        _paint(mask, normals, albedo, back, FACING, col((125, 60, 155)), _texture(cv, "checker", rng))
        _paint(mask, normals, albedo, seat, unit([0, 0.7, 0.7]), col((125, 60, 155)), _texture(cv, "checker", rng))
        for ax in (cx - sw / 2, cx + sw / 2):
            m, n = cv.capsule((foot_y - 0.55 * size, ax), (foot_y - 0.05 * size, ax), 0.12 * size)
            _paint(mask, normals, albedo, m, n, col((100, 45, 130)), _texture(cv, "plain", rng))
    else:
        raise ValueError(f"no synthetic shape for class {cls}")
    return _Obj(cls, mask, normals, albedo)


def _render_pascal(rng, h, w, idx):
    cv = _Canvas(h, w)
    horizon = rng.uniform(0.3, 0.55) * h
    upper = STUFF_UPPER[rng.integers(len(STUFF_UPPER))]
    lower = STUFF_LOWER[rng.integers(len(STUFF_LOWER))]
    label_map = np.where(cv.yy < horizon, upper[0], lower[0]).astype(np.uint16)
    normals = np.where((cv.yy < horizon)[..., None], FACING, GROUND_NORMAL).astype(np.float32)
    sky = np.asarray(upper[1], np.float32) * _texture(cv, upper[2], rng)[..., None]
    ground = np.asarray(lower[1], np.float32) * _texture(cv, lower[2], rng)[..., None]
    albedo = np.where((cv.yy < horizon)[..., None], sky, ground)
    if rng.random() < 0.4:  # a building-like block standing on the horizon
        bx = rng.uniform(0, 0.7) * w
        block = cv.box(horizon * rng.uniform(0.2, 0.6), horizon, bx, bx + rng.uniform(0.15, 0.3) * w)
        label_map[block] = STUFF_BLOCK[0]
        normals[block] = FACING
        albedo[block] = np.asarray(STUFF_BLOCK[1], np.float32)[None] * _texture(cv, STUFF_BLOCK[2], rng)[block][:, None]

    n_obj = int(rng.integers(1, 5))
    classes = list(rng.choice(OBJECT_CLASSES, size=n_obj, p=OBJECT_PROBS))
    if idx % 3 == 0:  # a person in every third image, none in the next: both cases always occur
        classes[0] = PERSON
    elif idx % 3 == 1:
        classes = [c if c != PERSON else OBJECT_CLASSES[1 + (idx + k) % 5] for k, c in enumerate(classes)]
    objs = []
    for k, cls in enumerate(classes):
        foot = rng.uniform(horizon + 0.12 * (h - horizon), h * 1.02)
        depth_frac = (foot - horizon) / (h - horizon)  # 0 at the horizon (far), 1 at the bottom (near)
        cx = rng.uniform(0.12, 0.88) * w
        if cls == PERSON:
            obj = _person(cv, rng, foot, cx, height=(0.35 + 0.5 * depth_frac) * h)
            obj.annotate_parts = not (idx % 5 == 4 and k == 0)  # a few persons without part annotation
        else:
            obj = _object(cv, rng, int(cls), foot, cx, size=(0.15 + 0.3 * depth_frac) * min(h, w))
        objs.append((foot, k, obj))
    objs.sort(key=lambda t: (t[0], t[1]))  # back to front

    inst = np.zeros((h, w), np.int32)
    for k, (_, _, obj) in enumerate(objs, start=1):
        inst[obj.mask] = k
        label_map[obj.mask] = VOC_CONTEXT_IDS[obj.cls]
        normals[obj.mask] = obj.normals[obj.mask]
        albedo[obj.mask] = obj.albedo[obj.mask]

    semseg = np.zeros((h, w), np.uint8)
    parts_truth = np.zeros((h, w), np.uint8)
    records = []
    for k, (_, _, obj) in enumerate(objs, start=1):
        visible = inst == k
        semseg[visible] = obj.cls
        rec = {"class": VOC_NAMES[obj.cls], "class_ind": obj.cls, "mask": visible.astype(np.uint8), "parts": []}
        if obj.cls == PERSON and obj.annotate_parts:
            for j, name in enumerate(obj.part_names, start=1):
                pm = (obj.parts == j) & visible
                rec["parts"].append((name, pm.astype(np.uint8)))
                parts_truth[pm] = HUMAN_PART_GROUPS[name]
        records.append(rec)
    if idx % 6 == 5:  # an object with an empty mask: the part index must record it as −1
        records.append({"class": "person", "class_ind": PERSON, "mask": np.zeros((h, w), np.uint8), "parts": []})

    shade = 0.35 + 0.65 * np.clip((normals * LIGHT).sum(-1), 0, 1)
    image = albedo * shade[..., None] + rng.normal(0, 4.0, (h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)

    salient = inst > 0
    sal_png = np.where(salient, rng.integers(215, 250, (h, w)), rng.integers(5, 40, (h, w))).astype(np.uint8)

    void = np.zeros((h, w), bool)
    semseg_folder = "VOC12" if idx % 3 != 2 else "pascal-context"
    if semseg_folder == "VOC12":  # VOC-style void outline around objects
        from scipy.ndimage import maximum_filter, minimum_filter

        void = (maximum_filter(inst, 3) != minimum_filter(inst, 3)) & (maximum_filter(inst, 3) > 0)
    semseg_png = semseg.copy()
    semseg_png[void] = 255

    valid = np.isin(label_map, _normals_valid_ids())
    return {
        "image": image,
        "label_map": label_map,
        "semseg": semseg_png,
        "semseg_folder": semseg_folder,
        "instances": inst,
        "objects": records,
        "human_parts": parts_truth,  # 6-group ids; all 0 when no visible annotated person
        "has_human_parts": bool(parts_truth.any()),
        "normals": normals.astype(np.float32),
        "normals_png": encode_normals(normals),
        "normals_valid": valid,
        "sal_png": sal_png,
        "sal": salient.astype(np.uint8),
    }


def _normals_valid_ids():
    return NORMALS_VALID_IDS


# --------------------------------------------------------------------------------------------------
# writers


def _anno_struct(imname: str, records) -> np.ndarray:
    """A PASCAL-Part-like `anno` struct: anno[0][0] = (imname, objects); objects[0][i] = (class,
    class_ind, mask, parts); parts[0][j] = (part_name, mask), or an empty 0×0 array without parts."""
    part_dt = [("part_name", "O"), ("mask", "O")]
    obj_dt = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    objects = np.zeros((1, len(records)), dtype=obj_dt)
    for i, r in enumerate(records):
        if r["parts"]:
            parts = np.zeros((1, len(r["parts"])), dtype=part_dt)
            for j, (name, m) in enumerate(r["parts"]):
                parts[0, j] = (name, m)
        else:
            parts = np.zeros((0, 0))
        objects[0, i] = (r["class"], np.array([[r["class_ind"]]], np.uint8), r["mask"], parts)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (imname, objects)
    return anno


MAT_HEADER = b"MATLAB 5.0 MAT-file, written by taskdiffusion data.synthetic"


def _savemat_reproducible(path: Path, mdict: dict) -> None:
    """scipy's savemat (compressed) with a fixed header text: scipy puts the wall-clock time in the
    116-byte header, so the same seed would otherwise give different bytes a second later."""
    import io

    import scipy.io as sio

    buf = io.BytesIO()
    sio.savemat(buf, mdict, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = MAT_HEADER.ljust(116, b" ")
    path.write_bytes(bytes(data))


def _write_pascal(root: Path, sid: str, s: dict, palette):
    from PIL import Image

    Image.fromarray(s["image"]).save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
    seg = Image.fromarray(s["semseg"])
    if s["semseg_folder"] == "VOC12":  # palette PNG like the real VOC labels: stored values are the ids
        seg.putpalette(palette)
    seg.save(root / "semseg" / s["semseg_folder"] / f"{sid}.png")
    _savemat_reproducible(root / "pascal-context" / "trainval" / f"{sid}.mat", {"LabelMap": s["label_map"]})
    _savemat_reproducible(root / "human_parts" / f"{sid}.mat", {"anno": _anno_struct(f"{sid}.jpg", s["objects"])})
    Image.fromarray(s["normals_png"]).save(root / "normals_distill" / f"{sid}.png")
    Image.fromarray(s["sal_png"]).save(root / "sal_distill" / f"{sid}.png")


def part_index_classes(records) -> list:
    """One image's part-index entry: each object's class index, or -1 when its mask is empty.

    Why here and not via the reader: the generator knows the objects it wrote into the .mat file, so the
    shipped index is an independent statement the reader's own scan can be checked against.
    """
    return [int(r["class_ind"]) if int(np.asarray(r["mask"]).sum()) > PART_AREA_THRES else -1 for r in records]


def part_index_text(entries: dict) -> str:
    """`ImageSets/Parts/<split>.txt` as the original code writes it: a JSON object, one
    `"<id>": [class, ...]` per line in split order (tab-indented), so that the bytes are reproducible."""
    lines = [f"\t{json.dumps(str(sid))}: {json.dumps([int(c) for c in cls])}" for sid, cls in entries.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _write_part_index(root: Path, entries_by_split: dict) -> None:
    """Write the part index of every split (after all .mat files, so it is never older than them)."""
    for split, entries in entries_by_split.items():
        (root / "ImageSets" / "Parts" / f"{split}.txt").write_text(part_index_text(entries))


class PascalSynthetic(SyntheticWriter):
    """The synthetic PASCAL-Context look-alike (see the module docstring)."""

    name, db_name, stream = "pascal", "PASCALContext", 0
    default_size = (128, 128)
    folders = ("ImageSets/Context", "ImageSets/Parts", "JPEGImages", "semseg/VOC12", "semseg/pascal-context",
               "pascal-context/trainval", "human_parts", "normals_distill", "sal_distill")
    split_folder = "ImageSets/Context"
    description = "PASCAL-Context-style scenes: VOC objects, PASCAL-Part persons, LabelMaps, normals, saliency"

    def sample_id(self, idx, split="train"):
        return f"2008_{idx:06d}"

    def sample_index(self, sid):
        return int(sid.split("_")[1])

    def image_size(self, idx, size=None):
        """PASCAL sizes vary a little (padding must be exercised)."""
        h, w = size if size is not None else self.default_size
        d = max(4, h // 16)
        if idx % 4 == 3:
            return h - d, w
        if idx % 4 == 1:
            return h, w - d
        return int(h), int(w)

    def render(self, rng, h, w, idx):
        return _render_pascal(rng, h, w, idx)

    def write(self, root, split, sid, scene):
        from utils.visualization import voc_palette

        _write_pascal(root, sid, scene, voc_palette().reshape(-1).tolist())  # palette PNGs like VOC12's

    def keep(self, scene):
        return part_index_classes(scene["objects"])

    def write_splits(self, root, ids_by_split, scenes_by_split):
        super().write_splits(root, ids_by_split, scenes_by_split)
        _write_part_index(root, scenes_by_split)  # after all .mat files, so it is never older than them


# ---- data.verify ---------------------------------------------------------------------------------------
PASCAL_SEMSEG_CLASSES = 21  # 0..20, 255 = ignore
PASCAL_CONTEXT_CLASSES = 459  # LabelMap ids 0..459


class PascalChecks(DatasetChecks):
    """Where the reader's files are, and the per-file checks of `python -m data.verify --dataset pascal`.

    The reader keeps its paths in methods, so `files` is the one table of them for verify;
    tests/data/test_verify.py checks it against the reader."""

    split_folder = "ImageSets/Context"
    files = {  # kind -> (candidate folders, first one holding the file wins; suffix)
        "image": (("JPEGImages",), ".jpg"),
        "semseg": (("semseg/VOC12", "semseg/pascal-context"), ".png"),
        "labelmap": (("pascal-context/trainval",), ".mat"),
        "human_parts": (("human_parts",), ".mat"),
        "normals": (("normals_distill",), ".png"),
        "sal": (("sal_distill",), ".png"),
    }

    def extra_checks(self, root, ids_by_split):
        """The shipped part index should cover its split (else the reader scans every .mat file)."""
        out = []
        for split, ids in ids_by_split.items():
            rel = f"ImageSets/Parts/{split}.txt"
            path = root / rel
            if ids and path.is_file() and parse_part_index(path.read_text(), ids) is None:
                out.append(Problem("warning", "part index", rel,
                                   "malformed or missing ids of the split: the reader ignores it and scans "
                                   "every human_parts .mat file once (slow on the real data)"))
        return out

    def check_file(self, kind, path, rel, sid, image_hw):
        if kind == "semseg":
            lab = read_single_channel(path, sid)
            return [size_problem(rel, path, sid, lab.shape[:2], image_hw),
                    values_problem(rel, lab, PASCAL_SEMSEG_CLASSES - 1, extra=(255,))]
        if kind in ("sal", "normals"):
            lab = (read_single_channel if kind == "sal" else read_rgb_png)(path, sid)
            return [size_problem(rel, path, sid, lab.shape[:2], image_hw)]
        if kind == "labelmap":
            lab = np.asarray(load_mat(path, sid, "LabelMap"))
            if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
                return [Problem("error", "label shape", rel, f"LabelMap should be a 2-D integer array, "
                                                             f"got {lab.dtype} {lab.shape}")]
            return [size_problem(rel, path, sid, lab.shape, image_hw),
                    values_problem(rel, lab, PASCAL_CONTEXT_CLASSES, what="LabelMap ids")]
        if kind == "human_parts":
            anno = load_mat(path, sid, "anno")
            part_index_entry(anno, path, sid)
            parts = human_parts_from_anno(anno, path, sid)
            return [] if parts is None else [size_problem(rel, path, sid, parts.shape, image_hw)]
        return []


# ---- the spec ------------------------------------------------------------------------------------------
# Sources of the ATRC tarballs, tried in order by data.download (--url replaces them):
#  - HKUST OneDrive: the links of the TaskDiffusion, MLoRE and InvPT READMEs (their authors re-hosted
#    the ATRC files when the ETH server went away); `download=1` turns the share page into the file.
#  - ETH: the original links of the ATRC README (brdavid/atrc), also given by InvPT/TaskPrompter;
#    reported to answer 404 since late 2024, kept in case they come back.
# No published digests exist for these tarballs: pass --sha256 when you know one.
ONEDRIVE = "https://hkustconnect-my.sharepoint.com/:u:/g/personal/hyeae_connect_ust_hk/"
ETH = "https://data.vision.ee.ethz.ch/brdavid/atrc/"
ATRC_HELP = ("It is the {tarball} of ATRC's data release (https://github.com/brdav/atrc; its original ETH link "
             "has answered 404 since late 2024, docs/data.md lists the mirrors): extract it (tar xzf) inside a "
             "root folder, so that <root>/{folder}/ exists.")

SPEC = register_dataset(DatasetSpec(
    name="PASCALContext", folder="PASCALContext", reader=PASCALContext,
    crop_size=(512, 512), edge_w=0.95, edge_max_dist=0.0075, split_sizes={"train": 4998, "val": 5105},
    description="PASCAL-Context as prepared by ATRC: semseg, human_parts, sal, normals, edge",
    download=ATRC_HELP.format(tarball="PASCALContext.tar.gz", folder="PASCALContext"),
    layout="""\
<db_root>/PASCALContext/
    ImageSets/Context/{train,val}.txt     one image id per line
    JPEGImages/<id>.jpg                   RGB input
    semseg/VOC12/<id>.png                 21-class labels (else semseg/pascal-context/<id>.png)
    pascal-context/trainval/<id>.mat      LabelMap (459 context classes): edges, normals mask
    human_parts/<id>.mat                  PASCAL-Part `anno` struct
    normals_distill/<id>.png              RGB normals
    sal_distill/<id>.png                  grayscale saliency""",
    synthetic="pascal", reader_config=(("cache_dir", "data_cache_dir"),),
    archives=(Archive("PASCALContext.tar.gz", (
        (ONEDRIVE + "ER57KyZdEdxPtgMCai7ioV0BXCmAhYzwFftCwkTiMmuM7w?e=2Ex4ab&download=1",
         "TaskDiffusion/MLoRE README (HKUST OneDrive)"),
        (ETH + "PASCALContext.tar.gz", "ATRC README (ETH Zurich)"),
    ), "the whole ATRC-prepared dataset"),),
    checks=PascalChecks(), synthesizer=PascalSynthetic(),
))
