"""Checkpoints: atomic writes, last / best / periodic files, full training state, weight loading.

Layout under `<output_dir>/checkpoints/`:
    last.pth            the latest state (resume point), rewritten at every checkpoint
    best.pth            the state with the best Delta_m (or headline metric) seen so far
    iter_XXXXXX.pth     periodic copies every `ckpt_interval` iterations (all kept, or the newest
                        `keep` of them when save_checkpoint is given `keep`)

A checkpoint is a dict {model (unwrapped: no DDP `module.` prefix), optimizer, scheduler, scaler,
iteration (number of *completed* iterations: resuming continues at this count, no off-by-one),
rng (python/numpy/torch/cuda states), config (plain dict), best (metric record or None), version}.
Files are written to a temporary name in the same folder and renamed (`os.replace`), so a kill during
the write leaves the previous file intact (the original overwrote `checkpoint.pth.tar` in place).

Every value is a tensor or a plain Python type (dict/list/tuple/int/float/str/bool/None), so a
checkpoint opens with `torch.load(weights_only=True)`, which runs no code from the file. Files that need
a full unpickle (the original repository's .pth.tar with EasyDict/Namespace objects, or a planted file)
are refused unless the caller says the file is trusted (`trusted=True`, `--trust_checkpoint`).

Loading weights (`load_model_weights`) accepts this format, a bare state dict, and the original's
checkpoints whose keys carry `module.` (`extract_model_state`, shared with tools/convert_official_checkpoint.py).
"""
from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict
from typing import Mapping

import numpy as np
import torch
from torch import nn

from utils.io import atomic_write, is_atomic_temporary
from utils.plain import to_plain

__all__ = ["CKPT_DIR", "LAST", "BEST", "FORMAT_VERSION", "unwrap_model", "atomic_torch_save", "checkpoint_dir",
           "last_checkpoint", "periodic_name", "build_state", "save_checkpoint", "load_checkpoint",
           "extract_model_state", "load_model_weights", "prune_periodic", "remove_stale_temporaries",
           "CheckpointError", "UnreadableCheckpointError", "resume_candidates", "choose_resume_checkpoint",
           "set_aside", "checkpoint_iteration", "free_space_warning"]

