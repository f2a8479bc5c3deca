"""Checkpoints: atomic writes, last / best / periodic files, full training state, weight loading.

Layout under `<output_dir>/checkpoints/`:
    last.pth            the latest state (resume point), rewritten at every checkpoint
    best.pth            the state with the best Delta_m (or headline metric) seen so far
    iter_XXXXXX.pth     periodic copies every `ckpt_interval` iterations (kept)

A checkpoint is a dict {model (unwrapped: no DDP `module.` prefix), optimizer, scheduler, scaler,
iteration (number of *completed* iterations: resuming continues at this count, no off-by-one),
rng (python/numpy/torch/cuda states), config (plain dict), best (metric record or None), version}.
Files are written to a temporary name in the same folder and renamed (`os.replace`), so a kill during
the write leaves the previous file intact (the original overwrote `checkpoint.pth.tar` in place).

Loading weights (`load_model_weights`) accepts this format, a bare state dict, and the original's
checkpoints whose keys carry `module.` (converted by tools.convert_official_checkpoint when present).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from utils.io import atomic_write

__all__ = ["CKPT_DIR", "LAST", "BEST", "FORMAT_VERSION", "unwrap_model", "atomic_torch_save", "checkpoint_dir",
           "last_checkpoint", "periodic_name", "build_state", "save_checkpoint", "load_checkpoint",
           "extract_model_state", "load_model_weights", "CheckpointError"]

CKPT_DIR = "checkpoints"
LAST = "last.pth"
BEST = "best.pth"
FORMAT_VERSION = 1
DDP_PREFIX = "module."
COMPILE_PREFIX = "_orig_mod."


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message says which and what to do."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, CKPT_DIR)


def last_checkpoint(output_dir: str) -> str | None:
    """`<output_dir>/checkpoints/last.pth` if it exists (the automatic resume point), else None."""
    path = os.path.join(checkpoint_dir(output_dir), LAST)
    return path if os.path.isfile(path) else None


def periodic_name(iteration: int) -> str:
    return f"iter_{int(iteration):06d}.pth"


def atomic_torch_save(obj, path: str) -> str:
    """torch.save to a temporary file in the target folder, fsync, then rename over `path`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=True)


def build_state(model: nn.Module, optimizer=None, scheduler=None, scaler=None, iteration: int = 0,
                rng: dict | None = None, config: Mapping | None = None, best: dict | None = None,
                extra: dict | None = None) -> dict:
    """The checkpoint dict (see the module doc). Model tensors are cloned to CPU-independent storage by torch.save."""
    state = {
        "version": FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": int(iteration),
        "rng": rng,
        "config": _plain(config) if config is not None else None,
        "best": best,
    }
    if extra:
        state.update(extra)
    return state


def save_checkpoint(state: dict, output_dir: str, is_best: bool = False, periodic: bool = False) -> list:
    """Write last.pth (always), best.pth (is_best) and iter_XXXXXX.pth (periodic). Returns the paths written."""
    folder = checkpoint_dir(output_dir)
    paths = [atomic_torch_save(state, os.path.join(folder, LAST))]
    if is_best:
        paths.append(atomic_torch_save(state, os.path.join(folder, BEST)))
    if periodic:
        paths.append(atomic_torch_save(state, os.path.join(folder, periodic_name(state["iteration"]))))
    return paths


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint file with a clear error for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing file (runs write "
                              f"<output_dir>/{CKPT_DIR}/{LAST} and {BEST}).")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated file, not a torch file, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}. The file may be "
                              f"truncated or not a PyTorch checkpoint.") from None


def extract_model_state(ckpt) -> "OrderedDict[str, torch.Tensor]":
    """The model state dict of a checkpoint (ours, the original's {'model': ...}, or a bare state dict),
    with DDP `module.` and torch.compile `_orig_mod.` prefixes removed."""
    try:
        from tools.convert_official_checkpoint import extract_state_dict, rename_keys
    except ImportError:  # the converter is optional: fall back to a plain prefix strip
        extract_state_dict = rename_keys = None
    if extract_state_dict is not None:
        try:
            sd = extract_state_dict(ckpt)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    else:
        sd = ckpt.get("model", ckpt.get("state_dict", ckpt)) if isinstance(ckpt, Mapping) else None
        if not isinstance(sd, Mapping):
            raise CheckpointError("checkpoint holds no model state dict")
    sd = OrderedDict((k[len(COMPILE_PREFIX):] if k.startswith(COMPILE_PREFIX) else k, v) for k, v in sd.items())
    if rename_keys is not None:
        try:
            return rename_keys(sd)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    return OrderedDict((k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k, v) for k, v in sd.items())


def load_model_weights(model: nn.Module, source, strict: bool = True) -> dict:
    """Load weights into (the unwrapped) `model` from a path or a loaded checkpoint.

    strict: every key and shape must match; otherwise the mismatches are listed in the error (a silently
    partial load would train or evaluate a half-random model). Returns the loaded checkpoint dict.
    """
    ckpt = load_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    sd = extract_model_state(ckpt)
    target = unwrap_model(model)
    own = target.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if strict and (missing or unexpected or shapes):
        where = source if isinstance(source, (str, os.PathLike)) else "the checkpoint"
        raise CheckpointError(
            f"{where} does not fit the model built from the config: {len(missing)} missing key(s) "
            f"{_head(missing)}, {len(unexpected)} unexpected key(s) {_head(unexpected)}, {len(shapes)} shape "
            f"mismatch(es) {_head(shapes)}. Use the config the checkpoint was trained with (its copy is "
            f"saved as config.yml next to the checkpoints folder).")
    if shapes:  # non-strict: skip mis-shaped tensors instead of failing inside load_state_dict
        sd = OrderedDict((k, v) for k, v in sd.items() if not (k in own and tuple(v.shape) != tuple(own[k].shape)))
    target.load_state_dict(sd, strict=strict)
    return ckpt if isinstance(ckpt, dict) else {"model": sd}


def _head(items, n: int = 5) -> str:
    if not items:
        return "[]"
    return "[" + ", ".join(map(str, items[:n])) + (", ..." if len(items) > n else "") + "]"


def _plain(v):
    """Plain containers for pickling a config without EasyDict (loadable without this package)."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
