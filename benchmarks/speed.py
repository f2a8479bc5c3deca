"""Speed and memory of the paper configs: training step and DDIM inference, per variant, in one run.

For each config (PASCAL ViT-B, PASCAL ViT-L, NYUD ViT-L at their paper crop sizes, or any --size)
and batch size, every variant is measured in the same process, **round-robin** (one timed call of
each variant in turn, repeated), so that a shared or throttled machine slows all variants alike and
the ratios stay meaningful even when absolute CPU times swing. Variants:

  ref-fp32      TaskDiffusion, reference path (op for op as the original: upsample-then-conv, cat+conv
                fusion every step, one FiLM Linear per block), fp32 eager -- "the original's way"
  fp32          TaskDiffusion, fast path (models/taskdiffusion.py `set_fast_path`), fp32 eager
  fp32-pertask  the fast path without grouped ops (`heads.grouped_ops = False`: every task's blocks one
                after the other, as before the grouped decoder), fp32 eager
  bf16          fast path, bf16 autocast, eager
  bf16-compile  fast path, bf16 autocast, torch.compile of the whole model (CUDA only by default)
  bf16-compile-regions   the same with models/compile.py: backbone, clean features, one decoder step and
                aux heads compiled separately (shorter warm-up; on a copy of the model)
  baseline-fp32 / baseline-bf16   the non-diffusion baseline (model: baseline), eager

Measured per variant: a full training step (forward with ground truth, criterion, backward,
optimizer step), inference (backbone once + the configured DDIM steps), the backbone alone (so the
decoder's cost per DDIM step is visible), peak memory (CUDA), images/s; per path: FLOPs per image
(torch.utils.flop_counter, training = forward + backward) and, on CUDA, the achieved fraction of the
device's dense bf16 peak; and the largest deviation of each variant's predictions from ref-fp32 on the
same input and noise. Weights are random (speed does not depend on them). Results go to stdout as
Markdown tables and, with --json, to a file. BENCHMARKS.md has the commands and the numbers.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000 \\
      python -m benchmarks.speed --configs pascal_vitB --size 256 256 --device cpu --batch 1 --repeats 5
    python -m benchmarks.speed --device cuda --batch 2 8 --json speed_cuda.json
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (autocast_ctx, git_commit, machine_description, random_targets, stats,  # noqa: E402
                               sync, time_call)

CONFIGS = {
    "pascal_vitB": "configs/pascal/vitB.yml",
    "pascal_vitL": "configs/pascal/vitL.yml",
    "nyud_vitL": "configs/nyud/vitL.yml",
    "demo_pascal": "configs/demo/synthetic_pascal.yml",
}
# Dense bf16 tensor-core peaks (TFLOP/s) by device-name substring; override with --peak_tflops.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40": 181.0, "4090": 165.0}


@dataclass(frozen=True)
class Variant:
    name: str
    model: str  # 'TaskDiffusion' | 'baseline'
    path: str  # 'ref' | 'fast' | '-'
    precision: str  # 'fp32' | 'bf16'
    compile: str = ""  # '' | 'model' (torch.compile of the whole model) | 'regions' (models/compile.py)

    @property
    def compiled(self) -> bool:
        return bool(self.compile)


VARIANTS = {v.name: v for v in [
    Variant("ref-fp32", "TaskDiffusion", "ref", "fp32"),
    Variant("fp32-pertask", "TaskDiffusion", "fast-pertask", "fp32"),
    Variant("fp32", "TaskDiffusion", "fast", "fp32"),
    Variant("bf16", "TaskDiffusion", "fast", "bf16"),
    Variant("bf16-compile", "TaskDiffusion", "fast", "bf16", "model"),
    Variant("bf16-compile-regions", "TaskDiffusion", "fast", "bf16", "regions"),
    Variant("baseline-fp32", "baseline", "-", "fp32"),
    Variant("baseline-bf16", "baseline", "-", "bf16"),
]}
REFERENCE = "ref-fp32"


def build(config_name: str, model_kind: str, device: torch.device, size=None):
    """Config + model (random weights) + criterion; `size` (H, W) overrides the crop."""
    from losses import build_criterion
    from models import build_model
    from engine.config import load_config

    opts = ["backbone_weights=null", f"model={model_kind}", "drop_path_rate=0.0"]
    if size:
        opts.append(f"crop_size=[{int(size[0])},{int(size[1])}]")
    cfg = load_config(str(ROOT / CONFIGS[config_name]), opts=opts)
    with torch.device(device):  # initialise on the device: a CPU init of ViT-L + head takes minutes
        model = build_model(cfg)
    model = model.to(device)
    criterion = build_criterion(cfg).to(device)
    return cfg, model, criterion


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((val for key, val in BF16_PEAK_TFLOPS.items() if key in name), None)


class Runner:
    """The callables of one variant on a shared model: train step, inference, backbone only."""

    def __init__(self, variant: Variant, model, criterion, optimizer, images, targets, device, seed_noise,
                 compile_kwargs=None):
        self.v, self.model, self.device = variant, model, device
        self.criterion, self.optimizer = criterion, optimizer
        self.images, self.targets = images, targets
        self.noise = seed_noise
        if variant.compile == "regions":  # compiles in place: on a copy, so the other variants stay eager
            from models.compile import compile_regions

            self.model = model = compile_regions(copy.deepcopy(model), **(compile_kwargs or {}))
            self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-7)
            self.fwd, self.bb = model, model.backbone
        else:
            whole = variant.compile == "model"
            self.fwd = torch.compile(model, **(compile_kwargs or {})) if whole else model
            self.bb = torch.compile(model.backbone, **(compile_kwargs or {})) if whole else model.backbone

    def _setup(self, train: bool):
        self.model.train(train)
        if self.v.path != "-":
            self.model.heads.set_fast_path(self.v.path.startswith("fast"))
            self.model.heads.grouped_ops = self.v.path != "fast-pertask"  # the per-task fast path of before

    def train_step(self):
        self._setup(True)
        with autocast_ctx(self.device, self.v.precision):
            out = self.fwd(self.images, self.targets)
        total, _ = self.criterion(out, self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()

    def train_fwd_bwd(self):  # for FLOP counting: no optimizer step
        self._setup(True)
        with autocast_ctx(self.device, self.v.precision):
            out = self.fwd(self.images, self.targets)
        total, _ = self.criterion(out, self.targets)
        total.backward()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(self, noise=None):
        self._setup(False)
        with autocast_ctx(self.device, self.v.precision):
            if self.v.model == "baseline":
                return self.fwd(self.images)
            return self.fwd(self.images, noise=noise)

    @torch.no_grad()
    def backbone(self):
        self._setup(False)
        with autocast_ctx(self.device, self.v.precision):
            return self.bb(self.images)


def peak_mem(fn, device) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def deviation(out: dict, ref: dict) -> float:
    """max over tasks of max|out - ref| / max|ref| (predictions at input size)."""
    return max(((out[t].float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-12)).item()
               for t, r in ref.items())


def bench_group(config_name, model_kind, variants, batch, device, args, ref_pred=None):
    """All variants of one model kind on one shared model, timed round-robin."""
    cfg, model, criterion = build(config_name, model_kind, device, size=args.size)
    h, w = cfg.TRAIN.SCALE
    gen = torch.Generator().manual_seed(0)
    images = torch.randn((batch, 3, h, w), generator=gen).to(device)
    targets = random_targets(cfg, batch, (h, w), device, gen)
    # the model's own per-image starting noise (None for the baseline), fixed so every variant sees the same
    noise = model.initial_noise(images, [f"bench{i}" for i in range(batch)], seed=0)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-7)
    ckw = {"backend": args.compile_backend} if getattr(args, "compile_backend", None) else {}
    runners = {v.name: Runner(v, model, criterion, optimizer, images, targets, device, noise, ckw) for v in variants}
    steps = 1 if model_kind == "baseline" else int(cfg.timesteps)  # a loaded config: the schema's default is filled
    rows = {}
    # predictions first, before any training step changes weights and BN statistics
    preds = {name: r.infer(noise)["pred"] for name, r in runners.items()}
    if ref_pred is None and REFERENCE in preds:
        ref_pred = {t: v.detach().clone() for t, v in preds[REFERENCE].items()}
    for name, r in runners.items():
        row = rows[name] = {"config": config_name, "variant": name, "model": model_kind, "path": r.v.path,
                            "precision": r.v.precision, "compile": r.v.compile or False, "batch": batch, "size": [h, w],
                            "device": device.type, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
        t0 = time.perf_counter()
        for _ in range(args.warmup):  # warm-up (and compilation)
            if not args.skip_train:
                r.train_step()
            r.infer(noise)
            r.backbone()
        sync(device)
        row["warmup_s"] = time.perf_counter() - t0
        if not args.skip_train:
            row["train_peak_GiB"] = peak_mem(r.train_step, device)
        row["infer_peak_GiB"] = peak_mem(lambda: r.infer(noise), device)
        if ref_pred is not None and model_kind != "baseline":
            row["pred_max_rel_dev_vs_ref"] = deviation(preds[name], ref_pred)
        print(f"[speed]   {name}: warm-up {row['warmup_s']:.1f} s", flush=True)
    times = {name: {"train": [], "infer": [], "backbone": []} for name in runners}
    for _ in range(args.repeats):  # round-robin: every variant sees the same machine state
        for name, r in runners.items():
            if not args.skip_train:
                times[name]["train"].append(time_call(r.train_step, device))
            times[name]["infer"].append(time_call(lambda: r.infer(noise), device))
            times[name]["backbone"].append(time_call(r.backbone, device))
    flops = {}
    peak = peak_tflops(device, args.peak_tflops)
    for name, r in runners.items():
        row = rows[name]
        if not args.skip_train:
            row["train_s"] = stats(times[name]["train"])
            row["train_img_per_s"] = batch / row["train_s"]["median"]
        row["infer_s"] = stats(times[name]["infer"])
        row["backbone_s"] = stats(times[name]["backbone"])
        row["infer_img_per_s"] = batch / row["infer_s"]["median"]
        row["decoder_per_step_s"] = (row["infer_s"]["median"] - row["backbone_s"]["median"]) / steps
        row["decoder_step_over_backbone"] = row["decoder_per_step_s"] / row["backbone_s"]["median"]
        if not args.skip_flops:
            key = r.v.path
            if key not in flops:  # FLOPs depend on the path, not on precision or compilation
                plain = Runner(Variant("count", r.v.model, r.v.path, "fp32", False), model, criterion, optimizer,
                               images, targets, device, noise)
                flops[key] = {"infer": count_flops(lambda: plain.infer(noise)) / batch / 1e9}
                if not args.skip_train:
                    flops[key]["train"] = count_flops(plain.train_fwd_bwd) / batch / 1e9
            row["infer_GFLOP_per_img"] = flops[key]["infer"]
            if "train" in flops[key]:
                row["train_GFLOP_per_img"] = flops[key]["train"]
            if peak and r.v.precision == "bf16":
                row["infer_frac_of_bf16_peak"] = row["infer_GFLOP_per_img"] * 1e9 * row["infer_img_per_s"] / (peak * 1e12)
                if "train_s" in row:
                    row["train_frac_of_bf16_peak"] = (row["train_GFLOP_per_img"] * 1e9 * row["train_img_per_s"]
                                                      / (peak * 1e12))
    del runners, model, criterion, optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return list(rows.values()), ref_pred


def add_ratios(rows) -> None:
    """speedup_* = reference time / variant time, within the same config and batch (same run)."""
    for r in rows:
        ref = next((q for q in rows if q["config"] == r["config"] and q["batch"] == r["batch"]
                    and q["variant"] == REFERENCE and "error" not in q), None)
        if ref is None or "error" in r:
            continue
        for key in ("train_s", "infer_s"):
            if key in r and key in ref:
                r[f"speedup_{key[:-2]}_vs_ref"] = ref[key]["median"] / r[key]["median"]


def markdown(rows) -> str:
    head = ("| config | variant | batch | train s (min/med/max) | infer s (min/med/max) | backbone s | "
            "decoder s/step (÷backbone) | speedup train/infer vs ref-fp32 | train/infer img/s | "
            "peak GiB train/infer | GFLOP/img train/infer | % bf16 peak train/infer | max rel dev vs ref |")
    lines = [head, "|" + "---|" * 13]
    fmt = lambda d: f"{d['min']:.3f}/{d['median']:.3f}/{d['max']:.3f}" if d else "-"  # noqa: E731
    num = lambda v, f: (f.format(v) if v is not None else "-")  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['variant']} | {r['batch']} | error: {r['error'][:100]} |" + " |" * 9)
            continue
        lines.append(
            f"| {r['config']} | {r['variant']} | {r['batch']} | {fmt(r.get('train_s'))} | {fmt(r['infer_s'])} | "
            f"{r['backbone_s']['median']:.4f} | {r['decoder_per_step_s']:.4f} ({r['decoder_step_over_backbone']:.2f}) | "
            f"{num(r.get('speedup_train_vs_ref'), '{:.2f}')}/{num(r.get('speedup_infer_vs_ref'), '{:.2f}')} | "
            f"{num(r.get('train_img_per_s'), '{:.2f}')}/{r['infer_img_per_s']:.2f} | "
            f"{num(r.get('train_peak_GiB'), '{:.1f}')}/{num(r.get('infer_peak_GiB'), '{:.1f}')} | "
            f"{num(r.get('train_GFLOP_per_img'), '{:.4g}')}/{num(r.get('infer_GFLOP_per_img'), '{:.4g}')} | "
            f"{num(100 * r['train_frac_of_bf16_peak'] if 'train_frac_of_bf16_peak' in r else None, '{:.1f}')}/"
            f"{num(100 * r['infer_frac_of_bf16_peak'] if 'infer_frac_of_bf16_peak' in r else None, '{:.1f}')} | "
            f"{num(r.get('pred_max_rel_dev_vs_ref'), '{:.1e}')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                   help="default: the three paper configs (--which-precision: pascal_vitB)")
    p.add_argument("--size", nargs=2, type=int, default=None, help="override the crop size (H W)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", nargs="+", type=int, default=[2])
    p.add_argument("--variants", default="all",
                   help=f"'all' or a comma list of {','.join(VARIANTS)} (all = every variant; "
                        f"bf16-compile only on CUDA)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--skip_train", action="store_true")
    p.add_argument("--skip_flops", action="store_true")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--peak_tflops", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no_cudnn_benchmark", action="store_true",
                   help="cuDNN heuristics instead of autotuning (much shorter warm-up; same for every variant)")
    p.add_argument("--compile_backend", default=None,
                   help="torch.compile backend of the compile variants (default inductor; 'eager' = trace only)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matmuls/convs (off: fp32 means fp32)")
    p.add_argument("--json", default=None, help="write all rows (and the machine) to this JSON file")
    p.add_argument("--which-precision", dest="which_precision", action="store_true",
                   help="only say whether bf16 autocast or fp32 inference is faster on this CPU for --configs "
                        "(the amp_cpu: auto timing, uncached; default config pascal_vitB at its crop)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.configs is None:
        args.configs = ["pascal_vitB"] if args.which_precision else list(CONFIGS)[:3]
    if args.which_precision:
        return which_precision(args, p)
    device = torch.device(args.device)
    if args.variants == "all":
        names = [n for n, v in VARIANTS.items() if device.type == "cuda" or not v.compiled]
    else:
        names = [n.strip() for n in args.variants.split(",")]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32  # default: fp32 means fp32, the original's way
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    rows = []
    for cfg_name in args.configs:
        for batch in args.batch:
            ref_pred = None
            for kind in ("TaskDiffusion", "baseline"):
                group = [VARIANTS[n] for n in names if VARIANTS[n].model == kind]
                if not group:
                    continue
                print(f"[speed] {cfg_name} batch {batch}: {kind} {[v.name for v in group]}", flush=True)
                try:
                    got, ref_pred = bench_group(cfg_name, kind, group, batch, device, args, ref_pred)
                    rows.extend(got)
                except Exception as exc:  # keep going: one OOM must not lose the other rows
                    for v in group:
                        rows.append({"config": cfg_name, "variant": v.name, "model": kind, "batch": batch,
                                     "error": f"{type(exc).__name__}: {exc}"})
                    print(f"[speed]   failed: {type(exc).__name__}: {exc}", flush=True)
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                add_ratios(rows)
                print(markdown([r for r in rows if r["config"] == cfg_name and r["batch"] == batch]), flush=True)
                write_json(args, device, rows)  # after every group: a killed run keeps what it measured
    add_ratios(rows)
    print()
    print(markdown(rows))
    write_json(args, device, rows)
    return 0


def cpu_flags() -> list[str]:
    """The bf16-relevant CPU flags (/proc/cpuinfo): having them does not make bf16 faster (BENCHMARKS.md)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    return []


