"""Where predictions go: the sinks of engine.predict.run_predictions.

A sink has one method, `add(done)`, called once per predicted batch (done: engine.predict.PredictedBatch,
whose per-image views are at the original image size). Each caller composes the sinks it needs:
evaluate() metrics (+ PNGs at the end of training, + TensorBoard grids), infer.py PNGs + overviews
(+ metrics on a split), the SEISM exporter its own edge PNGs (tools/export_edges_for_seism.py).
"""
from __future__ import annotations

import os

from engine.pictures import OVERVIEW_MAX_SIDE, overview_picture
from utils import visualization as vis

__all__ = ["MetricsSink", "PredictionPNGSink", "VisualGridSink", "UncertaintySink"]


class MetricsSink:
    """Feeds an evaluation accumulator (evaluation.build_evaluator) with the raw padded predictions."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.uncertainty = None  # an UncertaintySink fed alongside (ensembles; infer.py sets it)
        evaluator.reset()

    def add(self, done) -> None:
        self.evaluator.update(done.pred, done.batch)
        if self.uncertainty is not None:
            self.uncertainty.add(done)

    def compute(self) -> dict:
        """{task: {metric: value}} over every rank (a collective: all ranks call it)."""
        self.evaluator.synchronize()
        return self.evaluator.compute()


class PredictionPNGSink:
    """Writes every image's predictions at its original size under folder/<task>/ (Task.write) and, for an
    ensemble, its uncertainty maps under folder/<task>_<map>/ (Task.write_uncertainty)."""

    def __init__(self, folder: str):
        self.folder = folder

    def add(self, done) -> None:
        for j, name in enumerate(done.names):
            for t, value in done.maps(j).items():
                done.tasks[t].write(self.folder, name, value)
            for t, maps in done.uncertainty_maps(j).items():  # ensembles: folder/<task>_<map>/ (.png, .npy)
                done.tasks[t].write_uncertainty(self.folder, name, maps)


class VisualGridSink:
    """Overview pictures, input | ground truth | prediction per task (engine.pictures.overview_picture).

    folder: write each as folder/<name>.png; None: keep them in `grids` as (name, RGB array), for
    TensorBoard. limit: at most this many images (the first ones); None: all.
    """

    def __init__(self, folder: str | None = None, limit: int | None = None, max_side: int = OVERVIEW_MAX_SIDE):
        self.folder, self.limit, self.max_side = folder, limit, max_side
        self.grids, self.seen = [], 0

    def add(self, done) -> None:
        for j, name in enumerate(done.names):
            if self.limit is not None and self.seen >= self.limit:
                return
            self.seen += 1
            grid = overview_picture(done.tasks, done.image(j), done.maps(j), done.targets(j), self.max_side,
                                    uncertainty=done.uncertainty_maps(j))
            if self.folder is None:
                self.grids.append((name, grid))
            else:
                vis.save_png(os.path.join(self.folder, f"{name}.png"), grid)


class UncertaintySink:
    """Scores each task's uncertainty against its error (evaluation/uncertainty.py): per task with ground
    truth in the batch and an uncertainty map (ensembles only), the first map of Task.uncertainty_maps.

    compute(results) -> {task: {'unc_ause', ..., 'unc_curves'}} over every rank (a collective); results:
    the metrics of the same run, whose boundary ODS threshold sets the edge error (0.5 without one)."""

    def __init__(self, tasks: dict):
        self.tasks = tasks
        self.meters = {}

    def add(self, done) -> None:
        from evaluation.uncertainty import UncertaintyMeter

        for t, maps in done.uncertainty.items():
            if t not in done.batch or not maps:
                continue
            key = next(iter(maps))
            if t not in self.meters:
                self.meters[t] = UncertaintyMeter(self.tasks[t], key)
            self.meters[t].update(done.pred[t], maps[key], done.batch[t])

    def compute(self, results: dict | None = None) -> dict:
        from evaluation.uncertainty import UncertaintyMeter

        out = {}
        for t, task in self.tasks.items():  # every rank walks the same tasks, in the same order
            if not task.uncertainty_maps:
                continue
            meter = self.meters.get(t) or UncertaintyMeter(task, task.uncertainty_maps[0][0])
            meter.synchronize()
            per = (results or {}).get(t, {})
            thr = per.get("ods_threshold", per.get("ods_threshold_est"))
            res = meter.compute(thr)
            if res["unc_pixels"]:
                out[t] = res
        return out
