"""Logging: console + `<output_dir>/log.txt` on rank 0, and a progress display that suits the terminal.

Why `logging` instead of the original's stdout tee: the tee replaced `sys.stdout` and closed the console
when it was garbage-collected, and other ranks printed the same lines. Here rank 0 logs INFO to the
console and appends to log.txt; other ranks only report warnings and errors (prefixed with their rank).

`Progress` shows a tqdm bar (loss, lr, it/s, ETA) on an interactive terminal; when stderr is not a tty,
or `CI=true`, it writes the same figures as plain log lines every `every` iterations instead, so log files
and CI output stay readable.
"""
from __future__ import annotations

import logging
import os
import sys
import time

__all__ = ["setup_logger", "get_logger", "Progress", "interactive", "format_seconds"]

LOGGER_NAME = "taskdiffusion"
_FORMAT = "%(asctime)s %(levelname).1s %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logger(output_dir: str | None = None, rank: int = 0, filename: str = "log.txt") -> logging.Logger:
    """Configure the project logger (idempotent: handlers of a previous call are replaced).

    rank 0: INFO to stdout and to `<output_dir>/log.txt` (appended, so a resumed run continues the file).
    other ranks: WARNING and above to stderr, tagged with the rank.
    """
    log = get_logger()
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter(_FORMAT if rank == 0 else f"[rank {rank}] " + _FORMAT, datefmt=_DATEFMT)
    console = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(fmt)
    log.addHandler(console)
    if rank == 0 and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fh = _RunLogHandler(os.path.join(output_dir, filename), mode="a", encoding="utf-8")
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
        log.addHandler(fh)
    return log


class _RunLogHandler(logging.FileHandler):
    """log.txt: when a write fails (full disk, I/O error) it says so in one line on stderr and stops writing
    the file, instead of logging's 'Logging error' traceback at every later message; the console keeps
    every message and the run goes on to its own storage report (engine/runner.py)."""

    def handleError(self, record) -> None:  # noqa: N802 - logging's name
        import sys as _sys

        err = _sys.exc_info()[1]
        reason = getattr(err, "strerror", None) or str(err)
        print(f"warning: cannot write {self.baseFilename}: {reason}; the log continues on the console only",
              file=_sys.stderr, flush=True)
        get_logger().removeHandler(self)
        try:
            self.close()
        except OSError:
            pass


def close_logger() -> None:
    """Flush and detach every handler (tests and repeated runs in one process)."""
    log = get_logger()
    for h in list(log.handlers):
        log.removeHandler(h)
        try:
            h.flush()
            h.close()
        except OSError:  # a full disk refuses the last flush: the messages are on the console
            pass


def interactive(stream=None) -> bool:
    """True when a progress bar makes sense: a tty, and not a CI environment."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_seconds(s: float) -> str:
    s = max(int(round(s)), 0)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """Progress over `total` steps starting at `start` (a resumed run starts mid-way).

    update(n, **figures): advance n steps and show figures (floats formatted compactly).
    enabled=False (non-zero ranks) makes every call a no-op.
    """

    def __init__(self, total: int, start: int = 0, desc: str = "", every: int = 20, enabled: bool = True,
                 use_bar: bool | None = None, logger: logging.Logger | None = None):
        self.total, self.n, self.desc, self.every = int(total), int(start), desc, max(int(every), 1)
        self.enabled = enabled
        self.log = logger or get_logger()
        self.start_n, self.t0 = self.n, time.perf_counter()
        self.bar = None
        if enabled and (interactive() if use_bar is None else use_bar):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, dynamic_ncols=True, leave=True)

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return (self.n - self.start_n) / dt if dt > 0 else 0.0

    def eta(self) -> float:
        r = self.rate()
        return (self.total - self.n) / r if r > 0 else float("nan")

    def update(self, n: int = 1, **figures) -> None:
        if not self.enabled:
            return
        self.n += n
        text = {k: _fmt(v) for k, v in figures.items()}
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
            self.bar.update(n)
        elif self.n % self.every == 0 or self.n == self.total:
            eta = self.eta()
            parts = " ".join(f"{k} {v}" for k, v in text.items())
            self.log.info(f"{self.desc} {self.n}/{self.total} {parts} {self.rate():.2f} it/s "
                          f"ETA {format_seconds(eta) if eta == eta else '?'}".strip())

    def write(self, message: str) -> None:
        """Log a message without breaking the bar."""
        if self.bar is not None:
            self.bar.clear()
        self.log.info(message)
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if (abs(v) < 1e-3 and v != 0) or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v)
