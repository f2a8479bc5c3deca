"""Atomic file writes: a crash or Ctrl-C mid-write never leaves a truncated checkpoint, config, metrics
file or picture under the final name (the old file stays until the new one is complete)."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def atomic_write(path: str, write: Callable[[str], None], fsync: bool = False) -> str:
    """Call `write(tmp_path)` on a temporary file next to `path`, then rename it over `path`.

    The temporary name keeps the extension (libraries such as PIL pick the format from it) and starts
    with a dot. fsync: flush the data to disk before the rename (checkpoints: survive a power loss).
    Creates the folder; removes the temporary file on any error. Returns `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + os.path.splitext(base)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
