"""Shared pieces of the dataset readers: the missing-root help, file decoding, size checks, cache folders.

Everything here turns a low-level failure (a missing file, a truncated PNG, an unreadable .mat) into a
`DatasetError` that names the file and the sample id, because a bare `FileNotFoundError` from a worker
process deep inside a DataLoader tells the user nothing about which of 10 000 samples is broken.
(`DatasetError` itself lives in data/errors.py and is importable from here as before.)
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .registry import dataset_spec, spec_view
from .errors import DatasetError

# {dataset name: folder under db_root}, a live view of the registry (data/registry.py) for older imports.
DATASET_FOLDERS = spec_view("folder")


def missing_root_message(db_name: str, looked_at: Path) -> str:
    """The full help text for a missing dataset folder: where we looked, what should be there, how to fix.

    The dataset's own part (description, layout, download, synthetic look-alike) comes from its
    DatasetSpec, so a registered plug-in dataset gets the same help."""
    spec = dataset_spec(db_name)
    folder = spec.folder
    lines = [f"{db_name} dataset not found: looked for the folder {looked_at}"]
    if spec.description:
        lines.append(f"{db_name}: {spec.description}")
    if spec.layout:
        lines.append(f"Expected layout:\n{spec.layout}")
    lines.append(spec.download or f"Put the dataset inside a root folder, so that <root>/{folder}/ exists.")
    cli = spec.cli_name
    if spec.archives or spec.checks:
        lines.append("Or let the framework download (or unpack), check and install it (resumable, safe extraction):"
                     if spec.archives else "Check a copy you already have:")
        if spec.archives:
            lines.append(f"  python -m data.download --dataset {cli} --root /path/to/root"
                         + ("" if any(a.sources for a in spec.archives) else " --archive FILE ..."))
        if spec.checks:
            lines += ["and check a copy you already have (--deep also decodes every file):" if spec.archives else "",
                      f"  python -m data.verify --dataset {cli} --root /path/to/root"]
        lines = [x for x in lines if x]
    lines += [
        f"Set the root (the folder that CONTAINS {folder}/) in one of three ways, highest priority first:",
        "  1. the command-line flag  --data_root /path/to/root",
        "  2. the environment variable  TASKDIFFUSION_DATA=/path/to/root",
        "  3. the config key  db_root: /path/to/root",
    ]
    if spec.synthetic:
        lines += ["For a quick try without the real data, write a synthetic set in the same layout:",
                  f"  python -m data.synthetic --dataset {spec.synthetic} --out /path/to/root"]
    return "\n".join(lines)


def resolve_dataset_dir(db_name: str, db_root) -> Path:
    """`<db_root>/<folder>` for a registered dataset name; also accepts the dataset folder itself as root."""
    folder = dataset_spec(db_name).folder  # an unknown name is a DatasetError listing the known ones
    if db_root is None or str(db_root) == "":
        raise DatasetError(missing_root_message(db_name, Path("<no data root set>") / folder))
    root = Path(os.path.expanduser(str(db_root)))
    if root.name == folder and not (root / folder).is_dir() and root.is_dir():
        return root
    path = root / folder
    if not path.is_dir():
        raise DatasetError(missing_root_message(db_name, path.resolve() if root.exists() else path))
    return path


def read_split(path: Path, db_name: str) -> list:
    """Ids of one split file (one per line, blank lines skipped); missing or empty files fail clearly."""
    if not path.is_file():
        avail = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise DatasetError(
            f"{db_name}: split file {path} does not exist"
            + (f"; available splits: {', '.join(avail)}" if avail else f" (folder {path.parent} is missing)")
        )
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise DatasetError(f"{db_name}: split file {path} is empty (no image ids); the split has no samples")
    return ids


def check_files_exist(db_name: str, folder: Path, ids, suffix: str, what: str) -> None:
    """Every id has `<folder>/<id><suffix>`; one listdir per folder instead of one stat per file."""
    if not folder.is_dir():
        raise DatasetError(f"{db_name}: the {what} folder {folder} is missing")
    present = set(os.listdir(folder))
    missing = [i for i in ids if f"{i}{suffix}" not in present]
    if missing:
        shown = ", ".join(str(folder / f"{i}{suffix}") for i in missing[:5])
        raise DatasetError(
            f"{db_name}: {len(missing)} {what} file(s) missing for the split, e.g. sample {missing[0]!r}: {shown}"
        )


_LABEL_FILES = threading.local()


@contextmanager
def recording_files():
    """Collect the paths the readers below open (in this thread) while the block runs: the generic sample
    reader (data/base.py) names the file of a label whose values it refuses, for every dataset and plug-in
    loader, without asking each reader for its paths. Yields the list (first file first)."""
    outer = getattr(_LABEL_FILES, "files", None)
    _LABEL_FILES.files = files = []
    try:
        yield files
    finally:
        _LABEL_FILES.files = outer
        if outer is not None:
            outer.extend(files)


def _note(path) -> None:
    files = getattr(_LABEL_FILES, "files", None)
    if files is not None:
        files.append(str(path))


def _fail(path, sample_id, err) -> DatasetError:
    return DatasetError(f"cannot read {path} (sample {sample_id!r}): {type(err).__name__}: {err}")


def read_rgb(path, sample_id) -> np.ndarray:
    """float32 H×W×3 in 0..255 (PIL `.convert('RGB')`, docs/method.md#sample-dict-and-batches)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - any decoder failure becomes a named-file error
        raise _fail(path, sample_id, err) from err


def read_png_raw(path, sample_id) -> np.ndarray:
    """The stored values of a PNG (palette indices for palette PNGs, not colours)."""
    _note(path)
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im)
    except Exception as err:  # noqa: BLE001
        raise _fail(path, sample_id, err) from err


