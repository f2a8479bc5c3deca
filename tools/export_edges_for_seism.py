"""Write edge predictions as the PNGs the external MATLAB boundary benchmark expects (spec §7.2).

The framework computes odsF itself (evaluation/boundary.py). This tool is for users who must reproduce
the published protocol byte for byte with prismformore's Boundary-Detection-Evaluation-Tools (SEISM):
that wrapper reads `<prediction_path>/edge/<id>.png` and asserts the file count (5105 for PASCALContext
val, 654 for NYUD val).

Each PNG: sigmoid(logit)·255 at the padded network size, cropped back to the original H0×W0 (centred
padding: top (H - H0)//2, left (W - W0)//2), cast to uint8 by truncation, single channel 8-bit.

    python tools/export_edges_for_seism.py --config_exp runs/x/config.yml --trained_model runs/x/checkpoints/best.pth \
        --output preds_x [--data_root /data] [--split val] [--device cuda] [--batch_size 6]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation.postprocess import edge_uint8  # noqa: E402

__all__ = ["save_edge_pngs", "edge_png_arrays", "main"]

EXPECTED_COUNT = {"PASCALContext": 5105, "NYUD": 654}


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
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, arr in edge_png_arrays(edge, meta, is_logits):
        path = os.path.join(folder, f"{name}.png")
        fd, tmp = tempfile.mkstemp(prefix=".edge.", suffix=".png", dir=folder)
        os.close(fd)
        try:
            Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(tmp, format="PNG")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        paths.append(path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export edge PNGs for the external MATLAB (SEISM) boundary benchmark.")
    p.add_argument("--config_exp", required=True, help="experiment config (or the run's saved config.yml)")
    p.add_argument("--trained_model", required=True, help="checkpoint to evaluate")
    p.add_argument("--output", required=True, help="prediction_path: PNGs go to <output>/edge/<id>.png")
    p.add_argument("--data_root", default=None, help="dataset root (default: $TASKDIFFUSION_DATA / config db_root)")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--batch_size", type=int, default=None, help="images per forward (default valBatch)")
    p.add_argument("--seed", type=int, default=None, help="DDIM sampling seed (default: the config's seed)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # The model, data and config packages are imported only here: the pure functions above need none of them.
    from tqdm import tqdm

    from data import build_dataloader
    from models import build_model
    from utils.checkpoint import load_model_weights
    from utils.config import ConfigError, load_config

    try:
        cfg = load_config(args.config_exp, opts=args.opts, data_root=args.data_root)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "edge" not in cfg.TASKS.NAMES:
        print(f"error: the config {args.config_exp} has no edge task (task_dictionary.include_edge)", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(cfg)
    load_model_weights(model, args.trained_model, strict=True)
    model.to(device).eval()
    loader = build_dataloader(cfg, args.split, distributed=False, shuffle=False, batch_size=args.batch_size)
    try:  # the evaluation loop's per-image noise, so the PNGs equal what the in-framework evaluation scored
        from engine.evaluator import eval_noise
    except ImportError:
        eval_noise = None
    seed = int(cfg.get("seed", 0) if args.seed is None else args.seed)
    written = 0
    with torch.no_grad():
        for batch in tqdm(loader, desc="export edges", dynamic_ncols=True):
            images = batch["image"].to(device)
            noise = eval_noise(model, images, list(batch["meta"]["img_name"]), seed) if eval_noise else None
            out = model(images, noise=noise) if noise is not None else model(images)
            written += len(save_edge_pngs(out["pred"]["edge"], batch["meta"], args.output))
    expected = EXPECTED_COUNT.get(cfg.db_name)
    note = "" if expected in (None, written) or args.split != "val" else \
        f" (the MATLAB wrapper expects {expected} files for {cfg.db_name} val)"
    print(f"wrote {written} edge PNGs to {os.path.join(args.output, 'edge')}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
