"""Seeds and random-number state: global seeding, derived per-rank / per-step seeds, RNG snapshots.

Why derived seeds instead of one seeded stream: a stream consumed since the start of training can only
be reproduced by replaying everything before it, so a resumed run would draw different noise and
augmentations than the uninterrupted one. Here every random draw of training is tied to *where* it
happens: the global torch/numpy/random state is reseeded at each optimizer step from
``mix_seed(seed, rank, iteration, micro_step)`` and each training sample's augmentation from
``mix_seed(seed, rank, epoch, position)``. A run restarted at iteration k therefore draws exactly what
the uninterrupted run drew at iteration k, and different ranks draw different numbers (the original
seeded every rank identically, correlating augmentations and diffusion noise across GPUs).
"""
from __future__ import annotations

import random
import zlib

import numpy as np
import torch

__all__ = ["mix_seed", "name_seed", "seed_everything", "rank_seed", "get_rng_state", "set_rng_state",
           "STEP_STREAM", "SAMPLE_STREAM", "EVAL_STREAM"]

# Stream tags keep seeds of different purposes apart even for equal (rank, index) pairs.
STEP_STREAM = 1  # per optimizer (micro) step: diffusion times/noise, drop-path, router noise
SAMPLE_STREAM = 2  # per training sample: data augmentation
EVAL_STREAM = 3  # per evaluated image: DDIM starting noise


def mix_seed(*parts: int) -> int:
    """A 63-bit seed hashed from integers: nearby inputs (rank 0/1, step k/k+1) give unrelated seeds."""
    words = []
    for p in parts:
        p = int(p)
        words += [p & 0xFFFFFFFF, (p >> 32) & 0xFFFFFFFF]  # negative ints are fine: Python masks them
    state = np.random.SeedSequence(words).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def name_seed(seed: int, name: str, stream: int = EVAL_STREAM) -> int:
    """Seed for one named item (an image id): independent of batch composition, rank and order."""
    return mix_seed(seed, stream, zlib.crc32(str(name).encode("utf-8")))


def rank_seed(seed: int, rank: int) -> int:
    """The process seed: cfg.seed + rank (different per rank, reproducible for a seed and world size)."""
    return int(seed) + int(rank)


def seed_everything(seed: int) -> None:
    """Seed Python `random`, numpy and torch (CPU and every CUDA device)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds all CUDA devices


def get_rng_state() -> dict:
    """Snapshot of every global generator (for checkpoints), made of tensors and plain Python values only.

    numpy's own state tuple holds an ndarray and numpy integers, which `torch.load(weights_only=True)`
    refuses; it is stored as a dict with the key as an int64 tensor instead (see `_numpy_state`).
    """
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict | None) -> None:
    """Restore a `get_rng_state` snapshot; missing entries (e.g. CUDA state on a CPU run) are skipped.

    Also accepts snapshots of older checkpoints, whose numpy entry is numpy's own state tuple.
    """
    if not state:
        return
    if "python" in state:
        random.setstate(_py_state(state["python"]))
    if "numpy" in state:
        np.random.set_state(_numpy_native(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])


def _numpy_state() -> dict:
    """numpy's global MT19937 state as {bit_generator, key (int64 tensor), pos, has_gauss, gauss}."""
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"bit_generator": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64).copy()),
            "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_native(s):
    """The tuple np.random.set_state expects, from `_numpy_state`'s dict or an old-format tuple/list."""
    if isinstance(s, dict):
        key = s["key"]
        key = key.cpu().numpy() if torch.is_tensor(key) else np.asarray(key)
        return (s.get("bit_generator", "MT19937"), key.astype(np.uint32), int(s["pos"]),
                int(s.get("has_gauss", 0)), float(s.get("gauss", 0.0)))
    name, key, *rest = s
    return (name, np.asarray(key, dtype=np.uint32), *rest)


def _py_state(s):
    """random.setstate needs tuples; a checkpoint round trip may have turned them into lists."""
    if isinstance(s, list):
        return tuple(_py_state(x) for x in s)
    return s
