"""Synthetic datasets in the exact on-disk layouts of the real releases, for every registered dataset
that has a synthetic writer (PASCAL-Context, NYUD-v2, Cityscapes, and plug-ins).

Why: the demo and the tests must exercise the real readers (same folders, names and file formats)
without the gigabytes of real data. Scenes are small but learnable and consistent across tasks; what one
dataset's scenes look like is written in its own module (data/datasets/<name>.py: its SyntheticWriter,
see data/synthetic_base.py). This program is generic: it finds the writer through the dataset's
DatasetSpec (`synthesizer`), draws each image from its own seeded generator, and writes the folder
atomically with a marker.

Usage:
    python -m data.synthetic --dataset pascal|nyud|cityscapes --out DB_ROOT --train 80 --val 20 --seed 0 [--size H W]
writes DB_ROOT/<dataset folder>/ (PASCALContext/, NYUDv2/, cityscapes/) plus a SYNTHETIC.json marker with
the parameters, so a second run with the same parameters does nothing. `render_scene(dataset, seed, idx,
size)` returns the ground truth arrays of one image, which the tests compare with what the readers decode.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .datasets import dataset_names, dataset_spec

GENERATOR_VERSION = 1
MARKER = "SYNTHETIC.json"


def writers() -> dict:
    """{--dataset name: SyntheticWriter} of every registered dataset with a synthetic writer."""
    from .tasks import resolve

    out = {}
    for name in dataset_names():
        spec = dataset_spec(name)
        if spec.synthesizer is not None and spec.synthetic:
            out[spec.synthetic] = resolve(spec.synthesizer)
    return out


def writer_of(dataset: str):
    """The writer of a --dataset name; ValueError listing the known ones."""
    table = writers()
    if dataset not in table:
        raise ValueError(f"dataset must be one of {', '.join(table)}, got {dataset!r}")
    return table[dataset]


def sample_id(dataset: str, idx: int, split: str = "train") -> str:
    """Image id of generated index `idx` (PASCAL 2008_000000 style, NYUD 0001 style, ...)."""
    return writer_of(dataset).sample_id(idx, split)


def sample_index(dataset: str, sid: str) -> int:
    """Inverse of `sample_id`."""
    return writer_of(dataset).sample_index(sid)


def image_size(dataset: str, idx: int, size=None):
    """(H, W) of image `idx` (PASCAL sizes vary a little, so that padding is exercised)."""
    return writer_of(dataset).image_size(idx, size)


def render_scene(dataset: str, seed: int, idx: int, size=None, split: str = "train") -> dict:
    """Ground-truth arrays of generated image `idx` (the same ones `generate` writes to disk)."""
    writer = writer_of(dataset)
    h, w = writer.image_size(idx, size)
    scene = writer.render(writer.rng(seed, idx), h, w, idx)
    scene["id"] = writer.sample_id(idx, split)
    return scene


def read_marker(dataset_dir) -> dict | None:
    p = Path(dataset_dir) / MARKER
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def generate(dataset: str, out, n_train: int, n_val: int, seed: int = 0, size=None, overwrite: bool = False,
             progress: bool = False) -> Path:
    """Write a synthetic dataset under `out` (the db_root) and return the dataset folder.

    Idempotent: when `<out>/<folder>/SYNTHETIC.json` records the same parameters nothing is written.
    A folder with other parameters is replaced only with `overwrite=True`; a folder without the marker
    (real data!) is never touched.
    """
    writer = writer_of(dataset)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"need at least one train and one val image, got train={n_train} val={n_val}")
    size = tuple(int(s) for s in size) if size is not None else tuple(writer.default_size)
    if min(size) < writer.min_size:
        raise ValueError(f"image size must be at least {writer.min_size}x{writer.min_size}, got {size}")
    root = Path(out) / dataset_spec(writer.db_name).folder
    params = {"generator": "taskdiffusion.data.synthetic", "version": GENERATOR_VERSION, "dataset": dataset,
              "n_train": int(n_train), "n_val": int(n_val), "seed": int(seed), "size": list(size)}
    if root.exists():
        marker = read_marker(root)
        if marker == params:
            return root
        if marker is None:
            raise FileExistsError(f"{root} exists and is not a synthetic dataset (no {MARKER}); "
                                  f"refusing to write into it")
        if not overwrite:
            raise FileExistsError(f"{root} holds a synthetic dataset with other parameters ({marker}); "
                                  f"pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(root)
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    for folder in writer.folders:
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    ids = {"train": [], "val": []}
    kept = {"train": {}, "val": {}}
    indices = range(n_train + n_val)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"synthetic {dataset}", unit="img")
    for idx in indices:
        split = "train" if idx < n_train else "val"
        scene = render_scene(dataset, seed, idx, size, split)
        writer.write(tmp, split, scene["id"], scene)
        ids[split].append(scene["id"])
        kept[split][scene["id"]] = writer.keep(scene)
    writer.write_splits(tmp, ids, kept)
    (tmp / MARKER).write_text(json.dumps(params, indent=1))
    os.replace(tmp, root)  # the folder appears complete or not at all
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    table = writers()
    ap.add_argument("--dataset", choices=list(table), required=True,
                    help="; ".join(f"{k}: {w.description}" for k, w in table.items() if w.description))
    ap.add_argument("--out", required=True, help="db_root: the dataset is written to OUT/<its folder> "
                                                 "(PASCALContext/, NYUDv2/, cityscapes/)")
    ap.add_argument("--train", type=int, default=80, help="number of train images")
    ap.add_argument("--val", type=int, default=20, help="number of val images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                    help="image size (default: " + ", ".join(f"{k} {w.default_size[0]} {w.default_size[1]}"
                                                             for k, w in table.items()) + ")")
    ap.add_argument("--overwrite", action="store_true", help="replace a synthetic set made with other parameters")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = Path(args.out) / dataset_spec(table[args.dataset].db_name).folder
        existed = read_marker(root)
        path = generate(args.dataset, args.out, args.train, args.val, args.seed, args.size, args.overwrite,
                        progress=True)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if existed == read_marker(path):
        print(f"{path} already holds this synthetic set ({args.train} train / {args.val} val, "
              f"seed {args.seed}); nothing to do")
    else:
        print(f"wrote {args.train} train + {args.val} val synthetic {args.dataset} images to {path} "
              f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
