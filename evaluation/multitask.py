"""MultiTaskEvaluator: one accumulator per enabled task, fed with raw network outputs.

Usage (every rank evaluates its own shard; no rank idles while rank 0 evaluates everything):

    evaluator = build_evaluator(cfg, full_edge=True)
    for batch in loader:                      # a non-padding sharded loader under DDP
        evaluator.update(model(images)['pred'], batch)
    evaluator.synchronize()                   # collective: all-reduce of every sum
    results = evaluator.compute()             # {task: {metric: value}}, identical on every rank

update() post-processes as docs/method.md#evaluation (argmax / softmax·255 / sigmoid·255 / normal mapping / depth clamp,
never in place) at the padded size; padding is excluded by the GT ignore values, and for boundaries the
prediction is cropped back to meta['img_size'] (centred padding) as the original's PNGs are.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Optional

import torch

from data import tasks as task_table
from data.datasets import dataset_spec
from data.tasks import resolve
from evaluation.base import EvalContext
from evaluation.boundary import default_workers, read_image_list
from evaluation.delta import delta_m
from utils.config import cfg_get

__all__ = ["MultiTaskEvaluator", "build_evaluator"]


class MultiTaskEvaluator:
    """reset() / update(pred, batch) / synchronize() / compute() over the tasks of one dataset.

    Each task's meter comes from its Task object (`task.meter(task, ctx)`, data/tasks.py) and is fed
    `task.postprocess(raw outputs)`; nothing here depends on which tasks exist.
    boundary: keyword arguments of BoundaryMeter (max_dist, thresholds, max_images, image_list, workers,
    backend, estimate), or None to skip odsF (the edge task then reports only the proxy 'loss').
    """

    def __init__(self, db_name: str, tasks: Iterable[str], edge_w: Optional[float] = None,
                 depth_min: float = task_table.DEPTH_MIN, depth_max: float = task_table.DEPTH_MAX,
                 ignore_index: int = 255, boundary: Optional[dict] = None):
        self.db_name = task_table.check_dataset(db_name)
        self.infos = task_table.task_infos(db_name, list(tasks))
        self.tasks = list(self.infos)
        if boundary is not None:
            boundary = dict(boundary)
            boundary.setdefault("max_dist", dataset_spec(db_name).edge_max_dist)
        self.ctx = EvalContext(db_name, int(ignore_index),
                               dataset_spec(db_name).edge_w if edge_w is None else float(edge_w),
                               float(depth_min), float(depth_max), boundary)
        self.meters = {t: resolve(task.meter)(task, self.ctx) for t, task in self.infos.items()}
        self._post = {t: resolve(task.postprocess) for t, task in self.infos.items()}

    @property
    def boundary(self):
        """The boundary (odsF) accumulator of the task that has one, or None."""
        for m in self.meters.values():
            if getattr(m, "boundary", None) is not None:
                return m.boundary
        return None

    def reset(self) -> None:
        for m in self.meters.values():
            m.reset()

    @torch.no_grad()
    def update(self, pred: Mapping[str, torch.Tensor], batch: Mapping) -> None:
        """pred: {task: B×K×H×W raw outputs at the padded size}; batch: the data batch (targets + meta)."""
        meta = batch.get("meta") or {}
        if meta.get("orig_size") is not None and any(
                t in pred and t in batch and pred[t].shape[-2:] != batch[t].shape[-2:] for t in self.tasks):
            for j in range(len(meta["img_name"])):  # labels at their own resolution: score image by image
                self.update(*_at_label_resolution(pred, batch, meta, j, self.tasks))
            return
        # Check everything first, so a bad batch leaves the accumulators untouched.
        for t in self.tasks:
            if t not in pred:
                raise KeyError(f"evaluation: no prediction for task '{t}' (got {sorted(pred)})")
            if t not in batch:
                raise KeyError(f"evaluation: the batch has no ground truth for task '{t}'")
            p, gt = pred[t], batch[t]
            if p.shape[-2:] != gt.shape[-2:] or p.shape[0] != gt.shape[0]:
                raise ValueError(f"evaluation: {t} prediction {tuple(p.shape)} and ground truth {tuple(gt.shape)} "
                                 f"differ in batch or spatial size")
        for t in self.tasks:
            p = pred[t]
            gt = batch[t].to(p.device, non_blocking=True)
            meter = self.meters[t]
            scores = self._post[t](p)
            if getattr(meter, "wants_meta", False):
                meter.update(scores, gt, meta)
            else:
                meter.update(scores, gt)

    def merge(self, other: "MultiTaskEvaluator") -> "MultiTaskEvaluator":
        """Add another evaluator's accumulated sums (same dataset and tasks) into this one; returns self."""
        if other.tasks != self.tasks or other.db_name != self.db_name:
            raise ValueError(f"cannot merge evaluators of {other.db_name}/{other.tasks} into "
                             f"{self.db_name}/{self.tasks}")
        for t, m in self.meters.items():
            m.merge(other.meters[t])
        return self

    def synchronize(self) -> None:
        """Collective over all ranks (call on every rank): finish boundary work and all-reduce every sum."""
        for m in self.meters.values():
            m.synchronize()

    def compute(self) -> dict:
        """{task: {metric: value}}: headline keys semseg/human_parts 'mIoU', sal 'maxF', normals 'mean',
        depth 'rmse', edge 'odsF' (full protocol) or 'odsF_est' (estimate) plus the proxy 'loss'."""
        return {t: m.compute() for t, m in self.meters.items()}

    def delta_m(self, results: Mapping, reference: Mapping) -> float:
        return delta_m(results, reference, self.db_name, self.tasks)


