"""The run folder before anything is written to it: can we write there, and is it this experiment's?

Why: `main.py --run_mode train` resumes automatically from `<output_dir>/checkpoints/last.pth`. A NYUD
config pointed (by mistake, or by a reused --output_dir) at a PASCAL run folder would otherwise rewrite
that run's config.yml and then fail while loading weights, leaving a folder whose config describes
another experiment than its checkpoints. These checks run before the model is built and before any file
is written; a mismatch is refused with both experiments described.

An experiment's identity is what its checkpoints depend on: the dataset, the task list and the keys that
shape the parameters (model, backbone and its sizes, decoder width, ...). Other keys (max_iter, lr,
intervals, workers) may change between a run and its resume.
"""
from __future__ import annotations

import os
from typing import Mapping

from utils.io import storage_error
from utils.plain import to_plain

__all__ = ["RunFolderError", "IDENTITY_KEYS", "experiment_identity", "describe_experiment", "identity_differences",
           "check_writable_folder", "check_run_folder", "infer_folder", "RunLock", "LOCK_NAME"]

IDENTITY_KEYS = ("db_name", "tasks", "model", "backbone", "backbone_kwargs", "final_embed_dim", "module_layer",
                 "with_aux", "rank_list", "topk")


class RunFolderError(Exception):
    """The output folder cannot be used for this command (the message says why and what to do)."""


def experiment_identity(config: Mapping | None) -> dict:
    """{key: value} of IDENTITY_KEYS for a config (loaded cfg, saved config.yml or a checkpoint's copy)."""
    if not isinstance(config, Mapping):
        return {}
    tasks = (config.get("TASKS") or {}).get("NAMES") if isinstance(config.get("TASKS"), Mapping) else None
    ident = {"db_name": config.get("db_name") or config.get("train_db_name"), "tasks": to_plain(tasks)}
    for key in IDENTITY_KEYS[2:]:
        ident[key] = to_plain(config.get(key))
    return ident


def describe_experiment(config: Mapping | None) -> str:
    """'NYUD TaskDiffusion/vitL (tasks semseg, depth, normals, edge; C=256)', for messages."""
    ident = experiment_identity(config)
    if not ident.get("db_name") and not ident.get("model"):
        return "an experiment of unknown kind (no config stored)"
    tasks = ", ".join(ident.get("tasks") or []) or "?"
    return (f"{ident.get('db_name')} {ident.get('model')}/{ident.get('backbone')} (tasks {tasks}; "
            f"C={ident.get('final_embed_dim')})")


def identity_differences(stored: Mapping | None, requested: Mapping | None) -> list:
    """['db_name: PASCALContext (run folder) vs NYUD (requested)', ...]; [] when the identities agree."""
    a, b = experiment_identity(stored), experiment_identity(requested)
    if not a:
        return []
    return [f"{k}: {a.get(k)!r} (run folder) vs {b.get(k)!r} (requested)" for k in IDENTITY_KEYS
            if a.get(k) != b.get(k)]


def check_writable_folder(path: str, what: str = "output folder") -> None:
    """Raise RunFolderError unless `path` is, or can be created as, a folder this process can write in.

    Creates nothing: walks up to the nearest existing ancestor and checks it."""
    path = os.path.abspath(path)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise RunFolderError(f"{what} {path}: {probe} is a file, not a folder; pass another --output_dir "
                             f"(or move that file away)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(f"{what} {path}: no permission to write in {probe}; pass an --output_dir you "
                             f"can write to")


def _stored_configs(folder: str) -> list:
    """[(source description, config mapping)] of the run folder's config.yml and last.pth, when present."""
    import yaml

    out = []
    cfg_path = os.path.join(folder, "config.yml")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as f:
                out.append((cfg_path, yaml.safe_load(f)))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            pass  # an unreadable config.yml identifies nothing; the checkpoint below still may
    last = os.path.join(folder, "checkpoints", "last.pth")
    if os.path.isfile(last):
        config = _checkpoint_config(last)
        if config is not None:
            out.append((last, config))
    return out


def _checkpoint_config(path: str):
    """The config stored in a checkpoint, read lazily (memory-mapped: a multi-GB file costs nothing) and
    safely (weights_only: no code runs); None when it cannot be read that way."""
    import torch

    try:
        ck = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - old or foreign formats: the trainer reports them when it loads
        return None
    if not isinstance(ck, Mapping):
        return None
    config = ck.get("config")
    if isinstance(config, Mapping):
        config = dict(config)
        config["_iteration"] = ck.get("iteration")
    return config


