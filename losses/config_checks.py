"""Config cross-check owned by the losses: every enabled task has a loss weight.

Why here: the criterion (losses/criterion.py) reads `loss_kwargs.loss_weights[task]` for every enabled
task and the MLoRE balancing term's weight, so a missing weight would fail only at the first training
step. Importing this module registers `check_loss_weights` with utils.config, after the data check whose
TASKS.NAMES it reads; engine/config.py imports it.
"""
from __future__ import annotations

import data.config_checks  # noqa: F401  (registers the data check first: this one reads its TASKS.NAMES)
from utils.config import Checker, register_config_check

__all__ = ["check_loss_weights", "LOAD_BALANCING_WEIGHT"]

LOAD_BALANCING_WEIGHT = 0.0003  # default weight of MLoRE's expert-balancing (cv) term


def check_loss_weights(cfg: dict, raw: dict, chk: Checker) -> None:
    """A weight for each enabled task; fills the load_balancing weight when absent."""
    lw = cfg["loss_kwargs"]["loss_weights"]
    missing = [t for t in cfg["TASKS"]["NAMES"] if t not in lw]
    if missing:
        chk.fail("loss_kwargs.loss_weights", f"has no weight for the enabled task(s) {', '.join(missing)}.",
                 "Add e.g. `" + missing[0] + ": 1.0` (paper weights are in configs/_base_).")
    lw.setdefault("load_balancing", LOAD_BALANCING_WEIGHT)


register_config_check(check_loss_weights, "losses")
