"""Reader for the ATRC-prepared PASCAL-Context tarball (`<db_root>/PASCALContext/`, docs/method.md#pascal-context-labels).

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

from .base import MultiTaskDataset
from .common import (
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