def check_run_folder(cfg) -> None:
    """Refuse a training command whose experiment differs from the one already in cfg.output_dir."""
    check_writable_folder(cfg.output_dir)
    for source, stored in _stored_configs(cfg.output_dir):
        diffs = identity_differences(stored, cfg)
        if diffs:
            it = stored.get("_iteration") if isinstance(stored, Mapping) else None
            at = f" at iteration {it}" if it is not None else ""
            raise RunFolderError(
                f"output folder {cfg.output_dir} holds another experiment: {source}{at} is "
                f"{describe_experiment(stored)}, but this command asks for {describe_experiment(cfg)} "
                f"({'; '.join(diffs)}). Training would auto-resume from that folder's last.pth; pass "
                f"--output_dir for a new run, or resume that run with its own config ({os.path.join(cfg.output_dir, 'config.yml')})")


def infer_folder(output_dir: str, checkpoint: str) -> str:
    """Where `main.py --run_mode infer` writes: `<output_dir>/infer_<checkpoint name>/`, apart from the
    training run's predictions/, metrics/ and config.yml."""
    stem = os.path.splitext(os.path.basename(checkpoint))[0] or "checkpoint"
    stem = stem.replace(".pth", "").replace(".", "_")
    return os.path.join(output_dir, f"infer_{stem}")


# ------------------------------------------------------------------------------------------ run lock
LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = 30.0   # how often the holder refreshes the lock file's modification time
STALE_SECONDS = 300.0      # a lock not refreshed for this long belongs to a run that is gone
GUARD_STALE_SECONDS = 60.0  # a takeover guard older than this was left by a process killed mid-takeover
LOCK_WAIT_ENV = "TASKDIFFUSION_LOCK_WAIT"  # seconds to wait for a live holder before refusing (default 0)


