"""What `python -m data.verify` asks of a dataset: where each sample's files are, and how to judge one.

A dataset module (data/datasets/<name>.py) gives its DatasetSpec a `checks` object, an instance of
`DatasetChecks` (or a subclass), and data/verify.py stays one generic program that loops over it:

  split_ids(folder, split)        the ids of one split (default: `<split_folder>/<split>.txt`, one per line)
  files                           {kind: (candidate folders, suffix)}: every per-sample file the reader
                                  opens; the first candidate folder that holds the file wins
  relpath(folder, suffix, split, sid)  where one file of a sample is (default `<folder>/<sid><suffix>`)
  extra_checks(root, ids_by_split)     dataset-wide findings beyond the file list (default: none)
  check_file(kind, path, rel, sid, image_hw)  the problems of one decoded file (default: none)

`image_kind` names the input image among the kinds; it is decoded first and its size is what every label
must match (`size_problem`, the readers' rule). The small helpers below (`Problem`, `size_problem`,
`values_problem`) are what the per-file checks return.

Why a module of its own: the dataset modules use these pieces and data/verify.py imports the dataset
modules (through the registry package), so the pieces must sit below both.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = ["Problem", "DatasetChecks", "size_problem", "values_problem", "why"]


@dataclass(frozen=True, order=True)
class Problem:
    """One finding: level 'error' or 'warning', a short kind (the summary groups by it), the file
    (relative to the dataset folder) and what is wrong with it."""

    level: str
    kind: str
    path: str
    detail: str = ""


def why(err: Exception) -> str:
    """The root cause of a decoder error without the absolute path the DatasetError repeats."""
    cause = err.__cause__ or err
    return f"{type(cause).__name__}: {cause}" if cause is not err else str(err)


def size_problem(rel, path, sid, label_hw, image_hw):
    """The readers' rule (fit_to_image): same size fine, a rescale a warning, anything else an error."""
    from .common import fit_to_image

    if image_hw is None or tuple(label_hw) == tuple(image_hw):  # no image to compare with
        return None
    dummy = np.zeros(tuple(label_hw), np.uint8)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            fit_to_image(dummy, image_hw, path, sid)
        except DatasetError:
            return Problem("error", "label size", rel, f"{label_hw[0]}x{label_hw[1]}, the image is "
                                                       f"{image_hw[0]}x{image_hw[1]} (not a rescaled copy)")
    return Problem("warning", "label size", rel, f"{label_hw[0]}x{label_hw[1]}, the image is "
                                                 f"{image_hw[0]}x{image_hw[1]}: the reader resizes it")


def values_problem(rel, arr, allowed_max, extra=(), what="label values", allowed=None):
    """An error when integer labels fall outside 0..allowed_max (plus `extra` values), or, with
    `allowed`, outside that explicit set."""
    vals = np.unique(arr)
    if allowed is not None:
        bad = vals[~np.isin(vals, list(allowed))]
        text = f"the {len(allowed)} valid ids"
    else:
        bad = vals[((vals < 0) | (vals > allowed_max)) & ~np.isin(vals, list(extra))]
        text = f"0..{allowed_max}" + "".join(f", {e}" for e in extra)
    if bad.size:
        return Problem("error", "value range", rel, f"{what} {bad[:8].tolist()} outside {text}")
    return None


class DatasetChecks:
    """The verify facts of one dataset; subclass it (or set the attributes) in the dataset's module.

    split_folder: where `<split>.txt` split files live (for the default `split_ids`).
    files: {kind: (candidate folders, suffix)}; image_kind: the input image's kind.
    splits: the splits data.verify checks.
    """

    split_folder = ""
    files: dict = {}
    image_kind = "image"
    splits = ("train", "val")

    def split_ids(self, folder: Path, split: str):
        """The ids of `split` in file order, or a Problem saying why there are none."""
        from .common import read_split

        rel = f"{self.split_folder}/{split}.txt"
        if not (folder / rel).is_file():
            return Problem("error", "split file", rel, "missing (one image id per line)")
        try:
            return read_split(folder / rel, "dataset")
        except DatasetError:
            return Problem("error", "split file", rel, "empty: the split has no ids")

    def split_place(self, split: str) -> str:
        """The file or folder that defines a split (named by the split-size and overlap findings)."""
        return f"{self.split_folder}/{split}.txt"

    def relpath(self, folder: str, suffix: str, split: str, sid: str) -> str:
        return f"{folder}/{sid}{suffix}"

    def extra_checks(self, root: Path, ids_by_split: dict) -> list:
        return []

    def check_file(self, kind: str, path: Path, rel: str, sid: str, image_hw) -> list:
        """Problems (or None entries) of one label file; raise DatasetError when it cannot be decoded."""
        return []

    def read_image(self, path: Path, sid: str):
        from .common import read_rgb

        return read_rgb(path, sid)
