"""Parameters, FLOPs and CPU time per image of every paper-size backbone config.

For each config (the paper's ViT-B/16 and ViT-L/16, and the timm Swin-L, DINOv2 ViT-L/14 and
ConvNeXt-L configs) at its own crop size, this measures the backbone as the model uses it (trunk +
the per-level 1×1 projections + resampling to the decoder grid):

* parameters (total, and the projections alone), counted on the meta device;
* forward FLOPs per image (torch.utils.flop_counter, batch 1, on the meta device: nothing is
  computed), plus the FLOPs of the TaskDiffusion decoder's DDIM inference on that backbone's grid
  and levels (it changes with the decoder grid: stride 14 gives more cells than stride 16);
* CPU time per image of the backbone forward (random init, fp32, eval, no_grad, batch 1): every
  model built first, `--warmup` calls each, then `--repeats` rounds of one timed call per model
  (round-robin, as benchmarks/speed.py: load on a shared machine hits every config alike);
  min/median/max. All models are in memory at once (about 8 GB for the paper-size set).

The configs are read directly (YAML with `_base_`), only for their backbone keys, so this runs for any
backbone the adapter builds. Results go to stdout as a Markdown table and, with --json, to a file.

    python -m benchmarks.backbones --repeats 3 --threads 2 --json benchmarks/results/backbones_cpu_fp32.json
    python -m benchmarks.backbones --configs pascal_swinL --no_time        # params and FLOPs only
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import git_commit, machine_description, stats, time_call  # noqa: E402

CONFIGS = {
    "pascal_vitB": "configs/pascal/vitB.yml",
    "pascal_vitL": "configs/pascal/vitL.yml",
    "nyud_vitL": "configs/nyud/vitL.yml",
    "pascal_swinL": "configs/pascal/swinL.yml",
    "nyud_swinL": "configs/nyud/swinL.yml",
    "pascal_dinov2L": "configs/pascal/dinov2L.yml",
    "nyud_dinov2L": "configs/nyud/dinov2L.yml",
    "pascal_convnextL": "configs/pascal/convnextL.yml",
    "cityscapes_vitL": "configs/cityscapes/vitL.yml",  # 512 x 1024 (docs/reproducing.md#cityscapes)
    "cityscapes_swinL": "configs/cityscapes/swinL.yml",
    # tiny CPU configs (tests, demo)
    "demo_pascal": "configs/demo/synthetic_pascal.yml",
    "demo_pascal_swin": "configs/demo/synthetic_pascal_swin.yml",
    "demo_pascal_convnext": "configs/demo/synthetic_pascal_convnext.yml",
    "demo_pascal_dinov2": "configs/demo/synthetic_pascal_dinov2.yml",
}
PAPER_SIZE = [k for k in CONFIGS if not k.startswith("demo")]


def describe(cfg) -> dict:
    """Backbone name, input size, decoder width and tasks of a loaded config (engine.config.load_config)."""
    bk = dict(cfg.get("backbone_kwargs") or {})
    name = bk.get("timm_name") if cfg.backbone == "timm" else cfg.backbone
    return {"db": cfg.db_name, "size": [int(s) for s in cfg.TRAIN.SCALE], "C": int(cfg.final_embed_dim),
            "tasks": list(cfg.TASKS.NAMES), "backbone": name}


def build_backbone(cfg):
    """The configured backbone with random weights, on the current default device: the model's own
    builder (models/backbone.py), without its weights file."""
    from models.backbone import build_backbone as build

    return build(dict(cfg, drop_path_rate=0.0, backbone_weights=None))


def grid_of(backbone, size) -> tuple:
    """(decoder stride, levels) of a backbone, from its declared interface (models/backbones.py)."""
    from models.backbones import backbone_interface

    spec = backbone_interface(backbone)
    return spec.decoder_stride, [[int(c), int(s)] for c, s in spec.levels]


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def decoder_flops(info: dict, levels: int, grid) -> int:
    """FLOPs of the TaskDiffusion decoder's DDIM inference (fast path, default steps) on one image.
    On CPU with real tensors: the head's autocast guards do not run on the meta device."""
    from data.tasks import task_infos
    from models.taskdiffusion import TaskDiffusionHead

    torch.manual_seed(0)
    head = TaskDiffusionHead(task_infos(info["db"], info["tasks"]), embed_dim=info["C"], num_levels=levels).eval()
    feats = torch.randn(1, levels * info["C"], *grid)
    noise = torch.randn(1, head.noisy_channels, *grid)
    with torch.no_grad():
        return count_flops(lambda: head.sample(feats, noise=noise))


