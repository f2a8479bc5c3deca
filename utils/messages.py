"""User-facing message text: one helper shared by every `error:` printer (utils.distributed.format_error,
utils.cli, the engine's logger lines), in a module that imports nothing of the project so any of them
can use it."""
from __future__ import annotations

__all__ = ["one_line"]


def one_line(message) -> str:
    """The message on one line (its lines joined by ' | ', runs of blanks squeezed), so that a user-facing
    error stays one `error:` line even when a library or a reader wrote a multi-line help text."""
    lines = (" ".join(line.split()) for line in str(message).splitlines())
    return " | ".join(line for line in lines if line)
