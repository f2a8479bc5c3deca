"""Atomic file writes: a crash or Ctrl-C mid-write never leaves a truncated checkpoint, config, metrics
file or picture under the final name (the old file stays until the new one is complete).

Temporary files are named `.{basename}.XXXXXXXX.tmp{ext}` next to the target; `is_atomic_temporary`
recognises them so that leftovers of a killed process can be cleaned up (utils.checkpoint does so for
checkpoints). The final file gets the usual permissions `0o666 & ~umask`, like a file made by `open`.

Storage failures (a full disk or quota, an I/O error, a read-only filesystem) during such a write raise
`StorageError` naming the final file and the reason, whatever the writer was (torch.save, PIL, cv2, json):
the temporary file is removed and the previous file under the final name is untouched, so the caller can
say in one line that nothing was lost (engine/runner.py, infer.py).
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
import threading
from typing import Callable

__all__ = ["atomic_write", "current_umask", "is_atomic_temporary", "TEMP_MARKER", "StorageError", "STORAGE_ERRNOS",
           "storage_error", "free_bytes"]

TEMP_MARKER = ".tmp"
# tempfile's random part: 8 characters of [a-z0-9_]
_TEMP_RE = re.compile(r"^\.(?P<base>.+)\.[a-z0-9_]{8}\.tmp(?P<ext>\.[^.]*)?$")
_UMASK_LOCK = threading.Lock()

# errno values that mean "the storage refused the write" (the user can free space, fix the mount, retry)
STORAGE_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("ENOSPC", "EDQUOT", "EIO", "EROFS", "EFBIG"))
                           if e is not None)
_LOW_SPACE = 1 << 20  # a failed write with less free space than this on its filesystem is a full disk


class StorageError(OSError):
    """A write failed because of the storage (ENOSPC, EDQUOT, EIO, EROFS). `path`: the file that could not be
    written; `reason`: the system's words ('No space left on device'). An OSError subclass with the errno set,
    so callers that catch OSError still do."""

    def __init__(self, path: str, err_no: int, reason: str | None = None):
        self.path = os.fspath(path)
        self.reason = reason or os.strerror(err_no)
        super().__init__(err_no, self.reason, self.path)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"

    def __reduce__(self):  # picklable (DataLoader workers, multiprocessing)
        return (type(self), (self.path, self.errno, self.reason))


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged process may still write on the filesystem holding `path` (its nearest existing
    ancestor); None when the OS cannot say."""
    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        st = os.statvfs(probe)
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def _storage_errno(err: BaseException) -> int | None:
    """The storage errno in `err` or its chain (torch wraps the OSError of a full disk in a RuntimeError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def _probe_storage(folder: str) -> int | None:
    """For a write that failed without an errno (torch.save to a path, cv2.imwrite returning False): EROFS
    when the filesystem is mounted read-only, ENOSPC when it has (almost) no space left, else None."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    if st.f_flag & getattr(os, "ST_RDONLY", 1):
        return errno.EROFS
    if int(st.f_bavail) * int(st.f_frsize) < _LOW_SPACE:
        return errno.ENOSPC
    return None


def storage_error(err: BaseException, path: str, probe: bool = False) -> StorageError | None:
    """`err` as a StorageError for writing `path` when the storage caused it, else None.

    probe: also ask the filesystem of `path` (read-only? full?) when `err` carries no errno."""
    if isinstance(err, StorageError):
        return err
    code = _storage_errno(err)
    if code is None and probe:
        code = _probe_storage(os.path.dirname(os.path.abspath(os.fspath(path))) or ".")
    return StorageError(path, code) if code is not None else None


def atomic_write(path: str, write: Callable[[str], None], fsync: bool = False) -> str:
    """Call `write(tmp_path)` on a temporary file next to `path`, then rename it over `path`.

    The temporary name keeps the extension (libraries such as PIL pick the format from it) and starts
    with a dot. fsync: flush the data to disk before the rename (checkpoints: survive a power loss).
    Creates the folder; removes the temporary file on any error. The final file is readable as the
    umask allows (mkstemp alone would leave every output private, 0600). Returns `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        base = os.path.basename(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=TEMP_MARKER + os.path.splitext(base)[1], dir=folder)
        os.close(fd)
    except OSError as err:
        failed = storage_error(err, path)
        if failed is None:
            raise
        raise failed from None
    try:
        write(tmp)
        _apply_umask_mode(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _remove_quietly(tmp)
        if isinstance(err, Exception):
            failed = storage_error(err, path, probe=isinstance(err, (OSError, RuntimeError)))
            if failed is not None:
                raise failed from None
        raise
    return path


def _remove_quietly(tmp: str) -> None:
    """Remove a temporary file after a failed write (an I/O error may refuse that too: nothing more to do)."""
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    except OSError:
        pass


def is_atomic_temporary(name: str) -> bool:
    """True when `name` (a file name, not a path) looks like a temporary file of `atomic_write`."""
    m = _TEMP_RE.match(name)
    return bool(m) and (m.group("ext") or "") == os.path.splitext(m.group("base"))[1]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in /proc/self/status; elsewhere the only way is os.umask(0) followed by a restore,
    which briefly leaves the process with umask 0 (another thread creating a file in that instant would
    make it world-writable), so the swap is done under one lock and as short as possible.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def _apply_umask_mode(tmp: str) -> None:
    """Give the temporary file the mode a plain `open(path, 'w')` would have given the final file.

    Filesystems without Unix permissions (some network or FAT mounts) refuse chmod; the write itself is
    still valid there, so that refusal is ignored.
    """
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
    except (OSError, NotImplementedError):
        pass
