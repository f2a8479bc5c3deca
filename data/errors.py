"""The one exception type of the data package, in a module of its own.

Why separate: both the dataset registry (data/registry.py) and the file helpers (data/common.py) raise
it, and the helpers read the registry; keeping the class here lets both import it without a cycle.
"""
from __future__ import annotations


class DatasetError(Exception):
    """A dataset cannot be read: the message says which path, which sample and what to do."""
