"""Check a dataset folder before spending GPU hours on it.

    python -m data.verify --dataset pascal|nyud|cityscapes --root DB_ROOT [--deep] [--workers N] [--expect-release]

Why: the readers fail at the FIRST missing file, and a truncated JPEG only shows up when a DataLoader
worker reaches it, hours into training. This command lists EVERY problem at once, with file names:

  cheap (default, seconds): the layout the readers need (split files or folders), every id of every split
      has each of its files (one listdir per folder), duplicate ids, train/val overlap, the split sizes of
      the real release (PASCAL-Context 4998 train / 5105 val, NYUD-v2 795 train / 654 val, Cityscapes
      2975 / 500) and each dataset's own extra checks (the shipped PASCAL part index).
  --deep (minutes on the real data): decodes every image and label in a process pool with the readers'
      own decoders and checks shapes, value ranges, and that each label has its image's size (the
      readers' rule: a rescaled copy is resized with a warning, anything else is an error).

Levels: an ERROR is something the readers would fail on or silently misread; a WARNING is unusual but
readable. A split size other than the release's (DatasetSpec.split_sizes) is a warning (synthetic and shortened sets are
legitimate) that names the expected count; `--expect-release` makes it an error, for checking a real
download. Exit status: 0 no errors (warnings allowed), 1 errors found, 2 the command could not run (no
dataset folder, bad arguments: one `error:` line).

This is a generic program: what it knows of a dataset (where each sample's files are, how one file is
judged) is the `checks` object of its DatasetSpec (data/checks.py's DatasetChecks, defined in the
dataset's own module under data/datasets/), so any registered dataset with one, a plug-in included,
is checked the same way.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .checks import Problem, why as _why
from .common import DatasetError, resolve_dataset_dir
from .datasets import cli_names, dataset_spec, spec_by_cli_name

SYNTHETIC_MARKER = "SYNTHETIC.json"  # written by data.synthetic next to the generated layout


def checks_of(db_name: str):
    """The DatasetChecks of a registered dataset (DatasetError when it has none)."""
    from .tasks import resolve

    spec = dataset_spec(db_name)
    if spec.checks is None:
        raise DatasetError(f"dataset {db_name} has no verify checks (DatasetSpec.checks is None)")
    return resolve(spec.checks)


def file_table(db_name: str) -> dict:
    """kind -> (candidate folders, suffix) of every per-id file the reader of `db_name` opens."""
    return dict(checks_of(db_name).files)


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


def _split_ids(db_name, checks, folder, split, expect_release, problems):
    """Ids of one split, with problems for a missing/empty split, duplicates and an unusual size."""
    ids = checks.split_ids(folder, split)
    if isinstance(ids, Problem):
        problems.append(ids)
        return []
    rel = checks.split_place(split)
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


def _locate_files(checks, folder, ids_by_split, problems) -> dict:
    """{id: {kind: relative path or None}} and a problem for every missing folder and file."""
    cache, located = {}, defaultdict(dict)
    for kind, (candidates, suffix) in checks.files.items():
        if all(not (folder / c).is_dir() for c in candidates):
            problems.append(Problem("error", "missing folder", candidates[0] + "/",
                                    f"needed for {kind}" + (f" (or {', '.join(candidates[1:])}/)"
                                                            if len(candidates) > 1 else "")))
            continue
        for split, ids in ids_by_split.items():
            for sid in ids:
                rels = [checks.relpath(c, suffix, split, sid) for c in candidates]
                hit = None
                for rel in rels:
                    parent, _, name = rel.rpartition("/")
                    names = _listing(folder / parent, cache)
                    if names is not None and name in names:
                        hit = rel
                        break
                located[sid][kind] = hit
                if hit is None:
                    problems.append(Problem("error", "missing file", rels[0], f"{kind} of {split} id {sid!r}"))
    return located


# --------------------------------------------------------------------------------------------------
# deep checks (one sample per task, in worker processes)


def _decode_files(checks, root, sid, rels, image_hw, out) -> None:
    """Run the dataset's `check_file(kind, path, rel, sid, image_hw) -> [Problem or None]` on each label
    file of a sample; a file the reader cannot decode is one 'unreadable' error (the reader's message)."""
    for kind, rel in rels.items():
        if rel is None or kind == checks.image_kind:
            continue
        try:
            out.extend(p for p in checks.check_file(kind, root / rel, rel, sid, image_hw) if p is not None)
        except DatasetError as err:
            out.append(Problem("error", "unreadable", rel, _why(err)))


def check_sample(job) -> list:
    """Decode one sample's files: (db_name, dataset folder, id, {kind: rel path or None}) -> problems."""
    db_name, root, sid, rels = job
    checks = checks_of(db_name)
    root = Path(root)
    out = []
    image_hw = None
    rel_image = rels.get(checks.image_kind)
    if rel_image is not None:
        try:
            image = checks.read_image(root / rel_image, sid)
            if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
                out.append(Problem("error", "image shape", rel_image, f"decoded to {image.shape}"))
            else:
                image_hw = image.shape[:2]
        except DatasetError as err:
            out.append(Problem("error", "unreadable", rel_image, _why(err)))
    try:  # labels are decoded even without a readable image (their sizes are then not compared)
        _decode_files(checks, root, sid, rels, image_hw, out)
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
    """Check the registered dataset `db_name` (e.g. 'PASCALContext') under `root` (db_root or the dataset
    folder), with the checks of its DatasetSpec.

    Raises DatasetError only when there is no dataset folder at all (or the dataset has no checks);
    everything else is a Problem.
    """
    checks = checks_of(db_name)
    folder = resolve_dataset_dir(db_name, root)
    problems: list = []
    ids_by_split = {split: _split_ids(db_name, checks, folder, split, expect_release, problems)
                    for split in checks.splits}
    seen: dict = {}
    for split, ids in ids_by_split.items():
        for other, before in seen.items():
            overlap = set(ids) & before
            if overlap:
                problems.append(Problem("warning", f"{other}/{split} overlap", checks.split_place(split),
                                        f"{len(overlap)} id(s) in both splits, e.g. {sorted(overlap)[:3]}"))
        seen[split] = set(ids)
    located = _locate_files(checks, folder, ids_by_split, problems)
    problems += checks.extra_checks(folder, ids_by_split)
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
    ap.add_argument("--dataset", choices=cli_names("checks"), required=True)
    ap.add_argument("--root", required=True, help="db_root: the folder that contains the dataset folder "
                                                  "(PASCALContext/, NYUDv2/, cityscapes/)")
    ap.add_argument("--deep", action="store_true", help="decode every image and label (slow, parallel)")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes for --deep (default: cores, max 8)")
    ap.add_argument("--expect-release", action="store_true",
                    help="a split size other than the real release's is an error, not a warning")
    ap.add_argument("--all", action="store_true", help="list every problem file, not the first 10 per kind")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    db_name = spec_by_cli_name(args.dataset).name
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