def _at_label_resolution(pred: Mapping, batch: Mapping, meta: Mapping, j: int, tasks) -> tuple:
    """(pred, batch) of image j with the raw outputs upsampled to its labels' resolution.

    Why: a reader that resizes the input but keeps the labels at their full size (Cityscapes: 512x1024 in,
    1024x2048 scored) sets meta['orig_size']; the raw outputs (logits, depth) are cropped to the image inside
    the padding (meta['img_size']) and resized bilinearly, as mmsegmentation does, and the labels are cropped
    out of their own padding, so every meter sees one image at the label size."""
    import torch.nn.functional as F

    from evaluation.postprocess import crop_to_original

    size = meta["orig_size"][j] or tuple(int(v) for v in meta["img_size"][j])
    size = tuple(int(v) for v in size)
    one_pred, one_batch = {}, {"meta": {"img_name": [meta["img_name"][j]],
                                        "img_size": [torch.as_tensor(size, dtype=torch.int64)]}}
    for t in tasks:
        if t not in pred or t not in batch:
            continue  # the regular checks report it
        p = crop_to_original(pred[t][j:j + 1], meta["img_size"][j])
        if tuple(p.shape[-2:]) != size:
            p = F.interpolate(p.float(), size=size, mode="bilinear", align_corners=False)
        one_pred[t] = p
        one_batch[t] = crop_to_original(batch[t][j:j + 1], size)
    return one_pred, one_batch


def build_evaluator(cfg, full_edge: bool = True, boundary: bool = True, workers: Optional[int] = None,
                    backend: Optional[str] = None, progress: bool = True) -> MultiTaskEvaluator:
    """Evaluator for cfg.TASKS.NAMES on cfg.db_name.

    full_edge: True = the full boundary protocol (edge_eval.full_thresholds, all listed images: end of
    training, --run_mode infer); False = the in-training estimate (edge_eval.estimate_thresholds on at most
    edge_eval.estimate_max_images images; keys end in '_est'). boundary=False skips odsF altogether.
    workers: processes for boundary matching (default: cfg.edge_eval.workers; null there: all cores of this
    node shared between its ranks; 0 or 1: in the calling process).
    backend: boundary matching (default: cfg.edge_eval.backend, else 'scipy'): 'scipy' (fast maximum
    matching), 'pyedgeeval' (SEISM's CSA matcher, ~100x slower) or 'auto' (pyedgeeval when importable);
    see evaluation/boundary.py.
    """
    db = cfg["db_name"]
    names = cfg["TASKS"]["NAMES"]
    edge_eval = cfg_get(cfg, "edge_eval", {}) or {}
    bkw = None
    if boundary:  # used by the meters that score boundaries (EdgeMeter), ignored by the others
        image_list = edge_eval.get("image_list")
        if workers is None:
            workers = edge_eval.get("workers")
        backend = backend or edge_eval.get("backend") or "scipy"
        bkw = {
            "thresholds": int(edge_eval.get("full_thresholds") or 101) if full_edge
            else int(edge_eval.get("estimate_thresholds") or 11),
            "max_images": None if full_edge else edge_eval.get("estimate_max_images"),
            "image_list": read_image_list(os.path.expanduser(image_list)) if image_list else None,
            "workers": default_workers() if workers is None else int(workers),  # 0 or 1: in-process
            "backend": backend,
            "estimate": not full_edge,
            "progress": progress,
        }
    return MultiTaskEvaluator(
        db, names,
        edge_w=cfg_get(cfg, "edge_w"),
        depth_min=float(cfg_get(cfg, "depth_min", task_table.DEPTH_MIN)),
        depth_max=float(cfg_get(cfg, "depth_max", task_table.DEPTH_MAX)),
        ignore_index=int(cfg_get(cfg, "ignore_index", 255)),
        boundary=bkw,
    )
