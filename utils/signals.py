"""Helper processes leave stop signals to the main process.

Why: a terminal's Ctrl-C and a cluster's pre-emption signal reach every process of the job, helper
processes included (DataLoader workers, the boundary-matching pool). The main process finishes its step,
saves and then shuts its helpers down itself; a helper that died on the signal first would make that last
step fail ("DataLoader worker exited unexpectedly") or print its own KeyboardInterrupt traceback. Helpers
still exit when the main process dies (DataLoader's parent watchdog, the pool's broken pipe).

Imports nothing but the standard library: spawned boundary workers import it without torch.
"""
from __future__ import annotations

import signal

__all__ = ["ignore_stop_signals", "STOP_SIGNAL_NAMES"]

STOP_SIGNAL_NAMES = ("SIGINT", "SIGTERM", "SIGUSR1")


def ignore_stop_signals(*_args) -> None:
    """Ignore SIGINT, SIGTERM and SIGUSR1 in this (helper) process; usable as a pool initializer."""
    for name in STOP_SIGNAL_NAMES:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
