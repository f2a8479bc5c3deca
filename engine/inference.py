"""Prediction for arbitrary images or a dataset split (the library side of infer.py).

Any image size: an image larger than the network size TEST.SCALE is shrunk (aspect kept) to fit, then every
image is padded, centred, to TEST.SCALE exactly as the validation pipeline pads val images (so the model sees
the input distribution it was trained for, and the MLoRE router's fixed token grid fits). Outputs are cropped
back and resized to the original size. Images of different sizes therefore batch together.

Sampling noise is drawn per image from (seed, image name) (engine.evaluator.eval_noise): the same image gives
the same prediction for a given --seed, whatever the batch size.

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
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.sample_errors import ERRORS_KEY, FailedSample
from engine.evaluator import PredictionWriter, crop_padding, predict_batch, visual_grid
from utils import visualization as vis
from utils.devices import DeviceError, parse_device

__all__ = ["IMAGE_EXTENSIONS", "OVERVIEW_MAX_SIDE", "InferenceError", "list_images", "ImageFolder",
           "collate_images", "input_label", "failure_summary",
           "fit_size", "predict_batch", "overview_picture", "output_subfolders", "prepare_output_dir",
           "resolve_device", "one_line", "PredictionJob"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# The longer side, in pixels, of an overview picture (input | ground truth | prediction per task). A 6000×4000
# photo with five tasks would otherwise give a 36000-pixel-wide PNG that image viewers refuse (PIL warns of a
# decompression bomb); the panels are shrunk (aspect kept) before composing so captions stay legible. The
# per-task PNGs are not affected: they keep the input size.
OVERVIEW_MAX_SIDE = 4096

# How many unreadable inputs the end-of-job summary names before it says "and N more".
SUMMARY_MAX_NAMES = 20


class InferenceError(ValueError):
    """A problem with --input, --output or --device that the user can fix; str(err) is the one-line message."""


def one_line(message) -> str:
    """The message on one line (its lines joined by ' | ', runs of blanks squeezed), so that a user-facing
    error stays one `error:` line on stderr even when a library wrote a multi-line help text."""
    lines = (" ".join(line.split()) for line in str(message).splitlines())
    return " | ".join(line for line in lines if line)


# --- inputs ------------------------------------------------------------------------------------------------

def list_images(path: str) -> list:
    """An image file, or the image files directly inside a folder (sorted); InferenceError otherwise."""
    what = f"input --input {path}"
    if os.path.isfile(path):
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            raise InferenceError(f"{what}: not an image file name; give a file ending in one of "
                                 f"{', '.join(IMAGE_EXTENSIONS)}, a folder of images, or split:val")
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise InferenceError(f"{what}: the folder holds no image files; put images ending in "
                                 f"{', '.join(IMAGE_EXTENSIONS)} in it or give another folder")
        return files
    raise InferenceError(f"{what}: no such file or folder; give an image, a folder of images, or split:val")


def _unique_names(files) -> list:
    """Output names: the file stem, or the whole file name when two inputs share a stem (a.jpg, a.png)."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    return [os.path.basename(f).replace(".", "_") if s in dup else s for f, s in zip(files, stems)]


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
    """float32 H×W×3 in 0..255 from any image PIL can decode (raises what the decoder raises)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


class ImageFolder(Dataset):
    """Plain images -> {'image': 3×H×W normalised and padded, 'meta': {img_name, img_size, orig_size, path}}.

    An image that cannot be decoded (corrupt, truncated, not an image) gives a FailedSample(index, why)
    instead of an exception, so one bad file does not cost the rest of its batch.
    """

    def __init__(self, files, cfg):
        from data import build_transforms

        self.files, self.names = list(files), _unique_names(files)
        self.scale = tuple(int(s) for s in cfg.TEST.SCALE)
        self.transform = build_transforms(cfg, "val")

    def __len__(self) -> int:
        return len(self.files)

    def label(self, i: int) -> str:
        """How the end-of-job summary names input i: its file name."""
        return os.path.basename(self.files[i])

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
    """--device checked before any work (utils.devices.parse_device): None -> CUDA when available, else
    CPU; a bad name -> InferenceError with one line listing what works."""
    try:
        dev = parse_device(name)
    except DeviceError as err:
        raise InferenceError(str(err)) from None
    return dev if dev is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def output_subfolders(infos: dict) -> list:
    """The folders PredictionJob writes under the output folder (per task, depth colormaps, overviews)."""
    subs = []
    for task, info in infos.items():
        subs.append(task)
        if info.sample_rule[0] == "clamp":
            subs.append(f"{task}_color")
    return subs + ["overview"]


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

def restore(x: torch.Tensor, img_size, orig_size=None) -> torch.Tensor:
    """K×H×W padded output -> K×H0×W0 at the original image size (crop padding, undo the shrink)."""
    x = crop_padding(x, img_size)
    if orig_size is not None and tuple(x.shape[-2:]) != tuple(orig_size):
        x = F.interpolate(x[None], size=tuple(int(s) for s in orig_size), mode="bilinear", align_corners=False)[0]
    return x


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


def overview_picture(infos: dict, image_rgb: np.ndarray, maps: dict, gts: dict | None = None,
                     max_side: int = OVERVIEW_MAX_SIDE) -> np.ndarray:
    """visual_grid of input | (ground truth) | predictions, its longer side at most max_side pixels.

    Panels are shrunk before composing (not the finished grid) so the captions keep their size.
    """
    import cv2

    rows = 2 if gts else 1
    cols = 1 + sum(1 for t in infos if t in maps)
    size = _panel_size(image_rgb.shape[:2], rows, cols, max_side)
    if size != tuple(image_rgb.shape[:2]):
        image_rgb = cv2.resize(image_rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        maps = {t: _nearest(np.asarray(v), size) for t, v in maps.items()}
        if gts:
            gts = {t: (_nearest(np.asarray(g), size), _nearest(np.asarray(v), size)) for t, (g, v) in gts.items()}
    grid = visual_grid(infos, image_rgb, maps, gts)
    if max(grid.shape[:2]) > max_side:  # the layout changed under us: still honour the cap
        s = max_side / max(grid.shape[:2])
        grid = cv2.resize(grid, (max(1, int(grid.shape[1] * s)), max(1, int(grid.shape[0] * s))),
                          interpolation=cv2.INTER_AREA)
    return grid


@dataclass
class PredictionJob:
    """Writes predictions, overviews and (with ground truth) feeds an evaluator for each batch.

    `failed` collects the (name, reason) of every unreadable input, for the end-of-job summary; `dataset`
    (the loader's) names them.
    """

    infos: dict
    out_dir: str
    evaluator: object = None
    dataset: object = None
    overview_max_side: int = OVERVIEW_MAX_SIDE
    failed: list = field(default_factory=list)

    def __post_init__(self):
        self.writer = PredictionWriter(self.out_dir, self.infos)
        self.count = 0

    def take_failures(self, batch: dict) -> list:
        """Remove the batch's FailedSample records and keep them as (name, reason); returns the new ones
        (the caller logs each as it happens)."""
        failed = [(input_label(self.dataset, f.index), f.message) for f in batch.pop(ERRORS_KEY, None) or []]
        self.failed.extend(failed)
        return failed

    def process(self, batch: dict, pred: dict) -> None:
        """Score (split inputs) and write every image of a readable batch at its original size."""
        tasks = list(self.infos)
        has_gt = all(t in batch for t in tasks)
        if self.evaluator is not None and has_gt:
            dev = next(iter(pred.values())).device
            gpu_batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
            self.evaluator.update(pred, gpu_batch)
        meta = batch["meta"]
        origs = meta.get("orig_size") or [None] * len(meta["img_name"])
        for j, name in enumerate(meta["img_name"]):
            size, orig = meta["img_size"][j], origs[j]
            maps = {t: vis.prediction_to_numpy(self.infos[t], restore(pred[t][j], size, orig)) for t in pred}
            self.writer.write(name, maps)
            img = vis.denormalize_image(restore(batch["image"][j], size, orig))
            gts = None
            if has_gt:
                gts = {t: vis.target_to_numpy(self.infos[t], crop_padding(batch[t][j], size)) for t in tasks}
            vis.save_png(os.path.join(self.out_dir, "overview", f"{name}.png"),
                         overview_picture(self.infos, img, maps, gts, self.overview_max_side))
            self.count += 1
