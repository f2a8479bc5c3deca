"""Prediction for arbitrary images or a dataset split (the library side of infer.py).

Any image size: an image larger than the network size TEST.SCALE is shrunk (aspect kept) to fit, then every
image is padded, centred, to TEST.SCALE exactly as the validation pipeline pads val images (so the model sees
the input distribution it was trained for, and the MLoRE router's fixed token grid fits). Outputs are cropped
back and resized to the original size. Images of different sizes therefore batch together.

Predictions run through the shared path of evaluation (engine.predict.run_predictions) with the sinks of
engine/sinks.py, so the files are those the metrics score. Sampling noise is drawn per image from (seed,
image name) by the model (`initial_noise`): the same image gives the same prediction for a given --seed,
whatever the batch size.

Unreadable inputs do not stop a job. They travel as data (data/sample_errors.py): `ImageFolder` returns a
`FailedSample` for an image it cannot decode, a dataset split is wrapped in `CatchSampleErrors` (the readers'
DatasetError becomes a FailedSample), and `collate_catching` moves those records out of the batch into
`batch[ERRORS_KEY]`. The record is built in whichever process reads the sample, so the outcome and the
messages are the same with or without DataLoader workers (an exception raised in a worker would surface as
the worker's traceback instead). `input_label` turns a record's index back into a file name or sample id.

Setup problems a user can fix (an --input, --output or --device that cannot work) raise `InferenceError`,
whose text is the whole one-line message, before any model is built.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from torch.utils.data import Dataset

from data.sample_errors import FailedSample
from utils.cli import one_line
from utils.devices import DeviceError, pick_device
from utils.io import storage_error

__all__ = ["IMAGE_EXTENSIONS", "InferenceError", "list_images", "scan_inputs", "ImageFolder", "collate_images", "input_label",
           "failure_summary", "fit_size", "output_subfolders", "prepare_output_dir", "resolve_device", "one_line",
           "GuardWrites"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# How many unreadable inputs the end-of-job summary names before it says "and N more".
SUMMARY_MAX_NAMES = 20


class InferenceError(ValueError):
    """A problem with --input, --output or --device that the user can fix; str(err) is the one-line message."""


# --- inputs ------------------------------------------------------------------------------------------------

def list_images(path: str, recursive: bool = False) -> list:
    """An image file, or the image files inside a folder (sorted; with `recursive` also in its subfolders,
    sorted by relative path); InferenceError otherwise. See scan_inputs for the files left out."""
    return scan_inputs(path, recursive)[0]


def scan_inputs(path: str, recursive: bool = False) -> tuple:
    """(image files, other files) of --input: the files whose names are not images are left out and returned
    so the job's summary can count them. Hidden files and folders (.DS_Store, .git/) are not looked at."""
    what = f"input --input {path}"
    if os.path.isfile(path):
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            raise InferenceError(f"{what}: not an image file name; give a file ending in one of "
                                 f"{', '.join(IMAGE_EXTENSIONS)}, a folder of images, or split:val")
        return [path], []
    if os.path.isdir(path):
        found = []
        if recursive:
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(folder, n) for n in names)
        else:
            found = [os.path.join(path, n) for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))]
        found = sorted((f for f in found if not os.path.basename(f).startswith(".")),
                       key=lambda f: os.path.relpath(f, path))
        files = [f for f in found if f.lower().endswith(IMAGE_EXTENSIONS)]
        others = [f for f in found if not f.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            sub = [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith(".")]
            hint = "; it has subfolders: add --recursive to predict the images in them" if sub and not recursive else ""
            raise InferenceError(f"{what}: the folder holds no image files{hint}; put images ending in "
                                 f"{', '.join(IMAGE_EXTENSIONS)} in it or give another folder")
        return files, others
    raise InferenceError(f"{what}: no such file or folder; give an image, a folder of images, or split:val")


def _unique_names(files, root: str | None = None) -> list:
    """Output names: the file stem, or the whole file name when two inputs share a stem (a.jpg, a.png);
    relative to `root` (its subfolders kept, '/'-separated) when given, so the outputs mirror the input tree."""
    def stem(f):
        rel = os.path.relpath(f, root) if root else os.path.basename(f)
        return os.path.splitext(rel)[0]

    stems = [stem(f) for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    out = []
    for f, s in zip(files, stems):
        if s in dup:
            s = os.path.join(os.path.dirname(s), os.path.basename(f).replace(".", "_"))
        out.append(s.replace(os.sep, "/"))
    return out


def fit_size(hw, limit) -> tuple:
    """(h, w) scaled down (aspect kept) to fit inside limit=(H, W); unchanged when it already fits."""
    h, w = int(hw[0]), int(hw[1])
    s = min(limit[0] / h, limit[1] / w, 1.0)
    return (h, w) if s >= 1.0 else (max(1, min(limit[0], int(round(h * s)))), max(1, min(limit[1], int(round(w * s)))))


def _read_reason(err: Exception, path: str) -> str:
    """A decoder's message without the file path it repeats (the summary names the file already)."""
    text = str(err)
    for p in (repr(path), repr(os.path.basename(path)), path):
        text = text.replace(p, "")
    text = one_line(text).strip(" :,")
    return text or type(err).__name__


def read_rgb(path: str) -> np.ndarray:
    """float32 H×W×3 in 0..255 from any image PIL can decode (raises what the decoder raises), turned upright
    as its EXIF orientation tag says: a phone stores a portrait photo as landscape pixels plus tag 6 and
    every viewer rotates it, so predictions, their PNGs and the overview must use the rotated pixels too."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.float32)


class ImageFolder(Dataset):
    """Plain images -> {'image': 3×H×W normalised and padded, 'meta': {img_name, img_size, orig_size, path}}.

    An image that cannot be decoded (corrupt, truncated, not an image) gives a FailedSample(index, why)
    instead of an exception, so one bad file does not cost the rest of its batch.
    """

    def __init__(self, files, cfg, root: str | None = None):
        from data import build_transforms

        self.files, self.names = list(files), _unique_names(files, root)
        self.scale = tuple(int(s) for s in cfg.TEST.SCALE)
        self.transform = build_transforms(cfg, "val")

    def __len__(self) -> int:
        return len(self.files)

    def label(self, i: int) -> str:
        """How the end-of-job summary names input i: its file name (with its subfolder under --recursive)."""
        return os.path.basename(self.files[i]) if "/" not in self.names[i] else os.path.join(
            os.path.dirname(self.names[i]), os.path.basename(self.files[i]))

    def __getitem__(self, i):
        import cv2

        path = self.files[i]
        try:
            img = read_rgb(path)
        except Exception as err:  # noqa: BLE001 - any decoder failure is this input's problem, not the job's
            return FailedSample(int(i), _read_reason(err, path))
        orig = img.shape[:2]
        size = fit_size(orig, self.scale)
        if size != tuple(orig):
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        sample = self.transform({"image": img, "meta": {"img_name": self.names[i], "img_size": size}})
        sample["meta"] = {"img_name": self.names[i], "img_size": size, "orig_size": tuple(orig), "path": path}
        return sample


def input_label(dataset, index: int) -> str:
    """The name of input `index` for messages: ImageFolder's file name, a split reader's sample id (through
    a CatchSampleErrors wrapper), else '#index'."""
    if hasattr(dataset, "label"):
        return dataset.label(index)
    ids = getattr(getattr(dataset, "dataset", dataset), "ids", None)
    return str(ids[index]) if ids is not None and 0 <= index < len(ids) else f"#{index}"


def collate_images(samples) -> dict:
    """ImageFolder samples -> batch: stacked images, meta lists (img_size as int64 tensors like collate_fn)."""
    return {"image": torch.stack([torch.as_tensor(s["image"]) for s in samples]),
            "meta": {"img_name": [s["meta"]["img_name"] for s in samples],
                     "img_size": [torch.as_tensor(s["meta"]["img_size"], dtype=torch.int64) for s in samples],
                     "orig_size": [tuple(s["meta"]["orig_size"]) for s in samples]}}


def failure_summary(failed, total: int, what: str, advice: str) -> str:
    """One line: '2 of 7 images could not be read: a.jpg (why), b.png (why); <advice>'."""
    shown = ", ".join(f"{name} ({reason})" for name, reason in failed[:SUMMARY_MAX_NAMES])
    more = len(failed) - SUMMARY_MAX_NAMES
    if more > 0:
        shown += f" and {more} more (each is logged above)"
    return f"{len(failed)} of {total} {what} could not be read: {shown}; {advice}"


# --- device and output folder ----------------------------------------------------------------------------

def resolve_device(name) -> torch.device:
    """--device checked before any work (utils.devices.pick_device): None -> CUDA when available, else
    CPU; a bad name -> InferenceError with one line listing what works."""
    try:
        return pick_device(name)
    except DeviceError as err:
        raise InferenceError(str(err)) from None


def output_subfolders(tasks: dict) -> list:
    """The folders infer.py writes under the output folder: each task's (Task.output_folders), overviews."""
    return [sub for task in tasks.values() for sub in task.output_folders()] + ["overview"]


def _file_in_the_way(path: str):
    """The nearest existing ancestor of `path` when it is a regular file (why the folder cannot be made)."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent
    return p if not os.path.isdir(p) else None


def prepare_output_dir(path: str, subfolders=()) -> str:
    """Create the output folder and prove it writable, before the model is built; InferenceError otherwise.

    Found after inference, a bad --output would cost the whole run and end in a traceback.
    """
    what = f"output folder {path}"
    todo = "pass --output a folder you can write to (it is created when missing)"
    blocker = _file_in_the_way(path)
    if blocker is not None:
        where = "is an existing file" if os.path.abspath(blocker) == os.path.abspath(path) else f"{blocker} is a file"
        raise InferenceError(f"{what}: {where}, not a folder; {todo}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise InferenceError(f"{what}: cannot create it ({err.strerror or err}); {todo}") from None
    for sub in subfolders:
        p = os.path.join(path, sub)
        if os.path.exists(p) and not os.path.isdir(p):
            raise InferenceError(f"{what}: {p} is a file where the {sub}/ folder must go; remove it or {todo}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise InferenceError(f"{what}: not writable ({err.strerror or err}); {todo}") from None
    return path


# --- outputs ---------------------------------------------------------------------------------------------

class GuardWrites:
    """A sink wrapping infer.py's writing sinks: a storage failure (disk full, quota, I/O error, read-only)
    is a utils.io.StorageError naming the file (infer.py: one line, exit status 75); another failed write
    (the folder was removed) the one-line InferenceError about --output instead of a traceback."""

    def __init__(self, sinks, out_dir: str):
        self.sinks, self.out_dir = list(sinks), out_dir

    def add(self, done) -> None:
        try:
            for sink in self.sinks:
                sink.add(done)
        except OSError as err:
            failed = storage_error(err, getattr(err, "filename", None) or self.out_dir)
            if failed is not None:  # full disk, quota, I/O error, read-only: `cannot write <file>: <reason>`
                raise failed from None
            raise InferenceError(f"output folder {self.out_dir}: writing the predictions failed "
                                 f"({err.strerror or err}); free disk space or pass another --output") from None