def read_single_channel(path, sample_id) -> np.ndarray:
    """A label PNG as H×W; single-channel expected, a gray image stored as RGB keeps its first channel."""
    arr = read_png_raw(path, sample_id)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DatasetError(f"{path} (sample {sample_id!r}): expected a single-channel image, got shape {arr.shape}")
    return arr


def read_rgb_png(path, sample_id) -> np.ndarray:
    """An 8-bit RGB PNG as uint8 H×W×3 (normals)."""
    arr = read_png_raw(path, sample_id)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DatasetError(f"{path} (sample {sample_id!r}): expected an RGB image, got shape {arr.shape}")
    return arr[..., :3]


def decode_normals(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB → float32 normals in [−1, 1]: n = 2·v/255 − 1 per channel (R→x, G→y, B→z)."""
    return (2.0 * rgb.astype(np.float32) / 255.0 - 1.0).astype(np.float32)


def load_mat(path, sample_id, key: str | None = None):
    """A MATLAB file (scipy.io.loadmat); with `key` the named variable, failing clearly when absent."""
    _note(path)
    import scipy.io as sio

    try:
        mat = sio.loadmat(str(path))
    except Exception as err:  # noqa: BLE001
        raise _fail(path, sample_id, err) from err
    if key is None:
        return mat
    if key not in mat:
        have = [k for k in mat if not k.startswith("__")]
        raise DatasetError(f"{path} (sample {sample_id!r}): no variable {key!r} in the .mat file (has: {have})")
    return mat[key]


def load_npy(path, sample_id) -> np.ndarray:
    _note(path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001
        raise _fail(path, sample_id, err) from err


def as_hwc(arr: np.ndarray) -> np.ndarray:
    """H×W → H×W×1 float32; H×W×C kept (as float32)."""
    arr = np.asarray(arr, dtype=np.float32)
    return arr[:, :, None] if arr.ndim == 2 else arr


def fit_to_image(label: np.ndarray, image_hw, path, sample_id, cubic: bool = False) -> np.ndarray:
    """Resize a label to the image size only if it differs (docs/method.md#sample-dict-and-batches: nearest, normals cubic).

    A plain rescale (same aspect ratio within 2 %) is resized with a warning; any other mismatch (a
    transposed or unrelated label) is an error, because resizing it would silently teach garbage.
    """
    import cv2

    _note(path)
    h, w = int(image_hw[0]), int(image_hw[1])
    lh, lw = label.shape[:2]
    if (lh, lw) == (h, w):
        return label
    if lh == 0 or lw == 0 or abs((lh / lw) / (h / w) - 1.0) > 0.02:
        raise DatasetError(
            f"{path} (sample {sample_id!r}): label size {lh}x{lw} does not match the image size {h}x{w} "
            f"and is not a rescaled copy of it (different aspect ratio); check that the file belongs to this image"
        )
    warnings.warn(f"{path}: label size {lh}x{lw} differs from the image {h}x{w}; resizing", stacklevel=2)
    squeeze = label.ndim == 3 and label.shape[2] == 1
    src = label[:, :, 0] if squeeze else label
    interp = cv2.INTER_CUBIC if cubic else cv2.INTER_NEAREST
    out = cv2.resize(np.ascontiguousarray(src), (w, h), interpolation=interp)
    return out[:, :, None] if squeeze else out


def default_cache_root(cache_dir=None) -> Path:
    """`cache_dir` argument > $TASKDIFFUSION_CACHE > ~/.cache/taskdiffusion (never the dataset folder)."""
    if cache_dir:
        return Path(os.path.expanduser(str(cache_dir)))
    env = os.environ.get("TASKDIFFUSION_CACHE")
    if env:
        return Path(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "taskdiffusion"


def dataset_cache_dir(cache_root: Path, db_name: str, dataset_dir: Path) -> Path:
    """Per-dataset cache folder keyed by the dataset's absolute path (two copies never share a cache)."""
    key = hashlib.sha1(str(Path(dataset_dir).resolve()).encode()).hexdigest()[:12]
    return Path(cache_root) / f"{db_name}-{key}"


@contextmanager
def exclusive_lock(path: Path):
    """Hold an exclusive advisory lock on `path` (created if needed) for the block.

    Used where every rank and DataLoader worker would otherwise build the same cache file at once (the
    PASCAL part index reads every .mat file): the first builds it, the others wait and read its result.
    Without fcntl (not POSIX) or a writable folder the block runs unlocked: caching is an optimisation.
    """
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock


def file_stamp(path) -> list:
    """(size, mtime_ns) of a file: cached results derived from it are stale when this changes."""
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def atomic_save_npz(path: Path, **arrays) -> bool:
    """Write an .npz under a temporary name and rename, so concurrent workers never read half a file.

    Returns False (and stays silent) when the cache folder is not writable: caching is an optimisation.
    """
    from utils.io import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    try:
        atomic_write(path, write)
        return True
    except OSError:
        return False
