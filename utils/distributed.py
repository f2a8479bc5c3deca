"""Process-group setup and the few collectives the project uses.

Why one module: the original created an NCCL process group at import time, so nothing ran without a
distributed launcher, a GPU and NCCL (spec §12.1-2). Here nothing happens at import; `init_distributed`
reads the variables `torchrun` exports (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
falls back to a single process when WORLD_SIZE is unset. Every other module calls these helpers and
never `torch.distributed` directly, so each helper is a no-op (or the identity) in a single process
and the rest of the code has no `if distributed:` branches.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "init_distributed", "is_dist_avail_and_initialized", "get_rank", "get_world_size",
    "is_main_process", "barrier", "all_reduce_sum", "all_gather_object", "broadcast_object",
    "cleanup_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, rank on its node, number of processes, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_distributed: bool


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer; it is set by torchrun "
                           f"(launch with `torchrun --nproc_per_node=N main.py ...`, or unset it)") from err


def _pick_device(local_rank: int, device: str | torch.device | None) -> torch.device:
    """CUDA device `local_rank` when CUDA exists (one GPU per process), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {n} CUDA device(s) are visible; start at most "
                               f"{n} processes per node (torchrun --nproc_per_node={n}) or set CUDA_VISIBLE_DEVICES")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(backend: str | None = None, device: str | torch.device | None = None,
                     timeout_minutes: float = 60.0) -> DistInfo:
    """Set up this process from torchrun's environment; a single process when WORLD_SIZE is unset or 1.

    backend: None picks NCCL when the device is CUDA, gloo otherwise (CPU runs and tests).
    device: force a device (e.g. 'cpu'); None picks cuda:LOCAL_RANK when CUDA is available.
    Calling it again after the group exists returns the current info without re-initialising.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = _pick_device(local_rank, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size <= 1:
        return DistInfo(0, 0, 1, dev, False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but {var} is not set; launch with torchrun, "
                                   f"which sets it, or export {var} yourself")
        if backend is None:
            backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=rank,
                                timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), dev, True)


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_avail_and_initialized() and get_world_size() > 1:
        dist.barrier()


def _collective_device() -> torch.device:
    """NCCL only reduces CUDA tensors; gloo only CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place, and return it (identity in a single process).

    The tensor may live on any device: it is moved to the backend's device for the reduction and the
    result copied back, so metric accumulators can keep their float64/int64 sums on the CPU.
    """
    if not is_dist_avail_and_initialized() or get_world_size() == 1:
        return tensor
    dev = _collective_device()
    if tensor.device == dev:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor
    buf = tensor.detach().to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    tensor.copy_(buf.to(tensor.device))
    return tensor


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] in a single process. obj must be picklable."""
    if not is_dist_avail_and_initialized() or get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s obj on every rank (its own obj in a single process)."""
    if not is_dist_avail_and_initialized() or get_world_size() == 1:
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup_distributed() -> None:
    """Wait for every rank, then destroy the process group (no-op when none exists)."""
    if is_dist_avail_and_initialized():
        try:
            barrier()
        finally:
            dist.destroy_process_group()
