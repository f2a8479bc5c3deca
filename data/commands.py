"""The command-line names of the datasets that `python -m data.download` and `python -m data.verify` know.

Each DatasetSpec carries its own `cli_name` (data/registry.py); this module keeps the older
table-style names as live views of the registry, so a dataset registered later (a plug-in, a test) is
listed too.
"""
from __future__ import annotations

from collections.abc import Mapping

from .registry import _REGISTRY


class _CliNames(Mapping):
    """{--dataset value: registered dataset name}, read afresh on every use."""

    def _table(self) -> dict:
        return {spec.cli_name: name for name, spec in _REGISTRY.items()}

    def __getitem__(self, short):
        return self._table()[short]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"CLI_NAMES{self._table()!r}"


CLI_NAMES = _CliNames()  # --dataset value -> registered dataset name


def cli_name(db_name: str) -> str | None:
    """The --dataset value of a registered dataset name, or None for an unknown name."""
    spec = _REGISTRY.get(db_name)
    return spec.cli_name if spec is not None else None
