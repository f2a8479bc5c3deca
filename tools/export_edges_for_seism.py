"""Write edge predictions as the PNGs the external MATLAB boundary benchmark expects (docs/method.md#edge-prediction-pngs).

The framework computes odsF itself (evaluation/boundary.py). This tool is for users who must reproduce
the published protocol byte for byte with prismformore's Boundary-Detection-Evaluation-Tools (SEISM):
that wrapper reads `<prediction_path>/edge/<id>.png` and asserts the file count (5105 for PASCALContext
val, 654 for NYUD val: the DatasetSpec.split_sizes of data/registry.py).

Each PNG: sigmoid(logit)·255 at the padded network size, cropped back to the original H0×W0 (centred
padding: top (H - H0)//2, left (W - W0)//2), cast to uint8 by truncation, single channel 8-bit.

    python tools/export_edges_for_seism.py --config_exp runs/x/config.yml --trained_model runs/x/checkpoints/best.pth \
        --output preds_x [--data_root /data] [--split val] [--device cuda] [--batch_size 6]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation.postprocess import edge_uint8  # noqa: E402
from utils.io import atomic_write  # noqa: E402

__all__ = ["save_edge_pngs", "edge_png_arrays", "SeismSink", "main"]


def edge_png_arrays(edge: torch.Tensor, meta, is_logits: bool = True) -> list:
    """[(img_name, H0×W0 uint8 array)] for a batch of edge outputs.

    edge: B×1×H×W (or B×H×W) logits (is_logits=True) or probabilities in [0, 1] at the padded size;
    meta: the batch's {'img_name': [...], 'img_size': [tensor([H0, W0]), ...]}.
    """
    x = edge.detach().float()
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"edge output must have one channel, got {tuple(edge.shape)}")
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"edge output must be B×1×H×W or B×H×W, got {tuple(edge.shape)}")
    scores = (torch.sigmoid(x) if is_logits else x) * 255.0
    names, sizes = list(meta["img_name"]), list(meta["img_size"])
    if not (len(names) == len(sizes) == x.shape[0]):
        raise ValueError(f"batch of {x.shape[0]} edge maps but meta has {len(names)} names and {len(sizes)} sizes")
    return [(str(n), edge_uint8(scores[i], sizes[i]).numpy()) for i, (n, s) in enumerate(zip(names, sizes))]


def save_edge_pngs(edge: torch.Tensor, meta, out_dir: str, is_logits: bool = True) -> list:
    """Write `<out_dir>/edge/<img_name>.png` for every image of the batch; returns the paths written.

    Files are written to a temporary name and renamed, so an interrupted export leaves no truncated PNG.
    """
    folder = os.path.join(out_dir, "edge")
    paths = []
    for name, arr in edge_png_arrays(edge, meta, is_logits):
        img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
        paths.append(atomic_write(os.path.join(folder, f"{name}.png"), lambda tmp: img.save(tmp, format="PNG")))
    return paths


class SeismSink:
    """A sink of the shared prediction path (engine.predict.run_predictions): each batch's edge maps as
    SEISM PNGs under <out_dir>/edge/, so the exported maps are the ones evaluation and infer.py predict."""

    def __init__(self, out_dir: str):
        self.out_dir, self.written = out_dir, 0

    def add(self, done) -> None:
        self.written += len(save_edge_pngs(done.pred["edge"], done.batch["meta"], self.out_dir))


def build_parser() -> argparse.ArgumentParser:
    from utils.cli import add_model_args

    p = argparse.ArgumentParser(description="Export edge PNGs for the external MATLAB (SEISM) boundary benchmark.")
    p.add_argument("--output", required=True, help="prediction_path: PNGs go to <output>/edge/<id>.png")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    return add_model_args(p)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # The model, data and config packages are imported only here: the pure functions above need none of them.
    from tqdm import tqdm

    from data import DatasetError, build_dataloader
    from data.datasets import dataset_spec
    from data.tasks import task_infos
    from engine.predict import run_predictions
    from utils.checkpoint import CheckpointError
    from engine.cli import load_cli_config, load_trained_model
    from utils.cli import fail
    from utils.devices import DeviceError, pick_device
    from utils.io import StorageError
    from utils.precision import bf16_autocast

    cfg = load_cli_config(args)
    if cfg is None:
        return 2
    if "edge" not in cfg.TASKS.NAMES:
        return fail(f"the config {args.config_exp} has no edge task (task_dictionary.include_edge)")
    try:
        device = pick_device(args.device)
    except DeviceError as err:
        return fail(err)
    try:
        model = load_trained_model(cfg, args.trained_model, device, trusted=args.trust_checkpoint,
                                   raw=bool(getattr(args, "raw_weights", False)))
        loader = build_dataloader(cfg, args.split, distributed=False, shuffle=False, batch_size=args.batch_size,
                                  catch_errors=True)
    except (CheckpointError, DatasetError, FileNotFoundError) as err:
        return fail(err)
    # the evaluation path's per-image noise and precision, so the PNGs equal what the framework scored
    seed = int(cfg.get("seed", 0) if args.seed is None else args.seed)
    sink = SeismSink(args.output)
    try:
        run_predictions(model, loader, [sink], tasks=task_infos(cfg.db_name, ["edge"]), device=device, seed=seed,
                        amp=bf16_autocast(cfg, device), data_errors="abort",
                        progress=tqdm(total=len(loader.dataset), desc="export edges", dynamic_ncols=True),
                        advice="fix or remove the file and export again: SEISM needs every image")
    except DatasetError as err:
        return fail(err)
    except StorageError as err:  # full disk, quota, I/O error, read-only: the PNGs written so far are complete
        return fail(f"{err}; free space and run the same command again", 75)
    written = sink.written
    expected = dataset_spec(cfg.db_name).split_sizes.get("val")  # the release size the wrapper asserts
    note = "" if expected in (None, written) or args.split != "val" else \
        f" (the MATLAB wrapper expects {expected} files for {cfg.db_name} val)"
    print(f"wrote {written} edge PNGs to {os.path.join(args.output, 'edge')}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
