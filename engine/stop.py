"""Graceful stop: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 ask training to stop after the current step.

Why: clusters pre-empt jobs. SLURM sends SIGTERM (or, with `--signal=USR1@180`, SIGUSR1) some time
before the kill; torchrun forwards SIGTERM/SIGINT to its workers. Dying on the signal would lose every
iteration since the last checkpoint. Here the first signal only sets a flag: the trainer finishes the
step it is in, all ranks agree on the stop iteration, `last.pth` is written and the process exits with
status 128 + signal number (130 for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1), the shell convention
for "ended by this signal", so schedulers and scripts can tell a pre-emption from success (0) and from
errors (1 bug, 2 user error).

During an evaluation the state is already saved (the checkpoint is written before evaluating), so a
signal there aborts the evaluation at once instead of waiting minutes for it; the evaluation runs
again when the run resumes. A second Ctrl-C (SIGINT) exits at once (KeyboardInterrupt) for a user who
does not want to wait; a repeated SIGTERM or SIGUSR1 is the same request again (under `srun torchrun` every
worker receives SIGTERM twice, from SLURM and from torchrun) and changes nothing.
"""
from __future__ import annotations

import signal
import threading

__all__ = ["StopSignals", "TrainingStopped", "EvaluationInterrupted", "exit_status_for", "STOP_SIGNALS",
           "signal_name"]

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status_for(signum: int) -> int:
    """128 + signal number: what a shell reports for a process ended by that signal."""
    return 128 + int(signum)


class TrainingStopped(Exception):
    """Training stopped early on a signal after saving; `status` is the process exit status."""

    def __init__(self, iteration: int, max_iter: int, signum: int, checkpoint: str | None):
        self.iteration, self.max_iter, self.signum, self.checkpoint = iteration, max_iter, signum, checkpoint
        self.status = exit_status_for(signum)
        super().__init__(f"stopped at iteration {iteration} of {max_iter} ({signal_name(signum)})"
                         + (f"; state saved in {checkpoint}" if checkpoint else "")
                         + "; run the same command to resume")


class EvaluationInterrupted(Exception):
    """Raised from the signal handler while an evaluation runs (the state was saved before it)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal_name(signum))


class StopSignals:
    """Context manager installing the stop handlers (main thread only; elsewhere it does nothing).

    `requested`: the first signal's number or None. `interruptible`: while True (evaluation), a signal
    raises EvaluationInterrupted. `on_signal(signum)`: called once, for a log line.
    """

    def __init__(self, on_signal=None):
        self.requested: int | None = None
        self.interruptible = False
        self.on_signal = on_signal
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        return False

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: exit at once
            return  # SLURM and torchrun both deliver SIGTERM: a repeat is the same request
        self.requested = signum
        if self.on_signal is not None:
            self.on_signal(signum)
        if self.interruptible:
            raise EvaluationInterrupted(signum)