def static_row(name: str, path) -> tuple:
    """(row with params and FLOPs, config): everything that needs no real weights (meta device)."""
    from engine.config import load_config

    cfg = load_config(str(ROOT / path))
    info = describe(cfg)
    h, w = info["size"]
    with torch.device("meta"):
        meta = build_backbone(cfg)
    s, levels = grid_of(meta, (h, w))
    grid = (h // s, w // s)
    params = sum(p.numel() for p in meta.parameters())
    proj = sum(p.numel() for p in meta.fea_fuse.parameters())
    flops = count_flops(lambda: meta(torch.empty(1, 3, h, w, device="meta")))
    row = {"config": name, "file": str(path), "backbone": info["backbone"], "size": [h, w], "decoder_stride": s,
           "decoder_grid": list(grid), "levels": levels, "out_dim": info["C"],
           "params_M": params / 1e6, "proj_params_M": proj / 1e6, "GFLOP_per_img": flops / 1e9}
    return row, cfg, info


def time_round_robin(jobs: list, repeats: int, warmup: int) -> None:
    """CPU seconds per image of each backbone forward, measured round-robin (one timed call of each
    model in turn, repeated) so that a shared machine's load slows every config alike; fills the rows."""
    cpu = torch.device("cpu")
    models = []
    for row, cfg in jobs:
        try:
            t0 = time.perf_counter()
            torch.manual_seed(0)
            model = build_backbone(cfg).eval()
            row["build_s"] = time.perf_counter() - t0
            x = torch.randn(1, 3, *row["size"], generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                for _ in range(warmup):
                    model(x)
            models.append((row, model, x, []))
        except Exception as exc:
            row["time_error"] = f"{type(exc).__name__}: {exc}"
    with torch.no_grad():
        for _ in range(repeats):
            for row, model, x, times in models:
                times.append(time_call(lambda: model(x), cpu))
    for row, _, _, times in models:
        if times:
            row["cpu_s_per_img"] = stats(times)
    models.clear()
    gc.collect()


def markdown(rows) -> str:
    lines = ["| config | backbone | input | s | grid | params (M) | backbone GFLOPs | decoder GFLOPs | "
             "CPU s/img (median, min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | error: {r['error'][:80]} | | | | | | | |")
            continue
        t = r.get("cpu_s_per_img")
        dec = r.get("decoder_GFLOP_per_img")
        dec_txt = "-" if dec is None else f"{dec:.1f}"
        time_txt = "-" if t is None else f"{t['median']:.2f}, {t['min']:.2f}"
        lines.append(
            f"| {r['config']} | {r['backbone']} | {r['size'][0]}x{r['size'][1]} | {r['decoder_stride']} | "
            f"{r['decoder_grid'][0]}x{r['decoder_grid'][1]} | {r['params_M']:.1f} | {r['GFLOP_per_img']:.1f} | "
            f"{dec_txt} | {time_txt} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=PAPER_SIZE, choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no_time", action="store_true", help="params and FLOPs only (no CPU build or timing)")
    p.add_argument("--no_decoder", action="store_true", help="skip the decoder FLOPs")
    p.add_argument("--json", default=None, help="write the rows (and the machine) to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, jobs = [], []
    for name in args.configs:
        print(f"[backbones] {name}: params and FLOPs", flush=True)
        try:
            row, cfg, info = static_row(name, CONFIGS[name])
            if not args.no_decoder:
                row["decoder_GFLOP_per_img"] = decoder_flops(info, len(row["levels"]), row["decoder_grid"]) / 1e9
                row["total_GFLOP_per_img"] = row["GFLOP_per_img"] + row["decoder_GFLOP_per_img"]
            rows.append(row)
            jobs.append((row, cfg))
        except Exception as exc:  # keep going: one failing config must not lose the others
            rows.append({"config": name, "file": CONFIGS[name], "error": f"{type(exc).__name__}: {exc}"})
        write_json(args, rows)
    if not args.no_time:
        print(f"[backbones] CPU time, round-robin over {len(jobs)} configs, {args.warmup} warm-up + "
              f"{args.repeats} timed calls each", flush=True)
        time_round_robin(jobs, args.repeats, args.warmup)
    print()
    print(markdown(rows))
    write_json(args, rows)
    return 0


def write_json(args, rows) -> None:
    if not args.json:
        return
    out = {"machine": machine_description(torch.device("cpu")), "args": vars(args), "commit": git_commit(),
           "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
