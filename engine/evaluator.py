"""The evaluation loop: every rank scores its shard, the metric sums are all-reduced, rank 0 reports.

Why every rank: the original evaluated on rank 0 only while the others waited in a collective (with a 2 h
timeout as a workaround). Here the val loader gives each rank a disjoint shard (indices r::world, no padding
duplicates), `evaluation.build_evaluator` accumulates pooled sums, and `synchronize()` all-reduces them, so N
ranks give the numbers of one process.

Why per-image noise: DDIM sampling starts from random noise. Drawing it per batch would make the metrics
depend on the batch size and on how images are split over ranks; here image `name` always starts from the
noise of `name_seed(seed, name)`, so an evaluation is reproducible for a seed whatever the world size,
batch size or order.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from utils import visualization as vis
from utils.checkpoint import unwrap_model
from data.sample_errors import ERRORS_KEY, SampleReadError, describe_failures
from utils.distributed import all_gather_object, all_reduce_sum, get_rank, is_main_process
from utils.config import bf16_autocast
from utils.io import atomic_write
from utils.logger import LOGGER_NAME
from utils.seed import name_seed

__all__ = ["EvalOutput", "evaluate", "eval_noise", "predict_batch", "crop_padding", "PredictionWriter",
           "write_json_atomic", "metric_table", "headline_metrics", "compute_delta_m", "visual_grid",
           "metrics_path", "to_plain"]

PATCH = 16


@dataclass
class EvalOutput:
    results: dict  # {task: {metric: value}}
    num_images: int
    visuals: list = field(default_factory=list)  # rank 0: [(name, grid RGB uint8)]
    skipped: list = field(default_factory=list)  # every rank's unreadable samples (data_errors: skip)


def _get(cfg, key, default=None):
    val = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if val is None else val


def _infos(cfg) -> dict:
    from data.tasks import task_infos

    return task_infos(cfg.db_name, cfg.TASKS.NAMES)


def eval_noise(model, images: torch.Tensor, names, seed: int):
    """Initial DDIM noise (r·B)×M×h×w, each image's slices drawn from its own name seed; None if no diffusion."""
    base = unwrap_model(model)
    head = getattr(base, "heads", None)
    m = getattr(head, "noisy_channels", None)
    if m is None:
        return None
    r = int(getattr(head, "randsteps", 1))
    patch = int(getattr(getattr(base, "backbone", None), "patch_size", PATCH))
    b, _, hh, ww = images.shape
    h, w = hh // patch, ww // patch
    z = torch.empty((r, b, m, h, w), dtype=torch.float32)
    for j, name in enumerate(names):
        g = torch.Generator()
        g.manual_seed(name_seed(seed, name))
        z[:, j] = torch.randn((r, m, h, w), generator=g)
    return z.reshape(r * b, m, h, w).to(images.device)  # layout (r b): repeats outer, as the sampler


@torch.no_grad()
def predict_batch(model, images: torch.Tensor, names, seed: int, amp: bool = False) -> dict:
    """{task: B×K×H×W float32 raw outputs} for a normalised, padded batch (per-image seeded noise).

    amp: bf16 autocast (callers pass utils.config.bf16_autocast(cfg, device))."""
    noise = eval_noise(model, images, names, seed)
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=bool(amp)):
        out = model(images, noise=noise) if noise is not None else model(images)
    return {t: v.float() for t, v in out["pred"].items()}


def crop_padding(x: torch.Tensor, img_size) -> torch.Tensor:
    """C×H×W padded map -> C×H0×W0, removing the centred padding of the val pipeline (offsets ΔH//2, ΔW//2)."""
    h0, w0 = int(img_size[0]), int(img_size[1])
    hh, ww = x.shape[-2:]
    top, left = max(hh - h0, 0) // 2, max(ww - w0, 0) // 2
    return x[..., top:top + min(h0, hh), left:left + min(w0, ww)]


class PredictionWriter:
    """Writes one image's predictions (maps at the original size) as files under `root/<task>/`.

    labels (argmax tasks): indexed PNG with the VOC palette (pixel = class id); two-class probability
    (saliency) and edges: 8-bit grey PNG (edge: trunc(sigmoid·255), the format of the boundary tool, spec
    §7.2); depth: 16-bit PNG in millimetres plus `<task>_color/` colormap PNG; normals: RGB PNG.
    """

    def __init__(self, root: str, infos: dict):
        self.root, self.infos = root, infos

    def path(self, task: str, name: str, suffix: str = "") -> str:
        return os.path.join(self.root, task + suffix, f"{name}.png")

    def write(self, name: str, maps: dict) -> list:
        """maps: {task: prediction_to_numpy output}. Returns the written paths."""
        out = []
        for task, value in maps.items():
            rule = self.infos[task].sample_rule[0]
            if rule == "argmax":
                out.append(vis.save_label_png(self.path(task, name), value))
            elif rule in ("threshold", "sigmoid"):
                out.append(vis.save_png(self.path(task, name), np.clip(value * 255.0, 0, 255).astype(np.uint8)))
            elif rule == "clamp":
                out.append(vis.save_depth_png16(self.path(task, name), value))
                out.append(vis.save_png(self.path(task, name, "_color"), vis.depth_to_color(value)))
            elif rule == "l2":
                out.append(vis.save_png(self.path(task, name), vis.normals_to_rgb(value)))
            else:
                raise ValueError(f"task {task}: no writer for sample rule {rule!r}")
        return out


