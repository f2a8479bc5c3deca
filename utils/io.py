"""Atomic file writes: a crash or Ctrl-C mid-write never leaves a truncated checkpoint, config, metrics
file or picture under the final name (the old file stays until the new one is complete).

Temporary files are named `.{basename}.XXXXXXXX.tmp{ext}` next to the target; `is_atomic_temporary`
recognises them so that leftovers of a killed process can be cleaned up (utils.checkpoint does so for
checkpoints). The final file gets the usual permissions `0o666 & ~umask`, like a file made by `open`.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
from typing import Callable

__all__ = ["atomic_write", "current_umask", "is_atomic_temporary", "TEMP_MARKER"]

TEMP_MARKER = ".tmp"
# tempfile's random part: 8 characters of [a-z0-9_]
_TEMP_RE = re.compile(r"^\.(?P<base>.+)\.[a-z0-9_]{8}\.tmp(?P<ext>\.[^.]*)?$")
_UMASK_LOCK = threading.Lock()


def atomic_write(path: str, write: Callable[[str], None], fsync: bool = False) -> str:
    """Call `write(tmp_path)` on a temporary file next to `path`, then rename it over `path`.

    The temporary name keeps the extension (libraries such as PIL pick the format from it) and starts
    with a dot. fsync: flush the data to disk before the rename (checkpoints: survive a power loss).
    Creates the folder; removes the temporary file on any error. The final file is readable as the
    umask allows (mkstemp alone would leave every output private, 0600). Returns `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=TEMP_MARKER + os.path.splitext(base)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        _apply_umask_mode(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
