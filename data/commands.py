"""The command-line names of the datasets that `python -m data.download` and `python -m data.verify` know.

Why a module of its own: the readers' help text (data/common.py) names these commands, and the commands
import data/common.py; a leaf table both can import keeps the graph free of cycles.
"""
from __future__ import annotations

CLI_NAMES = {"pascal": "PASCALContext", "nyud": "NYUD"}  # --dataset value -> registered dataset name


def cli_name(db_name: str) -> str | None:
    """The --dataset value of a registered dataset name, or None when the commands do not handle it."""
    return next((short for short, name in CLI_NAMES.items() if name == db_name), None)
