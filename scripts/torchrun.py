"""torchrun (`python -m torch.distributed.run`), except that workers ending with a documented status of
main.py end the launcher with that status and without torchrun's traceback.

    python scripts/torchrun.py --standalone --nproc_per_node=2 main.py --config_exp ... --run_mode train

Why: main.py reports a user error (bad config, missing data or weights, bad --device, a run folder in
use) in one `error:` line with status 2, a storage failure with 75, a graceful stop with 128 + signal.
Under plain torchrun that line is followed by a 30-line ChildFailedError traceback and status 1, which
buries it. Here, when the first failed worker exited with one of QUIET_STATUSES (and the others with
one too, or were stopped by torchrun after it), torchrun's "failed (exitcode: N)" log lines and its
traceback are dropped and the launcher exits with the first failed worker's status. Any other failure (a crash: status 1, a worker killed by a signal) keeps
torchrun's full report. Every torchrun argument works unchanged.
"""
from __future__ import annotations

import logging
import re
import sys

QUIET_STATUSES = frozenset({2, 75, 130, 138, 143})  # user error, storage failure, graceful stop (main.py docstring)
_FAILED = re.compile(r"failed \(exitcode: (-?\d+)\)")


class _DropQuietFailures(logging.Filter):
    """Drops torchrun's per-worker 'failed (exitcode: 2) local_rank: 0 ...' line for a quiet status."""

    def filter(self, record: logging.LogRecord) -> bool:
        m = _FAILED.search(record.getMessage())
        return not (m and int(m.group(1)) in QUIET_STATUSES | _STOPPED_BY_AGENT)


_STOPPED_BY_AGENT = frozenset({-15, -9})  # SIGTERM, then SIGKILL after --shutdown_timeout: torchrun stopping the rest


def quiet_status(err) -> int | None:
    """The exit status to end with quietly, or None when torchrun's report must be kept.

    Quiet when the first failure (torchrun's root cause) has a documented status and every other failed
    worker either has one too or was stopped by torchrun because of that first failure (SIGTERM/SIGKILL)."""
    failures = getattr(err, "failures", None) or {}
    codes = [f.exitcode for _, f in sorted(failures.items(), key=lambda kv: kv[1].timestamp)]
    if codes and codes[0] in QUIET_STATUSES and all(c in QUIET_STATUSES | _STOPPED_BY_AGENT for c in codes[1:]):
        return int(codes[0])
    return None


def main(argv=None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_DropQuietFailures())

    @record
    def launch():
        try:
            run(parse_args(argv))
        except ChildFailedError as err:
            status = quiet_status(err)
            if status is None:
                raise
            return status
        return 0

    return launch()


if __name__ == "__main__":
    sys.exit(main())
