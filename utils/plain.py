"""One conversion of configs and metadata to plain Python values (dict, list, str and numbers).

Why one: the resolved config is written as YAML, compared with a saved copy, stored in checkpoints and
reduced to a run folder's identity; each of those needs the same plain form, and separate copies of the
conversion had drifted apart (some kept paths or numpy scalars that YAML or `weights_only` loading then
rejects). utils.checkpoint sanitises further (arrays, enums, unknown objects) on top of this.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

__all__ = ["to_plain"]


def to_plain(v: Any, arrays: bool = False) -> Any:
    """A copy of `v` with mappings (EasyDict, OrderedDict) as dict, tuples and lists as list, paths as
    str and 0-d numpy/torch scalars as Python numbers; keys and other values are kept as they are.

    arrays=True (JSON output such as metrics files): numpy arrays and torch tensors become (nested) lists
    too, a one-element tensor its number. Off by default: checkpoint metadata keeps its tensors (RNG states)."""
    if isinstance(v, Mapping):
        return {k: to_plain(x, arrays) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(x, arrays) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if arrays and hasattr(v, "tolist") and hasattr(v, "ndim") and v.ndim > 0:
        is_tensor = hasattr(v, "numel")  # torch: a one-element tensor is reported as its number
        return v.item() if is_tensor and v.numel() == 1 else v.tolist()
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        return v.item()
    return v