CKPT_DIR = "checkpoints"
LAST = "last.pth"
BEST = "best.pth"
FORMAT_VERSION = 1
DDP_PREFIX = "module."
COMPILE_PREFIX = "_orig_mod."


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message says which and what to do."""


class UnreadableCheckpointError(CheckpointError):
    """The file is damaged (truncated, not a torch file): unlike a file that needs --trust_checkpoint or does
    not fit the model, an older checkpoint of the same run may stand in for it (choose_resume_checkpoint)."""


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


def resume_candidates(output_dir: str) -> list:
    """The files a training resume may start from, in the order they are tried: last.pth, then the periodic
    iter_XXXXXX.pth copies newest first. best.pth is never among them: it may lie behind last.pth and
    resuming from it would silently retrain (and re-log) iterations; start from it with --trained_model."""
    folder = checkpoint_dir(output_dir)
    out = []
    last = os.path.join(folder, LAST)
    if os.path.isfile(last):
        out.append(last)
    if os.path.isdir(folder):
        periodic = []
        for name in os.listdir(folder):
            m = _PERIODIC_RE.match(name)
            if m and os.path.isfile(os.path.join(folder, name)):
                periodic.append((int(m.group(1)), name))
        out.extend(os.path.join(folder, name) for _, name in sorted(periodic, reverse=True))
    return out


def set_aside(path: str, stamp: str | None = None) -> str:
    """Rename an unreadable checkpoint to `<name>.unreadable-<YYYYmmdd-HHMMSS>` in its folder (kept for
    inspection, never deleted; the name matches no pattern that resume or pruning looks at). Returns it."""
    import time

    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    target = f"{path}.unreadable-{stamp}"
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{path}.unreadable-{stamp}-{n}"
    os.replace(path, target)
    return target


def _readable(path: str, trusted: bool) -> dict:
    """The loaded checkpoint when it holds a model state dict; UnreadableCheckpointError otherwise."""
    ck = load_checkpoint(path, trusted=trusted)
    try:
        extract_state_dict(ck)
    except CheckpointError as err:
        raise UnreadableCheckpointError(f"{path}: {err}") from None
    return ck


def choose_resume_checkpoint(output_dir: str, trusted: bool = False) -> tuple:
    """(path, checkpoint dict, warnings) of the newest checkpoint of the run that loads; (None, None, []) for a
    run folder without any.

    Tried in `resume_candidates` order. A damaged file (truncated by a crash of the storage, a copy that was
    cut short) is skipped: it is renamed aside (set_aside) so the next save cannot be confused with it, and
    a warning names it and the iteration the run resumes from. A file that loads but needs
    --trust_checkpoint is not damaged: that error is raised as it is. When no candidate loads the error
    names every candidate and why.

    Rank 0 decides and renames; every rank then loads the file rank 0 chose (utils.distributed.
    broadcast_object), so all ranks resume from the same iteration even when their views of the folder
    differ. Call it on every rank at the same point (a collective)."""
    from utils.distributed import broadcast_object, is_main_process

    chosen, ck, notes, failures, fatal = None, None, [], [], None
    if is_main_process():
        for path in resume_candidates(output_dir):
            try:
                ck = _readable(path, trusted)
            except UnreadableCheckpointError as err:
                failures.append((path, str(err)))
                continue
            except CheckpointError as err:  # loads, but not without --trust_checkpoint: not damaged
                fatal = str(err)
            chosen = path
            break
        if chosen is not None and failures:
            moved = []
            for path, _ in failures:
                try:
                    moved.append(f"{path} (renamed to {os.path.basename(set_aside(path))})")
                except OSError as err:
                    moved.append(f"{path} (could not be renamed aside: {err.strerror or err})")
            notes.append(f"unreadable checkpoint(s) {', '.join(moved)}; resuming from {chosen} at iteration "
                         f"{int(ck.get('iteration', 0) or 0)}")
    chosen, failures, fatal = broadcast_object((chosen, failures, fatal))
    if fatal is not None:  # every rank raises it alike
        raise CheckpointError(fatal)
    if chosen is None:
        if failures:
            why = "; ".join(f"{p}: {msg}" for p, msg in failures)
            raise CheckpointError(
                f"no checkpoint of the run in {output_dir} can be read ({why}). Nothing was changed; move the "
                f"damaged files away to start the run afresh, or start from other weights with --trained_model "
                f"and another --output_dir ({BEST} is never a resume point).")
        return None, None, []
    if ck is None:  # the other ranks load what rank 0 chose
        ck = load_checkpoint(chosen, trusted=trusted)
    return chosen, ck, notes


def checkpoint_iteration(path: str) -> int | None:
    """The iteration stored in a checkpoint, read lazily (memory-mapped, weights only); None if unreadable."""
    try:
        ck = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - damaged or foreign file: no iteration to report
        return None
    it = ck.get("iteration") if isinstance(ck, Mapping) else None
    return int(it) if isinstance(it, int) else None


def free_space_warning(output_dir: str, files: int, size: int | None = None, margin: float = 1.1) -> str | None:
    """A warning when the filesystem of the run's checkpoints has less free space than the next checkpoint
    needs (`files` files the size of last.pth, or `size` bytes each before the first one exists, each written
    whole before the old one is replaced), else None.

    Called at the start and after each checkpoint, so the warning comes one checkpoint interval before the
    write that would fail (which then ends in one `error: cannot write ...` line and loses nothing)."""
    from utils.io import free_bytes

    last = os.path.join(checkpoint_dir(output_dir), LAST)
    try:
        size = os.path.getsize(last)
    except OSError:
        if size is None:
            return None
    free = free_bytes(last)
    need = int(size * max(int(files), 1) * margin)
    if free is None or free >= need:
        return None
    return (f"only {_human(free)} free on the filesystem of {checkpoint_dir(output_dir)}; the next checkpoint needs "
            f"about {_human(need)} ({files} file(s) of {_human(size)}): free space (or lower keep_checkpoints) "
            f"before it is due, or that save fails (nothing is lost then: last.pth keeps the previous state)")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n} B"


def periodic_name(iteration: int) -> str:
    return f"iter_{int(iteration):06d}.pth"


_PERIODIC_RE = re.compile(r"^iter_(\d+)\.pth$")


def atomic_torch_save(obj, path: str) -> str:
    """torch.save to a temporary file in the target folder, fsync, then rename over `path`.

    The file is handed to torch.save as an open Python file, not a name: torch's own writer turns a full
    disk into an `[enforce fail at inline_container.cc]` RuntimeError without the errno, while writes through
    a Python file raise the OSError (ENOSPC, EDQUOT, EIO) that utils.io.atomic_write reports as StorageError."""
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write, fsync=True)


def build_state(model: nn.Module, optimizer=None, scheduler=None, scaler=None, iteration: int = 0,
                rng: dict | None = None, config: Mapping | None = None, best: dict | None = None,
                extra: dict | None = None) -> dict:
    """The checkpoint dict (see the module doc). Model tensors are cloned to CPU-independent storage by torch.save.

    Everything besides the model's state dict goes through `_safe`, so numpy scalars or arrays (metric
    values, RNG states) cannot make the file unloadable with `weights_only=True`.
    """
    state = {
        "version": FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "optimizer": _safe(optimizer.state_dict(), "optimizer") if optimizer is not None else None,
        "scheduler": _safe(scheduler.state_dict(), "scheduler") if scheduler is not None else None,
        "scaler": _safe(scaler.state_dict(), "scaler") if scaler is not None else None,
        "iteration": int(iteration),
        "rng": _safe(rng, "rng"),
        "config": _safe(to_plain(config), "config") if config is not None else None,
        "best": _safe(best, "best"),
    }
    if extra:
        state.update({k: _safe(v, str(k)) for k, v in extra.items()})
    return state


def save_checkpoint(state: dict, output_dir: str, is_best: bool = False, periodic: bool = False,
                    keep: int | None = None) -> list:
    """Write last.pth (always), best.pth (is_best) and iter_XXXXXX.pth (periodic). Returns the paths written.

    keep: after a periodic copy, delete all but the newest `keep` iter_XXXXXX.pth files (by the iteration
    in the name) so long runs do not fill the disk; None keeps them all. last.pth and best.pth are never
    deleted.
    """
    if keep is not None and int(keep) < 1:
        raise ValueError(f"keep={keep} would delete every periodic checkpoint in {checkpoint_dir(output_dir)}; "
                         f"pass a number >= 1 or None to keep them all")
    folder = checkpoint_dir(output_dir)
    paths = [atomic_torch_save(state, os.path.join(folder, LAST))]
    if is_best:
        paths.append(atomic_torch_save(state, os.path.join(folder, BEST)))
    if periodic:
        paths.append(atomic_torch_save(state, os.path.join(folder, periodic_name(state["iteration"]))))
        if keep is not None:
            prune_periodic(output_dir, int(keep))
    return paths


def prune_periodic(output_dir: str, keep: int) -> list:
    """Delete all but the newest `keep` iter_XXXXXX.pth files of a run; returns the removed paths."""
    folder = checkpoint_dir(output_dir)
    found = []
    for name in os.listdir(folder):
        m = _PERIODIC_RE.match(name)
        if m and os.path.isfile(os.path.join(folder, name)):
            found.append((int(m.group(1)), name))
    found.sort()
    removed = []
    for _, name in found[:max(len(found) - keep, 0)]:
        path = os.path.join(folder, name)
        try:
            os.unlink(path)
        except FileNotFoundError:  # already gone (another cleaner): nothing to do
            continue
        removed.append(path)
    return removed


def remove_stale_temporaries(output_dir: str) -> list:
    """Delete temporary files that a killed save left in `<output_dir>/checkpoints/`; returns their paths.

    atomic_write renames its temporary file only once it is complete, so a temporary still present after
    a SIGKILL is a partial copy that would otherwise stay forever (each one as large as a checkpoint).
    Only names of atomic_write's temporary pattern are touched, never last.pth, best.pth or iter_*.pth.
    Call it before the run writes anything: a save in progress in another process looks the same.
    """
    folder = checkpoint_dir(output_dir)
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if is_atomic_temporary(name) and os.path.isfile(path) and not os.path.islink(path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def load_checkpoint(path: str, map_location="cpu", trusted: bool = False) -> dict:
    """Read a checkpoint file without running code from it, with a clear error for a bad file.

    The file is always opened with `weights_only=True` first. A file that needs a full unpickle (Python
    objects beyond tensors and plain types) can execute arbitrary code when opened, so it is refused
    unless `trusted` (the user's --trust_checkpoint); then it is opened with `weights_only=False`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing file (runs write "
                              f"<output_dir>/{CKPT_DIR}/{LAST} and {BEST}).")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, not a torch file, Python objects, ...
        needs = _objects_needed(path, err)
        if needs is None:
            raise _unreadable(path, err) from None
        if not trusted:
            names = ", ".join(needs[:3]) + (", ..." if len(needs) > 3 else "")
            raise CheckpointError(
                f"checkpoint {path} contains Python objects beyond tensors (it needs {names}), "
                f"as the original repository's .pth.tar files do, and opening it could execute code; pass "
                f"--trust_checkpoint only for a file from a trusted source.") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise _unreadable(path, err) from None


