"""Evaluation: every rank scores its shard, the metric sums are all-reduced, rank 0 reports.

Why every rank: the original evaluated on rank 0 only while the others waited in a collective (with a 2 h
timeout as a workaround). Here the val loader gives each rank a disjoint shard (indices r::world, no padding
duplicates), `evaluation.build_evaluator` accumulates pooled sums, and `synchronize()` all-reduces them, so N
ranks give the numbers of one process.

`evaluate` is a composition of the shared prediction path (engine/predict.py, also used by infer.py and the
SEISM exporter) with the sinks it needs (engine/sinks.py); the rest of this module turns results into
JSON, tables and Delta_m.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch

from data.sample_errors import describe_failures
from engine.predict import run_predictions
from engine.sinks import MetricsSink, PredictionPNGSink, UncertaintySink, VisualGridSink
from utils.config import cfg_get
from utils.plain import to_plain as _to_plain
from utils.precision import bf16_autocast
from utils.distributed import all_reduce_sum, get_rank, is_main_process
from utils.io import atomic_write
from utils.logger import LOGGER_NAME, interactive

__all__ = ["EvalOutput", "evaluate", "ensemble_options", "add_uncertainty_results", "write_curve_pictures", "write_json_atomic", "metric_table", "headline_metrics", "compute_delta_m",
           "metrics_path", "to_plain"]


@dataclass
class EvalOutput:
    results: dict  # {task: {metric: value}}
    num_images: int
    visuals: list = field(default_factory=list)  # rank 0: [(name, grid RGB uint8)]
    curves: list = field(default_factory=list)  # rank 0, ensembles: [(task, sparsification plot RGB uint8)]
    skipped: list = field(default_factory=list)  # every rank's unreadable samples (data_errors: skip)


def _infos(cfg) -> dict:
    from data.tasks import task_infos

    return task_infos(cfg.db_name, cfg.TASKS.NAMES)


def _shard_bar(loader, desc: str):
    """A transient progress bar over this rank's samples."""
    from tqdm import tqdm

    try:
        total = len(loader.sampler)
    except TypeError:
        total = None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="img")


@torch.no_grad()
def evaluate(model, loader, cfg, device, *, full_edge: bool = True, seed: int | None = None, amp: bool | None = None,
             pred_dir: str | None = None, n_visuals: int = 0, progress: bool = True,
             desc: str = "eval") -> EvalOutput:
    """Evaluate `model` (unwrapped for the forward) on this rank's shard of `loader`; all ranks must call it.

    full_edge: full boundary protocol (final/infer) instead of the in-training estimate.
    pred_dir: write every prediction at its original size under pred_dir/<task>/ (each rank its shard).
    n_visuals: on rank 0, return input/GT/prediction grids of the first n images of its shard.
    amp: bf16 autocast on/off; None: as the config says (utils.precision.bf16_autocast).
    Unreadable samples follow cfg.data_errors (engine/predict.py).
    """
    from evaluation import build_evaluator

    show = bool(progress) and interactive() and is_main_process()
    metrics = MetricsSink(build_evaluator(cfg, full_edge=full_edge, progress=show))
    grids = VisualGridSink(limit=int(n_visuals) if get_rank() == 0 else 0)
    sinks = [metrics, grids] + ([PredictionPNGSink(pred_dir)] if pred_dir else [])
    options = ensemble_options(cfg)
    unc = UncertaintySink(_infos(cfg)) if options["samples"] > 1 else None
    sinks += [unc] if unc is not None else []
    policy = str(cfg_get(cfg, "data_errors", "abort"))
    run = run_predictions(model, loader, sinks, tasks=_infos(cfg), device=device,
                          seed=int(cfg_get(cfg, "seed", 0)) if seed is None else int(seed),
                          amp=bf16_autocast(cfg, device) if amp is None else bool(amp), data_errors=policy,
                          progress=_shard_bar(loader, desc) if show else None, **options)
    if run.failed and is_main_process():
        logging.getLogger(LOGGER_NAME).warning(f"{desc}: left out {describe_failures(run.failed)} (data_errors: skip)")
    results = metrics.compute()
    curves = add_uncertainty_results(results, unc) if unc is not None else []
    n = all_reduce_sum(torch.tensor([run.count], dtype=torch.int64)).item()
    return EvalOutput(results=to_plain(results), num_images=int(n), visuals=grids.grids, skipped=run.failed,
                      curves=curves if get_rank() == 0 else [])