def visual_grid(infos: dict, image_rgb: np.ndarray, preds: dict, targets: dict | None = None) -> np.ndarray:
    """Two rows: [input | ground truth per task] and [input | prediction per task], captioned."""
    top = [vis.add_caption(image_rgb, "input")]
    bottom = [vis.add_caption(image_rgb, "input")]
    for task, info in infos.items():
        if task not in preds:
            continue
        if targets is not None and task in targets:
            gt, valid = targets[task]
            top.append(vis.add_caption(vis.task_picture(info, gt, valid), f"{task} GT"))
        bottom.append(vis.add_caption(vis.task_picture(info, preds[task]), f"{task} pred"))
    rows = [top, bottom] if len(top) > 1 else [bottom]
    return vis.make_grid(rows)


def _to_device(batch: dict, tasks, device) -> dict:
    out = dict(batch)
    for k in ["image", *tasks]:
        if k in out and torch.is_tensor(out[k]):
            out[k] = out[k].to(device, non_blocking=True)
    return out


@torch.no_grad()
def evaluate(model, loader, cfg, device, *, full_edge: bool = True, seed: int | None = None, amp: bool | None = None,
             pred_dir: str | None = None, n_visuals: int = 0, progress: bool = True,
             desc: str = "eval") -> EvalOutput:
    """Evaluate `model` (unwrapped for the forward) on this rank's shard of `loader`; all ranks must call it.

    full_edge: full boundary protocol (final/infer) instead of the in-training estimate.
    pred_dir: write every prediction at its original size under pred_dir/<task>/ (each rank its shard).
    n_visuals: on rank 0, return input/GT/prediction grids of the first n images of its shard.
    amp: bf16 autocast on/off; None: as the config says (utils.config.bf16_autocast).
    """
    from evaluation import build_evaluator

    infos = _infos(cfg)
    tasks = list(infos)
    seed = int(_get(cfg, "seed", 0)) if seed is None else int(seed)
    base = unwrap_model(model)
    was_training = base.training
    base.eval()
    from utils.logger import interactive

    evaluator = build_evaluator(cfg, full_edge=full_edge, progress=bool(progress) and interactive()
                                and is_main_process())
    evaluator.reset()
    writer = PredictionWriter(pred_dir, infos) if pred_dir else None
    use_amp = bf16_autocast(cfg, device) if amp is None else bool(amp)
    visuals, count = [], 0
    bar = None
    if progress and is_main_process():
        from utils.logger import interactive

        if interactive():
            from tqdm import tqdm

            bar = tqdm(total=len(loader), desc=desc, leave=False, dynamic_ncols=True)
    policy = str(_get(cfg, "data_errors", "abort"))
    failed = []  # FailedSample records of this rank (loaders built with catch_errors=True)
    try:
        for batch in loader:
            if bar is not None:
                bar.update(1)
            failed.extend(batch.pop(ERRORS_KEY, None) or [])
            if failed and policy == "abort":
                break  # the other ranks finish their shards; all learn of it in _gather_failures
            if "image" not in batch:
                continue
            names = list(batch["meta"]["img_name"])
            batch = _to_device(batch, tasks, device)
            pred = predict_batch(base, batch["image"], names, seed, amp=use_amp)
            evaluator.update(pred, batch)
            count += len(names)
            if writer is not None or (len(visuals) < n_visuals and get_rank() == 0):
                _per_image(infos, names, batch, pred, writer, visuals, n_visuals)
    finally:
        if bar is not None:
            bar.close()
        base.train(was_training)
    failed = _gather_failures(failed)
    if failed and policy == "abort":
        raise SampleReadError(f"{failed[0].message} (evaluation sample {failed[0].index}"
                              + (f"; {len(failed) - 1} more unreadable" if len(failed) > 1 else "")
                              + "); fix or remove the file, or set data_errors: skip to leave unreadable "
                                "samples out of the metrics")
    if failed and is_main_process():
        logging.getLogger(LOGGER_NAME).warning(f"{desc}: left out {describe_failures(failed)} (data_errors: skip)")
    evaluator.synchronize()
    results = evaluator.compute()
    n = all_reduce_sum(torch.tensor([count], dtype=torch.int64)).item()
    return EvalOutput(results=to_plain(results), num_images=int(n), visuals=visuals, skipped=failed)


def _gather_failures(failed: list) -> list:
    """Every rank's unreadable samples, sorted by dataset index (a collective: all ranks call it)."""
    merged = [f for part in all_gather_object(list(failed)) for f in part]
    return sorted(merged, key=lambda f: f.index)


def _per_image(infos, names, batch, pred, writer, visuals, n_visuals) -> None:
    sizes = batch["meta"]["img_size"]
    for j, name in enumerate(names):
        want_vis = len(visuals) < n_visuals and get_rank() == 0
        if writer is None and not want_vis:
            return
        maps = {t: vis.prediction_to_numpy(infos[t], crop_padding(pred[t][j], sizes[j])) for t in pred}
        if writer is not None:
            writer.write(name, maps)
        if want_vis:
            img = vis.denormalize_image(crop_padding(batch["image"][j], sizes[j]))
            gts = {t: vis.target_to_numpy(infos[t], crop_padding(batch[t][j], sizes[j]))
                   for t in infos if t in batch}
            visuals.append((name, visual_grid(infos, img, maps, gts)))


def to_plain(v):
    """Plain Python numbers and containers (tensors, numpy scalars and arrays converted) for JSON."""
    if isinstance(v, dict):
        return {k: to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    if torch.is_tensor(v):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


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