def _unreadable(path: str, err: Exception) -> CheckpointError:
    """The error for a file torch cannot read at all (truncated, not a checkpoint)."""
    msg = " ".join(str(err).split())
    if "WeightsUnpickler error:" in msg:  # keep torch's diagnosis, drop its advice to unpickle the file
        msg = msg.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0].strip()
    msg = msg.split(". ", 1)[0].rstrip(".")[:300]
    return UnreadableCheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {msg}. The file may be "
                                     f"truncated or not a PyTorch checkpoint.")


def _objects_needed(path: str, err: Exception) -> list | None:
    """The Python globals a file needs beyond the weights-only allowlist, or None if it is simply unreadable.

    torch raises the same UnpicklingError for a planted pickle and for random bytes, so the file itself
    is inspected (without executing it): a torch zip archive lists its globals, a plain pickle stream is
    parsed opcode by opcode with pickletools, which builds no objects.
    """
    if not isinstance(err, pickle.UnpicklingError):
        return None
    named = re.findall(r"Unsupported global: GLOBAL (\S+)", str(err))
    if zipfile.is_zipfile(path):
        try:
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - a damaged archive: unreadable, not unsafe
            names = []
        return names or named or None
    return named or _pickle_globals(path)


def _pickle_globals(path: str) -> list | None:
    """The globals referenced by the first pickle in `path`, or None when it is no complete pickle."""
    names, strings, memo = [], [], {}
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if isinstance(arg, str) and op.name.endswith("UNICODE"):
                    strings.append(arg)
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = strings[-1] if strings else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(arg))
                elif op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(str(x) for x in strings[-2:]) if len(strings) >= 2 else "object")
    except Exception:  # noqa: BLE001 - not a pickle stream
        return None
    return sorted(set(names)) or None