def add_uncertainty_results(results: dict, sink) -> list:
    """Merge an UncertaintySink's scores into `results` ({task: {..., 'unc_ause', ...}}; a collective) and
    return [(task, sparsification plot)] of the tasks scored."""
    from utils.visualization import sparsification_plot

    scores = sink.compute(results)
    for t, res in scores.items():
        results.setdefault(t, {}).update(res)
    return [(t, sparsification_plot(t, res)) for t, res in scores.items() if "unc_curves" in res]


def write_curve_pictures(curves: list, folder: str) -> list:
    """Each (task, picture) of EvalOutput.curves as folder/<task>.png; returns the paths."""
    from utils.visualization import save_png

    return [save_png(os.path.join(folder, f"{t}.png"), pic) for t, pic in curves]


def ensemble_options(cfg, samples: int | None = None) -> dict:
    """run_predictions' ensemble arguments from a config (eval_samples, samples_chunk, eval_aggregation);
    samples: a command line's --samples, overriding eval_samples."""
    n = int(cfg_get(cfg, "eval_samples", 1) if samples is None else samples)
    if n < 1:
        raise ValueError(f"samples must be 1 or more, got {n}")
    chunk = cfg_get(cfg, "samples_chunk", None)
    return {"samples": n, "samples_chunk": None if chunk is None else int(chunk),
            "aggregation": dict(cfg_get(cfg, "eval_aggregation", None) or {})}


def to_plain(v):
    """Plain Python numbers and containers (tensors, numpy scalars and arrays converted) for JSON."""
    return _to_plain(v, arrays=True)


def headline_metrics(results: dict, cfg) -> dict:
    """{task: value of the task's headline metric (table metric)} for the tasks present in results."""
    infos = _infos(cfg)
    out = {}
    for t, info in infos.items():
        key = headline_key(results.get(t, {}), info.metric)
        if key is not None:
            out[t] = float(results[t][key])
    return out


def headline_key(per_task: dict, metric: str):
    """The key of the headline metric: `metric`, or its in-training estimate `<metric>_est` (edge odsF)."""
    for key in (metric, f"{metric}_est"):
        if key in per_task:
            return key
    return None


def compute_delta_m(results: dict, reference: dict | None, cfg, skip_zero: bool = False) -> float | None:
    """Delta_m (percent) of `results` against `reference` ({task: {metric: value}}), None without one.

    skip_zero: leave out tasks whose reference value is 0 (a run's own first evaluation can score 0 mIoU,
    which cannot be a divisor); None when no task is left.
    """
    if not reference:
        return None
    from evaluation import delta_m

    infos = _infos(cfg)
    tasks = list(infos)
    if skip_zero:
        tasks = [t for t in tasks if float(reference.get(t, {}).get(infos[t].metric, 0.0) or 0.0) != 0.0]
        if not tasks:
            return None
    try:
        return float(delta_m(results, reference, cfg.db_name, tasks))
    except (KeyError, ValueError) as err:
        # a reference that does not cover the run's tasks/metrics: say so instead of a silent blank
        logging.getLogger(LOGGER_NAME).warning(
            f"Delta_m not computed: {type(err).__name__}: {err}. delta_m_reference must give "
            f"{{task: {{metric: value}}}} for every task of the run ({', '.join(tasks)}); fix it in the "
            f"config or set delta_m_reference: null")
        return None


def metrics_path(output_dir: str, iteration: int, tag: str = "iter") -> str:
    return os.path.join(output_dir, "metrics", f"metrics_{tag}{int(iteration):06d}.json")


def write_json_atomic(path: str, payload) -> str:
    """JSON (indented, NaN allowed) written atomically: a killed run never leaves half a metrics file."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(to_plain(payload), f, indent=2, sort_keys=False, allow_nan=True)
            f.write("\n")

    return atomic_write(path, write)


def _fmt(v) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return str(v)
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def metric_table(results: dict, cfg, delta_m: float | None = None) -> str:
    """A plain-text table: one line per task, headline metric first (arrow: better direction), then the rest."""
    infos = _infos(cfg)
    lines = [f"{'task':<12} {'metric':<10} {'value':>10}   other metrics"]
    lines.append("-" * 72)
    for t, info in infos.items():
        r = results.get(t)
        if not isinstance(r, dict):
            continue
        head = headline_key(r, info.metric) or next(iter(r), "")
        arrow = "↑" if info.higher_is_better else "↓"
        others = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items()
                           if k != head and isinstance(v, (int, float)) and not isinstance(v, bool))
        lines.append(f"{t:<12} {head + ' ' + arrow:<10} {_fmt(r.get(head, float('nan'))):>10}   {others}")
    if delta_m is not None:
        lines.append(f"{'Delta_m':<12} {'% ↑':<10} {_fmt(delta_m):>10}")
    return "\n".join(lines)
