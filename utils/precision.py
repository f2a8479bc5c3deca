"""Which numeric precision a forward pass runs in, decided from the config in one place.

Why here and not in the config loader: training, evaluation, infer.py and the tools all ask the same
question for their device, and the answer depends on the device as well as on the `amp` / `amp_cpu`
keys (docs/configs.md), so it belongs next to the code that runs models, not to YAML loading.
"""
from __future__ import annotations

from typing import Mapping

__all__ = ["bf16_autocast"]


def bf16_autocast(cfg: Mapping, device) -> bool:
    """Whether forwards on `device` run under bfloat16 autocast: `amp` on CUDA, `amp` and `amp_cpu` on
    CPU; never on other devices."""
    if not bool(cfg.get("amp", True)):
        return False
    kind = getattr(device, "type", str(device).split(":")[0])
    return kind == "cuda" or (kind == "cpu" and bool(cfg.get("amp_cpu", False)))