def _now_text(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def _elastic_attempt() -> dict:
    """{'torchrun_id', 'restart'} under torchrun (TORCHELASTIC_RUN_ID, TORCHELASTIC_RESTART_COUNT), else {}.

    torchrun --max-restarts kills every worker and starts them again, and rank 0 may then sit on another
    node: the lock of the earlier attempt of the same job is stale at once, without waiting for its
    heartbeat to age."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    try:
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", ""))
    except ValueError:
        return {}
    return {"torchrun_id": run_id, "restart": restart} if run_id else {}


class RunLock:
    """One live training per run folder: `<run folder>/run.lock`, created with O_CREAT|O_EXCL and kept fresh by
    a heartbeat (its modification time is touched every HEARTBEAT_SECONDS by a daemon thread).

    Why not fcntl/flock alone: on the network filesystems clusters share run folders on (NFS, Lustre,
    GPFS, BeeGFS), advisory locks are often disabled, local to one client, or outlive a dead node until a
    lease expires; exclusive creation of a file name is atomic on all of them (NFSv3+), and a heartbeat
    tells a live run on another node from a dead one without asking that node.

    The lock file holds the holder's host, PID, start time and a random token (JSON). A lock is stale, and
    taken over with a warning, when its PID is gone on this host, or when it was not refreshed for
    STALE_SECONDS (a killed job on another node, a requeue after a node failure). Takeovers are serialised
    by a second O_EXCL file (`run.lock.takeover`), so two jobs that find the same stale lock cannot both
    win. Limits (docs/cluster.md): node clocks must agree within a fraction of STALE_SECONDS (NTP); a
    holder frozen for longer than STALE_SECONDS (SIGSTOP, a hung mount) loses its lock and says so.
    """

    def __init__(self, folder: str, heartbeat: float | None = None, stale_after: float | None = None):
        import socket

        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.heartbeat = float(HEARTBEAT_SECONDS if heartbeat is None else heartbeat)
        self.stale_after = float(STALE_SECONDS if stale_after is None else stale_after)
        self.host = socket.gethostname()
        self.token = None
        self.warnings: list = []  # takeovers, a lost lock
        self._stop = None
        self._thread = None

    # -- reading someone's lock -------------------------------------------------------------------
    def holder(self) -> dict | None:
        """{host, pid, started, token, age} of the current lock file (None when there is none); a file
        that cannot be parsed (a creator killed between create and write) gives {} plus its age."""
        import json
        import time

        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None
        except OSError:
            return {"age": 0.0}
        try:
            info = json.loads(text)
            info = info if isinstance(info, dict) else {}
        except ValueError:
            info = {}
        info["age"] = max(age, 0.0)
        return info

    def stale_reason(self, info: dict) -> str | None:
        """Why the lock described by `info` belongs to no live run, or None when its run may be alive."""
        age = float(info.get("age", 0.0))
        host, pid = info.get("host"), info.get("pid")
        mine = _elastic_attempt()
        if (mine and info.get("torchrun_id") == mine["torchrun_id"]
                and isinstance(info.get("restart"), int) and info["restart"] < mine["restart"]):
            return (f"it is held by attempt {info['restart']} of this torchrun job, which torchrun restarted "
                    f"(this is attempt {mine['restart']})")
        if host == self.host and isinstance(pid, int):
            if not _pid_alive(pid):
                return f"process {pid} on this host ({host}) is gone"
            if age > self.stale_after:
                return f"process {pid} on this host has not refreshed it for {age:.0f} s (its PID was reused?)"
            return None
        if age > self.stale_after:
            return (f"{'host ' + str(host) if host else 'its holder'} has not refreshed it for {age:.0f} s "
                    f"(more than {self.stale_after:.0f} s: that job is gone)")
        return None

    def describe(self, info: dict) -> str:
        started = info.get("started")
        return (f"host {info.get('host', '?')}, PID {info.get('pid', '?')}, started {started or '?'}, "
                f"refreshed {float(info.get('age', 0.0)):.0f} s ago")

    # -- taking and giving back -----------------------------------------------------------------------
    def acquire(self, wait: float | None = None) -> "RunLock":
        """Take the lock or raise RunFolderError naming the live holder. wait: seconds to keep trying while
        a live holder has it (default: $TASKDIFFUSION_LOCK_WAIT, else 0: refuse at once)."""
        import json
        import time
        import uuid

        if wait is None:
            try:
                wait = float(os.environ.get(LOCK_WAIT_ENV, "0") or 0)
            except ValueError:
                raise RunFolderError(f"environment variable {LOCK_WAIT_ENV}={os.environ[LOCK_WAIT_ENV]!r} is "
                                     f"not a number of seconds") from None
        deadline = time.monotonic() + max(wait, 0.0)
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as err:
            raise (storage_error(err, self.path) or err) from None
        token = uuid.uuid4().hex
        started = time.time()
        record = {"host": self.host, "pid": os.getpid(), "started": _now_text(started), "started_unix": started,
                  "token": token, **_elastic_attempt()}
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if info is None:
                    continue  # released in between: try again
                reason = self.stale_reason(info)
                if reason is not None:
                    self._take_over(info, reason)
                    continue
                if time.monotonic() < deadline:
                    time.sleep(min(5.0, max(self.heartbeat / 2, 0.05)))
                    continue
                raise RunFolderError(
                    f"output folder {self.folder} is in use by a live training run ({self.describe(info)}; lock "
                    f"file {self.path}). Two trainings would overwrite each other's checkpoints and logs: wait "
                    f"for it to end or stop it (kill {info.get('pid', 'PID')} on {info.get('host', 'its host')}, "
                    f"scancel its job), or pass another --output_dir. A lock not refreshed for "
                    f"{self.stale_after:.0f} s is taken over automatically") from None
            except OSError as err:  # read-only or full filesystem
                raise (storage_error(err, self.path) or err) from None
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(record, f)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException as err:
                self._remove_if_ours(token, force=True)
                failed = storage_error(err, self.path) if isinstance(err, OSError) else None
                if failed is not None:
                    raise failed from None
                raise
            self.token = token
            self._start_heartbeat()
            return self

    def _take_over(self, info: dict, reason: str) -> None:
        """Remove the stale lock `info` (unless someone else replaced it meanwhile), under the guard file."""
        import time

        guard = self.path + ".takeover"
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - os.stat(guard).st_mtime > GUARD_STALE_SECONDS:
                    os.unlink(guard)  # left by a process killed mid-takeover
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return
        os.close(fd)
        try:
            now = self.holder()
            if now is not None and now.get("token") == info.get("token") and self.stale_reason(now) is not None:
                os.unlink(self.path)
                self.warnings.append(f"took over the run-folder lock {self.path} of {self.describe(info)}: {reason}")
        finally:
            try:
                os.unlink(guard)
            except FileNotFoundError:
                pass

    def _start_heartbeat(self) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            info = self.holder()
            if info is None or info.get("token") != self.token:
                self._lost(info)
                return
            try:
                os.utime(self.path, None)  # the file server's clock on NFS (SET_TO_SERVER_TIME)
            except FileNotFoundError:
                self._lost(None)
                return
            except OSError:
                pass  # a full or flaky disk: the next beat tries again

    def _lost(self, info) -> None:
        from utils.logger import get_logger

        by = f" by {self.describe(info)}" if info else ""
        msg = (f"the run-folder lock {self.path} was taken over{by} (this process did not refresh it for "
               f"{self.stale_after:.0f} s); another training may now write this folder")
        self.warnings.append(msg)
        get_logger().warning(msg)
        self.token = None

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours (idempotent)."""
        if self._stop is not None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._stop = self._thread = None
        if self.token is not None:
            self._remove_if_ours(self.token)
            self.token = None

    def _remove_if_ours(self, token: str, force: bool = False) -> None:
        info = self.holder()
        if force or (info is not None and info.get("token") == token):
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
