"""Where the time goes: a per-component breakdown and a torch.profiler op table for one model.

Why a separate script: `benchmarks.speed` answers "how fast", this one answers "why". It times the
pieces of one inference call (backbone, clean task features, noisy-input fusion, gating FPN,
refinement + prediction heads, re-encoding of predictions) and of one training forward (same,
plus the auxiliary heads) by wrapping the head's methods on the instance, so it works on any
version of the model that keeps those method names. Then it runs torch.profiler over a few calls
and prints the top operators by self time.

Run on CPU with the glibc settings from BENCHMARKS.md (stable timings):

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \
      python -m benchmarks.profile_model --config pascal_vitB --size 512 512 --batch 1 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import autocast_ctx, random_targets, sync  # noqa: E402
from benchmarks.speed import CONFIGS, build  # noqa: E402

# head methods timed (name on the head -> label); nested calls are attributed to the innermost
# (self time: `decode` excludes the gating FPN it calls)
HEAD_PARTS = {
    "clean_task_features": "clean task features (once)",
    "encode_labels": "encode labels (train)",
    "encode_predictions": "re-encode predictions",
    "aux_forward": "aux heads (train)",
    "decode": "refinement layers + prediction heads (decode, self time)",
}
SUB_PARTS = {  # attributes of the head whose forward is timed inside `decode`
    "transforms": "noisy-input fusion",
    "fpn_encoder": "gating FPN (shared noisy branch, gates, specific heads, level fusion)",
    "time_mlp": "time embedding",
}


class Timer:
    """Accumulates wall time per label; nested timers subtract their children (self time)."""

    def __init__(self, device):
        self.device = device
        self.total = defaultdict(float)
        self.calls = defaultdict(int)
        self.stack = []

    def wrap(self, fn, label):
        def inner(*a, **k):
            sync(self.device)
            t0 = time.perf_counter()
            self.stack.append(0.0)
            try:
                return fn(*a, **k)
            finally:
                sync(self.device)
                dt = time.perf_counter() - t0
                child = self.stack.pop()
                self.total[label] += dt - child
                self.calls[label] += 1
                if self.stack:
                    self.stack[-1] += dt
        return inner


def instrument(model, timer: Timer) -> None:
    model.forward_features = timer.wrap(model.forward_features, "backbone")
    head = model.heads
    for name, label in HEAD_PARTS.items():
        if hasattr(head, name):
            setattr(head, name, timer.wrap(getattr(head, name), label))
    for name, label in SUB_PARTS.items():
        mod = getattr(head, name, None)
        if isinstance(mod, torch.nn.Module):
            mod.forward = timer.wrap(mod.forward, label)


def breakdown(model, fn, device, repeats: int) -> dict:
    timer = Timer(device)
    instrument(model, timer)
    fn()  # warm-up (not counted)
    timer.total.clear()
    timer.calls.clear()
    walls = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        walls.append(time.perf_counter() - t0)
    for k in ("forward_features",):
        model.__dict__.pop(k, None)
    for name in HEAD_PARTS:
        model.heads.__dict__.pop(name, None)
    for name in SUB_PARTS:
        mod = getattr(model.heads, name, None)
        if isinstance(mod, torch.nn.Module):
            mod.__dict__.pop("forward", None)
    parts = {k: v / repeats for k, v in timer.total.items()}
    calls = {k: v // repeats for k, v in timer.calls.items()}
    wall = statistics.median(walls)
    parts["other (outside timed parts)"] = wall - sum(parts.values())
    return {"wall_median_s": wall, "wall_min_s": min(walls), "wall_max_s": max(walls),
            "parts_s": parts, "calls": calls}


def print_breakdown(title: str, res: dict) -> None:
    print(f"\n## {title}: median {res['wall_median_s']:.3f} s (min {res['wall_min_s']:.3f}, "
          f"max {res['wall_max_s']:.3f})")
    print("| part | calls | s per call total | share |\n|---|---|---|---|")
    for k, v in sorted(res["parts_s"].items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {res['calls'].get(k, '-')} | {v:.3f} | {100 * v / res['wall_median_s']:.0f}% |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="pascal_vitB", choices=list(CONFIGS))
    p.add_argument("--size", nargs=2, type=int, default=None, help="override the crop (H W)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train", action="store_true", help="also break down a training forward+backward")
    p.add_argument("--ops", type=int, default=25, help="rows of the torch.profiler op table (0: skip)")
    p.add_argument("--reference", action="store_true", help="profile the head's reference path (the original's way)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, model, criterion = build(args.config, "TaskDiffusion", device, size=args.size)
    if args.reference:
        model.heads.set_fast_path(False)
    h, w = cfg.TRAIN.SCALE
    gen = torch.Generator().manual_seed(0)
    images = torch.randn((args.batch, 3, h, w), generator=gen).to(device)
    targets = random_targets(cfg, args.batch, (h, w), device, gen)
    print(f"# profile {args.config} {h}x{w} batch {args.batch} {args.precision} on {device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'reference' if args.reference else 'fast'} path)")

    @torch.no_grad()
    def infer():
        model.eval()
        with autocast_ctx(device, args.precision):
            model(images)

    def train():
        model.train()
        with autocast_ctx(device, args.precision):
            out = model(images, targets)
        total, _ = criterion(out, targets)
        total.backward()
        model.zero_grad(set_to_none=True)

    results = {"inference": breakdown(model, infer, device, args.repeats)}
    print_breakdown("inference (backbone + DDIM)", results["inference"])
    if args.train:
        results["train"] = breakdown(model, train, device, args.repeats)
        print_breakdown("training step (forward + backward, no optimizer)", results["train"])
    if args.ops:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            infer()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print("\n## inference op table (one call)\n")
        print(prof.key_averages().table(sort_by=key, row_limit=args.ops))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
