"""Multi-task performance Δm: the mean relative change of each task's headline metric against a reference.

    Δm = (1/T) Σ_t (-1)^{l_t} · (M_t - M_ref,t) / M_ref,t · 100   [percent]

with l_t = 1 when lower is better for task t (normals mean angle, depth RMSE) and 0 otherwise (Maninis
et al., CVPR 2019). The headline metric and its direction come from data.tasks (TaskInfo.metric,
TaskInfo.higher_is_better). Positive Δm = better than the reference on average.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

from data import tasks as task_table

__all__ = ["delta_m", "headline_value"]


def headline_value(results: Mapping, task: str, metric: str) -> float:
    """results[task][metric], falling back to the in-training estimate '<metric>_est' (edge odsF)."""
    per_task = results.get(task)
    if per_task is None:
        raise KeyError(f"Delta_m: no results for task '{task}' (results have {sorted(results)})")
    for key in (metric, f"{metric}_est"):
        if key in per_task:
            return float(per_task[key])
    raise KeyError(f"Delta_m: results['{task}'] has no '{metric}' (nor '{metric}_est'); it has {sorted(per_task)}")


def delta_m(results: Mapping, reference: Mapping, db_name: str, tasks: Iterable[str]) -> float:
    """Δm in percent of `results` ({task: {metric: value}}) against `reference` (same layout, e.g. the
    config's delta_m_reference, or single-task baselines)."""
    infos = task_table.task_infos(db_name, list(tasks))
    if not infos:
        raise ValueError("Delta_m needs at least one task")
    terms = []
    for t, info in infos.items():
        if t not in reference or info.metric not in reference[t]:
            raise KeyError(f"Delta_m: the reference has no '{info.metric}' for task '{t}'; add "
                           f"delta_m_reference.{t}.{info.metric} to the config")
        ref = float(reference[t][info.metric])
        if ref == 0 or not math.isfinite(ref):
            raise ValueError(f"Delta_m: reference {t}.{info.metric} = {ref} cannot be a divisor")
        value = headline_value(results, t, info.metric)
        sign = 1.0 if info.higher_is_better else -1.0
        terms.append(sign * (value - ref) / ref * 100.0)
    return sum(terms) / len(terms)
