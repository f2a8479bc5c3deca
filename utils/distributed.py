"""Process-group setup and the few collectives the project uses.

Why one module: the original created an NCCL process group at import time, so nothing ran without a
distributed launcher, a GPU and NCCL. Here nothing happens at import; `init_distributed`
reads the variables `torchrun` exports (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
falls back to a single process when WORLD_SIZE is unset. Every other module calls these helpers and
never `torch.distributed` directly, so each helper is a no-op (or the identity) in a single process
and the rest of the code has no `if distributed:` branches.

A rank that dies or hangs must not leave the others waiting forever: the process group gets a finite
timeout (config key `dist_timeout_minutes`), which gloo applies to every collective and NCCL enforces
through its watchdog (asynchronous error handling, switched on here as torchrun does). The helpers that
read the launcher's environment (`env_rank`, `is_main_process_env`, `report_error`) work before a process
group exists, e.g. for a configuration error that every rank hits alike and only rank 0 should print.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "init_distributed", "is_dist_avail_and_initialized", "get_rank", "get_world_size",
    "is_main_process", "barrier", "all_reduce_sum", "all_gather_object", "broadcast_object",
    "cleanup_distributed", "DEFAULT_TIMEOUT_MINUTES", "env_rank", "env_local_rank", "env_world_size",
    "is_main_process_env",
    "elastic_store_warning", "any_rank", "format_error", "report_error", "reports_shared_errors",
    "abandon_distributed",
]

DEFAULT_TIMEOUT_MINUTES = 30.0  # the default of the config key dist_timeout_minutes


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, rank on its node, number of processes, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_distributed: bool


def _env_int(name: str, default: int) -> int:
    """An integer launcher variable; a clear message instead of int()'s when it is malformed."""
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


def _check_timeout(timeout_minutes: float) -> datetime.timedelta:
    """The process-group timeout; a non-positive one would make every collective fail at once."""
    try:
        minutes = float(timeout_minutes)
    except (TypeError, ValueError) as err:
        raise RuntimeError(f"dist_timeout_minutes={timeout_minutes!r} is not a number") from err
    if not minutes > 0:
        raise RuntimeError(f"dist_timeout_minutes={timeout_minutes!r} must be > 0 (minutes a collective waits for "
                           f"the other ranks before the run stops with an error)")
    return datetime.timedelta(minutes=minutes)


def _prepare_backend_env(backend: str) -> None:
    """Make NCCL abort a collective that exceeds the timeout instead of blocking forever.

    torchrun exports TORCH_NCCL_ASYNC_ERROR_HANDLING=1 to its workers; other launchers (a plain `srun
    python main.py` with the variables set by hand) may not, so the same default is set here. A value
    the user exported is kept. gloo needs nothing: it applies the group timeout to each collective.
    """
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")


def elastic_store_warning() -> str | None:
    """A warning when torchrun may restart the group (--max-restarts > 0) with its shared store.

    Why: this PyTorch's c10d rendezvous keeps one store for the agent and every restart by default; the
    processes of a restart can read the addresses the dead ones published and fail at start-up with
    "Connection refused" (gloo) or a NCCL connection error. TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in the
    environment of torchrun gives each restart a fresh store. Said before any failure, so the user can
    fix the launch command while the run still works; None when nothing is wrong.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").strip().lower() != "true":
        return None
    if _env_int("TORCHELASTIC_MAX_RESTARTS", 0) <= 0:
        return None
    return ("torchrun --max-restarts with the rendezvous store shared across restarts (the default) can make "
            "the restarted processes fail with 'Connection refused'; export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
            "before torchrun (docs/cluster.md)")


def init_distributed(backend: str | None = None, device: str | torch.device | None = None,
                     timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistInfo:
    """Set up this process from torchrun's environment; a single process when WORLD_SIZE is unset or 1.

    backend: None picks NCCL when the device is CUDA, gloo otherwise (CPU runs and tests).
    device: force a device (e.g. 'cpu'); None picks cuda:LOCAL_RANK when CUDA is available.
    timeout_minutes: how long a collective (and the initial rendezvous through the store) waits for the
    other ranks; past it the collective raises (gloo) or the NCCL watchdog aborts the process, so a dead
    or stuck rank ends the run instead of hanging it. Must exceed the longest stretch one rank works
    alone (writing a checkpoint to a slow file system, loading a large batch).
    Calling it again after the group exists returns the current info without re-initialising.
    """
    timeout = _check_timeout(timeout_minutes)
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
        _prepare_backend_env(backend)
        warning = elastic_store_warning()
        if warning and is_main_process_env():
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=rank,
                                timeout=timeout, **kwargs)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), dev, True)


def is_dist_avail_and_initialized() -> bool:
    """True once a process group exists (the collective helpers are no-ops before)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank in the process group; 0 without one."""
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size() -> int:
    """Processes in the group; 1 without one."""
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 of the group (the one that writes files); True in a single process."""
    return get_rank() == 0


