"""Config cross-check owned by the evaluation: the Delta_m reference covers every enabled task.

Why here: Delta_m (evaluation/delta.py) averages the relative change of each enabled task's headline
metric, so a reference without one of them cannot be used; saying so at load time beats a blank Delta_m
after hours of training. Importing this module registers `check_delta_m_reference` with utils.config,
after the data check whose derived db_name and TASKS.NAMES it reads; engine/config.py imports it.
"""
from __future__ import annotations

import data.config_checks  # noqa: F401  (registers the data check first: this one reads its TASKS.NAMES)
from data import tasks as task_table
from utils.config import Checker, register_config_check

__all__ = ["check_delta_m_reference", "check_eval_aggregation"]


def check_delta_m_reference(cfg: dict, raw: dict, chk: Checker) -> None:
    """delta_m_reference (when set) gives the headline metric of every enabled task."""
    ref = cfg["delta_m_reference"]
    if not ref:
        return
    for t in cfg["TASKS"]["NAMES"]:
        metric = task_table.task_info(cfg["db_name"], t).metric
        if t not in ref or metric not in ref[t]:
            chk.fail(f"delta_m_reference.{t}", f"needs the headline metric {metric!r} of the enabled task "
                                               f"{t!r} (Delta_m averages over all enabled tasks).",
                     "Add it, or set delta_m_reference: null to skip Delta_m.")


register_config_check(check_delta_m_reference, "evaluation")


def check_eval_aggregation(cfg: dict, raw: dict, chk: Checker) -> None:
    """eval_aggregation names, per enabled task, a rule that task accepts (Task.aggregation_rules)."""
    rules = cfg.get("eval_aggregation") or {}
    for t, rule in rules.items():
        if t not in cfg["TASKS"]["NAMES"]:
            chk.fail(f"eval_aggregation.{t}", f"task {t!r} is not enabled (enabled: "
                                              f"{', '.join(cfg['TASKS']['NAMES'])}).", "Remove the entry.")
            continue
        task = task_table.task_info(cfg["db_name"], t)
        if ":" not in str(rule) and rule not in task.aggregation_rules:
            chk.fail(f"eval_aggregation.{t}", f"unknown aggregation {rule!r} for task {t!r}.",
                     f"Use one of: {', '.join(task.aggregation_rules)} (or a 'module:function' reference).")


register_config_check(check_eval_aggregation, "evaluation.eval_aggregation")