# Renames from the original's parameter names to ours (none needed: names are kept; the table exists so
# a future rename stays a one-line change here; tools/convert_official_checkpoint.py uses it too).
KEY_RENAMES: dict = {}


def extract_state_dict(ckpt) -> "OrderedDict[str, torch.Tensor]":
    """The model state dict from `{'model': sd, ...}`, `{'state_dict': sd}` or a bare state dict."""
    if isinstance(ckpt, Mapping):
        for key in ("model", "state_dict"):
            if key in ckpt and isinstance(ckpt[key], Mapping):
                return OrderedDict(ckpt[key])
        if all(torch.is_tensor(v) for v in ckpt.values()):
            return OrderedDict(ckpt)
    raise CheckpointError("checkpoint holds no state dict: expected {'model': state_dict}, "
                          "{'state_dict': state_dict} or a plain name -> tensor mapping")


def rename_keys(sd: Mapping) -> "OrderedDict[str, torch.Tensor]":
    """Strip DDP's `module.` and torch.compile's `_orig_mod.` prefixes and apply KEY_RENAMES."""
    out = OrderedDict()
    for k, v in sd.items():
        name = k[len(COMPILE_PREFIX):] if k.startswith(COMPILE_PREFIX) else k
        name = name[len(DDP_PREFIX):] if name.startswith(DDP_PREFIX) else name
        for old, new in KEY_RENAMES.items():
            if name.startswith(old):
                name = new + name[len(old):]
        if name in out:
            raise CheckpointError(f"two checkpoint keys map to {name!r} (with and without '{DDP_PREFIX}'?)")
        out[name] = v
    return out


