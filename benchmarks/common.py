"""Helpers shared by the benchmark scripts: building a model from a config, random batches, timing.

Timing follows the rules in BENCHMARKS.md: warm-up first, many repeats, min/median/max reported,
CUDA work bracketed by events and synchronised, so a number is the device's time and not the launch
queue's.
"""
from __future__ import annotations

import platform
import subprocess
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from data.tasks import task_infos

REPO_ROOT = Path(__file__).resolve().parents[1]


def random_targets(cfg, batch: int, size, device, generator=None) -> dict:
    """A batch of ground truths with the docs/method.md#sample-dict-and-batches shapes and plausible values (ignore-free)."""
    h, w = size
    g = generator
    out = {}
    for task, info in task_infos(cfg.db_name, cfg.TASKS.NAMES).items():
        if info.is_discrete:
            lab = torch.randint(0, info.num_classes, (batch, 1, h, w), generator=g).float()
        elif task == "normals":
            n = torch.randn((batch, 3, h, w), generator=g)
            lab = n / n.norm(dim=1, keepdim=True).clamp_min(1e-6)
        elif task == "depth":
            lab = torch.rand((batch, 1, h, w), generator=g) * 9.5 + 0.5
        else:  # edge-like binary maps
            lab = (torch.rand((batch, 1, h, w), generator=g) < 0.1).float()
        out[task] = lab.to(device)
    return out


def autocast_ctx(device: torch.device, precision: str):
    """bf16 autocast on CUDA (or CPU when asked); fp32 = no autocast."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    """Seconds of one call of `fn`: CUDA events around it on GPU (the device's time, not the launch
    queue's), wall time on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def stats(times) -> dict:
    """min/median/max/n of a list of seconds."""
    return {"min": min(times), "median": statistics.median(times), "max": max(times), "n": len(times)}


def machine_description(device: torch.device) -> dict:
    desc = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
        desc["cuda"] = torch.version.cuda
    return desc


def git_commit() -> str | None:
    """HEAD of the checkout (+ '-dirty' with local changes), so a result names the code it measured."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "models", "benchmarks"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None
