"""Check a PASCAL-Context or NYUD-v2 folder before spending GPU hours on it.

    python -m data.verify --dataset pascal|nyud --root DB_ROOT [--deep] [--workers N] [--expect-release]

Why: the readers fail at the FIRST missing file, and a truncated JPEG only shows up when a DataLoader
worker reaches it, hours into training. This command lists EVERY problem at once, with file names:

  cheap (default, seconds): the layout the readers need (split files, folders), every id of every split
      has each of its files (one listdir per folder), duplicate ids, train/val overlap, the split sizes of
      the real release (PASCAL-Context 4998 train / 5105 val, NYUD-v2 795 train / 654 val) and the
      shipped PASCAL part index.
  --deep (minutes on the real data): decodes every image and label in a process pool with the readers'
      own decoders (data/common.py, data/pascal_context.py) and checks shapes, value ranges, and that
      each label has its image's size (the readers' rule: a rescaled copy is resized with a warning,
      anything else is an error).

Levels: an ERROR is something the readers would fail on or silently misread; a WARNING is unusual but
readable. A split size other than the release's (DatasetSpec.split_sizes) is a warning (synthetic and shortened sets are
legitimate) that names the expected count; `--expect-release` makes it an error, for checking a real
download. Exit status: 0 no errors (warnings allowed), 1 errors found, 2 the command could not run (no
dataset folder, bad arguments: one `error:` line).

File naming: NYUD's folders and suffixes come from the reader's own table (data.nyud.MODALITIES); the
PASCAL reader keeps its paths in methods, so `PASCAL_FILES` below is the one table for it, and
tests/data/test_verify.py checks it against the reader.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .commands import CLI_NAMES
from .common import DatasetError, read_split, resolve_dataset_dir
from .datasets import dataset_spec

# The release split sizes and folder names come from the dataset registry (data/datasets.py).
SPLITS = ("train", "val")
SPLIT_FOLDERS = {"PASCALContext": "ImageSets/Context", "NYUD": "gt_sets"}
SYNTHETIC_MARKER = "SYNTHETIC.json"  # written by data.synthetic next to the generated layout

# PASCAL-Context: kind -> (candidate folders, first one holding the file wins; suffix)
PASCAL_FILES = {
    "image": (("JPEGImages",), ".jpg"),
    "semseg": (("semseg/VOC12", "semseg/pascal-context"), ".png"),
    "labelmap": (("pascal-context/trainval",), ".mat"),
    "human_parts": (("human_parts",), ".mat"),
    "normals": (("normals_distill",), ".png"),
    "sal": (("sal_distill",), ".png"),
}
PASCAL_SEMSEG_CLASSES = 21  # 0..20, 255 = ignore
PASCAL_CONTEXT_CLASSES = 459  # LabelMap ids 0..459
NYUD_CLASSES = 40  # stored 0 = unlabeled, 1..40


def file_table(db_name: str) -> dict:
    """kind -> (candidate folders, suffix) of every per-id file the reader of `db_name` opens."""
    if db_name == "NYUD":
        from .nyud import MODALITIES

        return {kind: ((folder,), suffix) for kind, (folder, suffix) in MODALITIES.items()}
    return PASCAL_FILES


@dataclass(frozen=True, order=True)
class Problem:
    """One finding: level 'error' or 'warning', a short kind (the summary groups by it), the file
    (relative to the dataset folder) and what is wrong with it."""

    level: str
    kind: str
    path: str
    detail: str = ""


@dataclass
class Report:
    """Everything `verify_dataset` found, ready to print."""

    db_name: str
    folder: Path
    counts: dict
    problems: list
    decoded: int = 0
    deep: bool = False

    @property
    def errors(self) -> list:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list:
        return [p for p in self.problems if p.level == "warning"]


# --------------------------------------------------------------------------------------------------
# cheap checks


def _listing(folder: Path, cache: dict):
    """The set of names in `folder` (one listdir, memoised), or None when it is not a folder."""
    if folder not in cache:
        cache[folder] = set(os.listdir(folder)) if folder.is_dir() else None
    return cache[folder]


def _split_ids(db_name, folder, split, expect_release, problems):
    """Ids of one split, with problems for a missing/empty file, duplicates and an unusual size."""
    rel = f"{SPLIT_FOLDERS[db_name]}/{split}.txt"
    if not (folder / rel).is_file():
        problems.append(Problem("error", "split file", rel, "missing (one image id per line)"))
        return []
    try:
        ids = read_split(folder / rel, db_name)
    except DatasetError:
        problems.append(Problem("error", "split file", rel, "empty: the split has no ids"))
        return []
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        problems.append(Problem("warning", "duplicate ids", rel,
                                f"{len(dup)} id(s) listed more than once, e.g. {dup[:3]}"))
    want = dataset_spec(db_name).split_sizes.get(split)
    if want is not None and len(ids) != want:
        synthetic = " (a synthetic set: SYNTHETIC.json)" if (folder / SYNTHETIC_MARKER).is_file() else ""
        problems.append(Problem(
            "error" if expect_release else "warning", "split size", rel,
            f"{len(ids)} ids, the real release has {want}{synthetic}"
            + ("" if expect_release else "; --expect-release makes this an error")))
    return ids


def _locate_files(db_name, folder, ids_by_split, problems) -> dict:
    """{id: {kind: relative path or None}} and a problem for every missing folder and file."""
    cache, located = {}, defaultdict(dict)
    for kind, (candidates, suffix) in file_table(db_name).items():
        listings = [(c, _listing(folder / c, cache)) for c in candidates]
        if all(names is None for _, names in listings):
            problems.append(Problem("error", "missing folder", candidates[0] + "/",
                                    f"needed for {kind}" + (f" (or {', '.join(candidates[1:])}/)"
                                                            if len(candidates) > 1 else "")))
            continue
        for split, ids in ids_by_split.items():
            for sid in ids:
                name = f"{sid}{suffix}"
                hit = next((f"{c}/{name}" for c, names in listings if names is not None and name in names), None)
                located[sid][kind] = hit
                if hit is None:
                    problems.append(Problem("error", "missing file", f"{candidates[0]}/{name}",
                                            f"{kind} of {split} id {sid!r}"))
    return located


def _check_part_index(folder, ids_by_split, problems) -> None:
    """The shipped PASCAL part index should cover its split (else the reader scans every .mat file)."""
    from .pascal_context import parse_part_index

    for split, ids in ids_by_split.items():
        rel = f"ImageSets/Parts/{split}.txt"
        path = folder / rel
        if ids and path.is_file() and parse_part_index(path.read_text(), ids) is None:
            problems.append(Problem("warning", "part index", rel,
                                    "malformed or missing ids of the split: the reader ignores it and scans "
                                    "every human_parts .mat file once (slow on the real data)"))


# --------------------------------------------------------------------------------------------------
# deep checks (one sample per task, in worker processes)


def _why(err: Exception) -> str:
    """The root cause of a decoder error without the absolute path the DatasetError repeats."""
    cause = err.__cause__ or err
    return f"{type(cause).__name__}: {cause}" if cause is not err else str(err)


def _size_problem(rel, path, sid, label_hw, image_hw):
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


def _values_problem(rel, arr, allowed_max, extra=(), what="label values"):
    """An error when integer labels fall outside 0..allowed_max (plus `extra` values)."""
    vals = np.unique(arr)
    bad = vals[((vals < 0) | (vals > allowed_max)) & ~np.isin(vals, list(extra))]
    if bad.size:
        allowed = f"0..{allowed_max}" + "".join(f", {e}" for e in extra)
        return Problem("error", "value range", rel, f"{what} {bad[:8].tolist()} outside {allowed}")
    return None


def _decode_files(root, sid, rels, image_hw, out, check_file) -> None:
    """Run `check_file(kind, path, rel, sid, image_hw) -> [Problem or None]` on each label file of a sample;
    a file the reader cannot decode is one 'unreadable' error (the reader's message)."""
    for kind, rel in rels.items():
        if rel is None or kind == "image":
            continue
        try:
            out.extend(p for p in check_file(kind, root / rel, rel, sid, image_hw) if p is not None)
        except DatasetError as err:
            out.append(Problem("error", "unreadable", rel, _why(err)))


def _pascal_file(kind, path, rel, sid, image_hw) -> list:
    """Problems of one PASCAL-Context label file."""
    from .common import load_mat, read_rgb_png, read_single_channel
    from .pascal_context import human_parts_from_anno, part_index_entry

    if kind == "semseg":
        lab = read_single_channel(path, sid)
        return [_size_problem(rel, path, sid, lab.shape[:2], image_hw),
                _values_problem(rel, lab, PASCAL_SEMSEG_CLASSES - 1, extra=(255,))]
    if kind in ("sal", "normals"):
        lab = (read_single_channel if kind == "sal" else read_rgb_png)(path, sid)
        return [_size_problem(rel, path, sid, lab.shape[:2], image_hw)]
    if kind == "labelmap":
        lab = np.asarray(load_mat(path, sid, "LabelMap"))
        if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
            return [Problem("error", "label shape", rel, f"LabelMap should be a 2-D integer array, "
                                                         f"got {lab.dtype} {lab.shape}")]
        return [_size_problem(rel, path, sid, lab.shape, image_hw),
                _values_problem(rel, lab, PASCAL_CONTEXT_CLASSES, what="LabelMap ids")]
    if kind == "human_parts":
        anno = load_mat(path, sid, "anno")
        part_index_entry(anno, path, sid)
        parts = human_parts_from_anno(anno, path, sid)
        return [] if parts is None else [_size_problem(rel, path, sid, parts.shape, image_hw)]
    return []


def _nyud_file(kind, path, rel, sid, image_hw) -> list:
    """Problems of one NYUD-v2 label file."""
    from .common import load_npy, read_rgb_png, read_single_channel

    if kind == "semseg":
        lab = read_single_channel(path, sid)
        return [_size_problem(rel, path, sid, lab.shape[:2], image_hw), _values_problem(rel, lab, NYUD_CLASSES)]
    if kind == "depth":
        depth = load_npy(path, sid)
        if depth.ndim == 3 and depth.shape[2] == 1:
            depth = depth[:, :, 0]
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
            return [Problem("error", "label shape", rel, f"depth should be a numeric H×W array, "
                                                         f"got {depth.dtype} {depth.shape}")]
        out = [_size_problem(rel, path, sid, depth.shape, image_hw)]
        if not np.isfinite(depth).all() or (depth < 0).any():
            out.append(Problem("error", "value range", rel, "depth has NaN/inf or negative values "
                                                            "(metres expected, 0 = invalid)"))
        return out
    if kind == "normals":
        return [_size_problem(rel, path, sid, read_rgb_png(path, sid).shape[:2], image_hw)]
    if kind == "edge":
        lab = read_single_channel(path, sid)
        out = [_size_problem(rel, path, sid, lab.shape[:2], image_hw)]
        odd = np.setdiff1d(np.unique(lab), [0, 255])
        if odd.size:
            out.append(Problem("warning", "value range", rel, f"edge values {odd[:8].tolist()} besides "
                                                              f"0/255 (the reader divides by 255)"))
        return out
    return []


def check_sample(job) -> list:
    """Decode one sample's files: (db_name, dataset folder, id, {kind: rel path or None}) -> problems."""
    from .common import read_rgb

    db_name, root, sid, rels = job
    root = Path(root)
    out = []
    image_hw = None
    if rels.get("image") is not None:
        try:
            image = read_rgb(root / rels["image"], sid)
            if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
                out.append(Problem("error", "image shape", rels["image"], f"decoded to {image.shape}"))
            else:
                image_hw = image.shape[:2]
        except DatasetError as err:
            out.append(Problem("error", "unreadable", rels["image"], _why(err)))
    try:  # labels are decoded even without a readable image (their sizes are then not compared)
        _decode_files(root, sid, rels, image_hw, out, _pascal_file if db_name == "PASCALContext" else _nyud_file)
    except Exception as err:  # noqa: BLE001 - a worker must report, never die on one odd file
        out.append(Problem("error", "unreadable", sid, f"{type(err).__name__}: {err}"))
    return out


def _deep_check(db_name, folder, located, workers, progress) -> tuple:
    jobs = [(db_name, str(folder), sid, rels) for sid, rels in located.items()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="img", desc=f"verify {db_name} (decode)")
    problems = []
    try:
        if workers <= 1 or len(jobs) < 2:
            for job in jobs:
                problems += check_sample(job)
                if bar is not None:
                    bar.update(1)
        else:
            import multiprocessing as mp

            chunk = max(1, min(16, len(jobs) // (4 * workers)))  # few round trips, still a smooth bar
            with mp.get_context().Pool(min(workers, len(jobs))) as pool:
                for found in pool.imap_unordered(check_sample, jobs, chunksize=chunk):
                    problems += found
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return problems, len(jobs)


# --------------------------------------------------------------------------------------------------
# entry points


def verify_dataset(db_name: str, root, deep: bool = False, workers: int | None = None,
                   expect_release: bool = False, progress: bool = True) -> Report:
    """Check the dataset `db_name` ('PASCALContext' or 'NYUD') under `root` (db_root or the dataset folder).

    Raises DatasetError only when there is no dataset folder at all; everything else is a Problem.
    """
    folder = resolve_dataset_dir(db_name, root)
    problems: list = []
    ids_by_split = {split: _split_ids(db_name, folder, split, expect_release, problems) for split in SPLITS}
    overlap = set(ids_by_split["train"]) & set(ids_by_split["val"])
    if overlap:
        problems.append(Problem("warning", "train/val overlap", f"{SPLIT_FOLDERS[db_name]}/",
                                f"{len(overlap)} id(s) in both splits, e.g. {sorted(overlap)[:3]}"))
    located = _locate_files(db_name, folder, ids_by_split, problems)
    if db_name == "PASCALContext":
        _check_part_index(folder, ids_by_split, problems)
    report = Report(db_name, folder, {s: len(i) for s, i in ids_by_split.items()}, problems, deep=deep)
    if deep and located:
        workers = default_workers() if workers is None else int(workers)
        found, report.decoded = _deep_check(db_name, folder, located, workers, progress)
        problems += found
    report.problems = sorted(set(problems))
    return report


def default_workers() -> int:
    """Decoding is CPU-bound: one process per core, at most 8 (more mostly waits on the disk)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def format_report(report: Report, show_all: bool = False, per_kind: int = 10) -> str:
    """A grouped summary: one header per (level, kind) with its count, then the files."""
    lines = [f"{report.db_name} at {report.folder}: train {report.counts.get('train', 0)} ids, "
             f"val {report.counts.get('val', 0)} ids"
             + (f"; {report.decoded} samples decoded" if report.deep
                else "; files checked by name (--deep decodes them)")]
    groups = defaultdict(list)
    for p in report.problems:
        groups[(p.level, p.kind)].append(p)
    for (level, kind), items in sorted(groups.items(), key=lambda kv: (kv[0][0] != "error", kv[0][1])):
        lines.append(f"{level.upper():7s} {kind}: {len(items)}")
        shown = items if show_all else items[:per_kind]
        for p in shown:
            lines.append(f"    {p.path}" + (f": {p.detail}" if p.detail else ""))
        if len(items) > len(shown):
            lines.append(f"    ... and {len(items) - len(shown)} more (--all lists every one)")
    n_err, n_warn = len(report.errors), len(report.warnings)
    verdict = "FAILED" if n_err else "OK"
    lines.append(f"result: {verdict}: {n_err} error(s), {n_warn} warning(s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.verify", description=__doc__.split("\n\n")[0],
                                 epilog="Exit status: 0 no errors, 1 errors found, 2 could not run.")
    ap.add_argument("--dataset", choices=sorted(CLI_NAMES), required=True)
    ap.add_argument("--root", required=True, help="db_root: the folder that contains PASCALContext/ or NYUDv2/")
    ap.add_argument("--deep", action="store_true", help="decode every image and label (slow, parallel)")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes for --deep (default: cores, max 8)")
    ap.add_argument("--expect-release", action="store_true",
                    help="a split size other than the real release's is an error, not a warning")
    ap.add_argument("--all", action="store_true", help="list every problem file, not the first 10 per kind")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    db_name = CLI_NAMES[args.dataset]
    if args.workers is not None and args.workers < 0:
        print(f"error: --workers {args.workers}: must be 0 or more; use 0 or 1 to decode in this process",
              file=sys.stderr)
        return 2
    try:
        report = verify_dataset(db_name, args.root, deep=args.deep, workers=args.workers,
                                expect_release=args.expect_release, progress=not args.no_progress)
    except DatasetError:
        where = Path(os.path.expanduser(args.root)) / dataset_spec(db_name).folder
        print(f"error: dataset folder {where} (--root {args.root}): not found; download and unpack it with "
              f"`python -m data.download --dataset {args.dataset} --root {args.root}`", file=sys.stderr)
        return 2
    print(format_report(report, show_all=args.all))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