def extract_model_state(ckpt) -> "OrderedDict[str, torch.Tensor]":
    """The model state dict of a checkpoint (ours, the original's {'model': ...}, or a bare state dict),
    with DDP `module.` and torch.compile `_orig_mod.` prefixes removed."""
    return rename_keys(extract_state_dict(ckpt))


def load_model_weights(model: nn.Module, source, strict: bool = True, trusted: bool = False) -> dict:
    """Load weights into (the unwrapped) `model` from a path or a loaded checkpoint.

    strict: every key and shape must match; otherwise the mismatches are listed in the error (a silently
    partial load would train or evaluate a half-random model). trusted: allow a path that needs a full
    unpickle (see load_checkpoint). Returns the loaded checkpoint dict.
    """
    ckpt = load_checkpoint(source, trusted=trusted) if isinstance(source, (str, os.PathLike)) else source
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


_PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes)


def _safe(v, where: str = "checkpoint"):
    """A copy of `v` made only of tensors and plain Python types, which `weights_only=True` accepts.

    numpy scalars become Python numbers, numpy arrays become tensors, paths become strings, enums and
    other subclasses of int/float/str their plain value, named tuples dicts, sets sorted lists. Any other
    object is stored as its repr with a warning: the file must stay loadable without unpickling code,
    and only metadata (not the weights) can hold such values.
    """
    if type(v) in _PLAIN_TYPES or torch.is_tensor(v) or isinstance(v, (torch.Size, torch.dtype, torch.device)):
        return v
    if isinstance(v, np.generic):  # before int/float: np.float64 subclasses float
        return _safe(v.item(), where)
    if isinstance(v, np.ndarray):
        return _safe(v.tolist(), where) if v.dtype == object else torch.from_numpy(np.ascontiguousarray(v).copy())
    for plain in (int, float, str, bytes):
        if isinstance(v, plain):
            return plain(v)
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, Mapping):
        kind = OrderedDict if isinstance(v, OrderedDict) else dict
        return kind((_safe(k, where), _safe(x, f"{where}.{k}")) for k, x in v.items())
    if isinstance(v, tuple) and hasattr(v, "_asdict"):
        return _safe(dict(v._asdict()), where)
    if isinstance(v, tuple):
        return tuple(_safe(x, where) for x in v)
    if isinstance(v, (list, set, frozenset)):
        return [_safe(x, where) for x in (sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v)]
    warnings.warn(f"checkpoint entry {where} holds a {type(v).__name__}, stored as its text so the file "
                  f"loads without unpickling code; store plain values there instead", stacklevel=3)
    return repr(v)