def which_precision(args, parser) -> int:
    """`--which-precision`: the amp_cpu auto decision for each config on this machine, timed now."""
    from engine.fast_inference import inference_probe
    from utils.precision import MIN_SPEEDUP, choose_cpu_bf16, cpu_model_name

    if args.device != "cpu" and torch.device(args.device).type != "cpu":
        parser.error("--which-precision is about CPU inference: pass --device cpu (on CUDA amp decides)")
    print(f"[precision] {cpu_model_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"flags: {' '.join(cpu_flags()) or 'none of avx512f/avx512_bf16/amx'}", flush=True)
    rows = []
    for name in args.configs:
        cfg, model, _ = build(name, "TaskDiffusion", torch.device("cpu"), size=args.size)
        model.eval()
        c = choose_cpu_bf16(inference_probe(model, cfg, "cpu"), use_cache=False, log=False)
        h, w = cfg.TRAIN.SCALE
        rows.append((name, f"{h}x{w}", c.fp32_s, c.bf16_s, c.fp32_s / c.bf16_s, c.name))
        print(f"[precision] {name} {h}x{w}: fp32 {c.fp32_s:.3f} s, bf16 {c.bf16_s:.3f} s per image -> "
              f"bf16 is {c.fp32_s / c.bf16_s:.2f}x fp32's speed; amp_cpu: auto picks {c.name} "
              f"(bf16 needs >= {MIN_SPEEDUP:.2f}x)", flush=True)
        del model
        gc.collect()
    print("\n| config | size | fp32 s/img | bf16 s/img | bf16 speedup | auto picks |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.2f}x | {r[5]} |")
    return 0


def write_json(args, device, rows) -> None:
    if not args.json:
        return
    out = {"machine": machine_description(device), "args": vars(args), "commit": git_commit(),
           "env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")},
           "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"[speed] wrote {args.json}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