def env_rank() -> int:
    """Global rank from the launcher's environment (RANK; 0 when unset), valid before the group exists."""
    return _env_int("RANK", 0)


def env_world_size() -> int:
    """Number of processes from the launcher's environment (WORLD_SIZE; 1 when unset)."""
    return _env_int("WORLD_SIZE", 1)


def env_local_rank() -> int:
    """This process's rank on its node from the launcher's environment (LOCAL_RANK; 0 when unset)."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process_env() -> bool:
    """Rank 0 according to the launcher: decides who prints before `init_distributed` has run."""
    return env_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
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


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on at least one rank (the flag itself in a single process).

    Why: a stop request (a signal) may reach the ranks of different nodes at slightly different steps;
    each rank must stop after the same iteration, or the ranks that continue wait in a collective for
    those that left. One 1-element all-reduce per call.
    """
    if not is_dist_avail_and_initialized() or get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    group = _cpu_group()
    if group is None:
        all_reduce_sum(t)
    else:  # host flags over gloo: no copy to the GPU, no wait for its queued work
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return int(t.item()) > 0


_CPU_GROUP: dict = {}


def _cpu_group():
    """A gloo group over all ranks for host-side flags when the default group is NCCL, else None.

    Why: under NCCL a flag all-reduce copies to the GPU and back, so reading it waits for every kernel
    queued before it (the optimizer step), once per iteration. Created on first use; `any_rank` is called
    by every rank at the same points, which is what group creation needs. Falls back to the default group
    when gloo cannot be set up (e.g. no usable network interface for it)."""
    if dist.get_backend() != "nccl":
        return None
    if "group" not in _CPU_GROUP:
        try:
            _CPU_GROUP["group"] = dist.new_group(backend="gloo")
        except Exception:  # noqa: BLE001 - the default group still works, only slower
            _CPU_GROUP["group"] = None
    return _CPU_GROUP["group"]


def reports_shared_errors() -> bool:
    """Whether this process prints an error that every rank meets alike (a config error, a missing dataset
    folder): the first process of each node (LOCAL_RANK 0). Once on a single node; on several nodes once per
    node, so a node whose files differ from the others' still says why it stopped. Read from the launcher's
    environment: valid before, during and after the process group."""
    return env_local_rank() == 0


def format_error(message, same_on_all_ranks: bool = True) -> str | None:
    """The one line `report_error` prints, or None on the processes that stay silent.

    The project's one rule for who prints an `error:` line outside the logger (main.py's checks before the
    run, infer.py, the tools):
    same_on_all_ranks=True: an error every rank hits alike: printed by `reports_shared_errors()` processes,
    so a 64-process job on one node prints it once, not 64 times.
    same_on_all_ranks=False: an error of this rank only (an unreadable file in its data shard): this rank
    reports it, naming its rank and host so the user knows where to look; torchrun then stops the others.
    A multi-line message (a library's help text) is joined into one line (utils.cli.one_line).
    """
    from utils.messages import one_line

    text = one_line(message) or "unknown error"
    if same_on_all_ranks:
        return f"error: {text}" if reports_shared_errors() else None
    if env_world_size() <= 1:
        return f"error: {text}"
    return f"error: [rank {env_rank()} on {socket.gethostname()}] {text}"


def report_error(message, same_on_all_ranks: bool = True, file=None) -> bool:
    """Print `error: message` on one line to stderr (see `format_error` for which processes print).

    Reads the rank from the environment, so it also works before or after the process group and
    without any collective: a failing rank cannot rely on the others to take part. Returns whether
    this process printed.
    """
    line = format_error(message, same_on_all_ranks)
    if line is None:
        return False
    stream = sys.stderr if file is None else file
    print(line, file=stream, flush=True)
    return True


def abandon_distributed() -> None:
    """Destroy the process group without a barrier (another rank may never reach one: a crash, a second
    Ctrl-C); best effort, errors ignored."""
    _CPU_GROUP.clear()
    if is_dist_avail_and_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort while exiting
            pass


def cleanup_distributed() -> None:
    """Wait for every rank, then destroy the process group (no-op when none exists)."""
    if is_dist_avail_and_initialized():
        try:
            barrier()
        finally:
            _CPU_GROUP.clear()
            dist.destroy_process_group()
