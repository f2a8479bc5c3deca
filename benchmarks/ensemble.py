"""Cost of sample ensembles: s/img of N members in one call (backbone and clean task features once per
image, the N noisy trajectories batched through the decoder) against N independent single-sample runs,
and the peak memory with and without chunking (docs/method.md#sample-ensembles).

Arms, measured round-robin in one process (a shared machine slows them alike), random weights, batch 1:
  ensemble N        model(x, samples=N)            (one call; chunk = all N)
  ensemble N/c      model(x, samples=N, samples_chunk=c)
  independent N     N calls model(x, noise=member k) (what the framework did before: N full runs)
Peak memory (CPU: the process's peak RSS growth during one call, each arm in a fresh subprocess; CUDA:
max_memory_allocated) is measured with --memory.

    python -m benchmarks.ensemble --config pascal_vitB --size 512 512 --samples 1 4 8 --chunk 2 --repeats 2 \
        --memory --json benchmarks/results/ensemble_cpu_vitB512.json
    python -m benchmarks.ensemble --config demo_pascal --samples 1 4 8 --chunk 2 --repeats 5 --memory
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import git_commit, machine_description, stats, time_call  # noqa: E402
from benchmarks.speed import CONFIGS, build  # noqa: E402

NAMES = ["bench0"]


def arms(samples, chunk) -> list:
    out = []
    for n in samples:
        out.append(("ensemble", n, None))
        if chunk and 1 < chunk < n:
            out.append(("ensemble", n, chunk))
        if n > 1:
            out.append(("independent", n, None))
    return out


def call(model, x, kind: str, n: int, chunk):
    if kind == "ensemble":
        return lambda: model(x, noise=model.noise_source(x, NAMES, 0, n), samples=n, samples_chunk=chunk)
    z = model.initial_noise(x, NAMES, 0, samples=n)
    z = z.view(n, x.shape[0], *z.shape[1:])
    return lambda: [model(x, noise=z[k]) for k in range(n)]


def label(kind, n, chunk) -> str:
    return f"{kind} N={n}" + (f" chunk {chunk}" if chunk else "")


@torch.no_grad()
def memory_of(args, kind, n, chunk) -> float:
    """Peak memory (MiB) of one call, in a fresh process (CPU RSS high-water mark is per process)."""
    cmd = [sys.executable, "-m", "benchmarks.ensemble", "--config", args.config, "--device", args.device,
           "--_memory_arm", kind, str(n), str(chunk or 0)]
    if args.size:
        cmd += ["--size", *map(str, args.size)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return float(res.stdout.strip().splitlines()[-1])


def _one_memory_arm(args) -> None:
    kind, n, chunk = args._memory_arm[0], int(args._memory_arm[1]), int(args._memory_arm[2]) or None
    device = torch.device(args.device)
    cfg, model, _ = build(args.config, "TaskDiffusion", device, args.size)
    model.eval()
    size = tuple(args.size) if args.size else tuple(cfg.TEST.SCALE)
    x = torch.randn(1, 3, *size, device=device)
    fn = call(model, x, kind, n, chunk)
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            print((torch.cuda.max_memory_allocated(device) - base) / 2**20)
        else:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            fn()
            print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="demo_pascal", choices=sorted(CONFIGS))
    p.add_argument("--size", type=int, nargs=2, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--chunk", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--_memory_arm", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._memory_arm:
        _one_memory_arm(args)
        return 0
    device = torch.device(args.device)
    cfg, model, _ = build(args.config, "TaskDiffusion", device, args.size)
    model.eval()
    size = tuple(args.size) if args.size else tuple(cfg.TEST.SCALE)
    x = torch.randn(1, 3, *size, device=device)
    todo = arms(args.samples, args.chunk)
    fns = {a: call(model, x, *a) for a in todo}
    with torch.no_grad():
        for fn in fns.values():  # warm-up
            fn()
        times = {a: [] for a in todo}
        for _ in range(args.repeats):
            for a, fn in fns.items():
                times[a].append(time_call(fn, device))
    rows = []
    for a in todo:
        st = stats(times[a])
        row = {"arm": label(*a), "kind": a[0], "samples": a[1], "chunk": a[2], "s_per_img": st["median"],
               "min": st["min"], "max": st["max"], "n": st["n"]}
        if args.memory:
            row["peak_MiB"] = memory_of(args, *a)
        rows.append(row)
    for r in rows:  # speed-up of the ensemble over N independent runs
        ind = next((q for q in rows if q["kind"] == "independent" and q["samples"] == r["samples"]), None)
        if r["kind"] == "ensemble" and ind is not None:
            r["speedup_vs_independent"] = ind["s_per_img"] / r["s_per_img"]
    print(f"| arm ({args.config} {size[0]}×{size[1]}, {device}) | s/img (median) | min | max | "
          f"× vs independent |" + (" peak MiB |" if args.memory else ""))
    print("|---|---|---|---|---|" + ("---|" if args.memory else ""))
    for r in rows:
        sp = f"{r['speedup_vs_independent']:.2f}" if "speedup_vs_independent" in r else ""
        mem = f" {r['peak_MiB']:.0f} |" if args.memory else ""
        print(f"| {r['arm']} | {r['s_per_img']:.3f} | {r['min']:.3f} | {r['max']:.3f} | {sp} |{mem}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": args.config, "size": size, "device": str(device), "machine": machine_description(device),
                       "commit": git_commit(), "repeats": args.repeats, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
