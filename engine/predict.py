"""The one prediction path: batches -> model -> predictions at the original size -> sinks.

Training-time evaluation (engine.evaluator.evaluate), infer.py and the SEISM exporter all run
`run_predictions`; they differ only in the sinks they pass (engine/sinks.py: metrics, per-task PNGs,
overview grids; the exporter's edge PNGs). So a prediction written by infer.py is the one the metrics
scored, byte for byte.

Why per-image noise: DDIM sampling starts from random noise, which the model draws per image from
(seed, image name) (`initial_noise` of models/taskdiffusion.py): an image gives the same prediction for a
seed whatever the batch size, the order or the number of ranks.

Unreadable samples arrive as data (data/sample_errors.py: batch['data_errors']). data_errors 'skip' leaves
them out; 'abort' stops this rank's loop at the first one, and after every rank has finished (the
failures are gathered over ranks: a collective) raises SampleReadError naming the first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from data.sample_errors import ERRORS_KEY, SampleReadError
from evaluation import ensemble
from evaluation.postprocess import crop_to_original
from utils import visualization as vis
from utils.checkpoint import unwrap_model
from utils.distributed import all_gather_object

__all__ = ["predict_batch", "predict_ensemble", "restore", "PredictedBatch", "PredictionRun", "run_predictions", "EVAL_ADVICE"]

# What an 'abort' error tells the user to do, unless the caller says otherwise.
EVAL_ADVICE = ("fix or remove the file, or set data_errors: skip to leave unreadable samples out of the "
               "metrics")


@torch.no_grad()
def predict_batch(model, images: torch.Tensor, names, seed: int, amp: bool = False) -> dict:
    """{task: B×K×H×W float32 raw outputs} for a normalised, padded batch (per-image seeded noise).

    amp: bf16 autocast (callers pass utils.precision.bf16_autocast(cfg, device)). The starting noise is the
    model's (`initial_noise`; a model without the method samples nothing)."""
    base = unwrap_model(model)
    noise = base.initial_noise(images, names, seed) if hasattr(base, "initial_noise") else None
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=bool(amp)):
        out = model(images, noise=noise) if noise is not None else model(images)
    return {t: v.float() for t, v in out["pred"].items()}


@torch.no_grad()
def predict_ensemble(model, images: torch.Tensor, names, seed: int, tasks: dict, samples: int,
                     samples_chunk: int | None = None, aggregation: dict | None = None,
                     amp: bool = False) -> tuple:
    """(pred, uncertainty) of `samples` = N > 1 draws per image (docs/method.md#sample-ensembles).

    pred: {task: B×K×H×W float32}, the N draws aggregated by each task's rule (Task.aggregation_for, the
    config's `aggregation` {task: rule} first); uncertainty: {task: {map name: B×H×W float32}}
    (Task.uncertainty_maps). The backbone runs once per image, the decoder on the N noisy maps,
    `samples_chunk` members at a time; member n of an image starts from the noise of (seed, image name, n)
    (`noise_source` of models/taskdiffusion.py), so nothing depends on the batch, the chunks or the ranks.
    Aggregation runs image by image (its N×K×H×W probabilities are the memory peak after the decoder)."""
    base = unwrap_model(model)
    source = base.noise_source(images, names, seed, samples)
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=bool(amp)):
        out = model(images, noise=source, samples=int(samples), samples_chunk=samples_chunk)
    draws = out["draws"]
    aggregation = aggregation or {}
    pred, unc = {}, {}
    for t, d in draws.items():
        task = tasks[t]
        agg, maps = [], []
        for j in range(d.shape[1]):
            dj = d[:, j:j + 1].float()  # n 1 K H W
            agg.append(ensemble.aggregate(task, dj, aggregation.get(t)))
            maps.append(ensemble.uncertainty(task, dj))
        pred[t] = torch.cat(agg)
        unc[t] = {k: torch.cat([m[k] for m in maps]) for k in maps[0]}
    return pred, unc


def restore(x: torch.Tensor, img_size, orig_size=None) -> torch.Tensor:
    """K×H×W padded map -> K×H0×W0 at the original image size: the centred padding cropped off, and a
    shrink of an oversized input (infer.py's ImageFolder, meta 'orig_size') undone bilinearly."""
    x = crop_to_original(x, img_size)
    if orig_size is not None and tuple(x.shape[-2:]) != tuple(orig_size):
        x = F.interpolate(x[None], size=tuple(int(s) for s in orig_size), mode="bilinear", align_corners=False)[0]
    return x


class PredictedBatch:
    """One predicted batch handed to every sink, with per-image views at the original size.

    batch: the loader's batch (image and ground truths on the model's device); pred: {task: B×K×H×W raw
    outputs}; tasks: {name: data.tasks.Task}. Each per-image view is computed on first use and kept, so
    sinks that need the same maps (PNG files and overview pictures) share the work.
    """

    def __init__(self, batch: dict, pred: dict, tasks: dict, uncertainty: dict | None = None):
        self.batch, self.pred, self.tasks = batch, pred, tasks
        self.uncertainty = uncertainty or {}  # {task: {map name: B×H×W}}; empty for single-sample prediction
        meta = batch["meta"]
        self.names = [str(n) for n in meta["img_name"]]
        self.sizes = list(meta["img_size"])
        self.orig_sizes = list(meta.get("orig_size") or [None] * len(self.names))
        self._maps = {}

    def __len__(self) -> int:
        return len(self.names)

    def maps(self, j: int) -> dict:
        """{task: Task.to_numpy map of image j at its original size}."""
        if j not in self._maps:
            self._maps[j] = {t: task.to_numpy(restore(self.pred[t][j], self.sizes[j], self.orig_sizes[j]))
                             for t, task in self.tasks.items() if t in self.pred}
        return self._maps[j]

    def uncertainty_maps(self, j: int) -> dict:
        """{task: {map name: H0×W0 float32 numpy}} of image j at its original size ({} without an ensemble)."""
        key = ("unc", j)
        if key not in self._maps:
            self._maps[key] = {t: {k: restore(v[j][None].float(), self.sizes[j], self.orig_sizes[j])[0].cpu().numpy()
                                   for k, v in maps.items()} for t, maps in self.uncertainty.items()}
        return self._maps[key]

    def image(self, j: int):
        """Image j as RGB uint8 H0×W0×3."""
        return vis.denormalize_image(restore(self.batch["image"][j], self.sizes[j], self.orig_sizes[j]))

    def targets(self, j: int) -> dict | None:
        """{task: (map, valid mask)} of image j's ground truth, None when the batch has none."""
        label_size = self.orig_sizes[j] if self.orig_sizes[j] is not None else self.sizes[j]  # labels at their size
        gts = {t: task.target_to_numpy(crop_to_original(self.batch[t][j], label_size))
               for t, task in self.tasks.items() if t in self.batch}
        return gts or None


@dataclass
class PredictionRun:
    """What a run did: images predicted on this rank, and every rank's unreadable samples by index."""

    count: int = 0
    failed: list = field(default_factory=list)  # data.sample_errors.FailedSample


def _to_device(batch: dict, tasks, device) -> dict:
    out = dict(batch)
    for k in ["image", *tasks]:
        if k in out and torch.is_tensor(out[k]):
            out[k] = out[k].to(device, non_blocking=True)
    return out


def _gather_failures(failed: list) -> list:
    """Every rank's unreadable samples, sorted by dataset index (a collective: all ranks call it)."""
    merged = [f for part in all_gather_object(list(failed)) for f in part]
    return sorted(merged, key=lambda f: f.index)


def unreadable_error(failed: list, advice: str = EVAL_ADVICE) -> SampleReadError:
    """The one-line error for data_errors 'abort': the first unreadable sample, how many more, what to do."""
    more = f"; {len(failed) - 1} more unreadable" if len(failed) > 1 else ""
    return SampleReadError(f"{failed[0].message} (evaluation sample {failed[0].index}{more}); {advice}")


@torch.no_grad()
def run_predictions(model, loader, sinks, *, tasks: dict, device, seed: int, amp: bool = False,
                    data_errors: str = "abort", progress=None, on_unreadable=None,
                    advice: str = EVAL_ADVICE, samples: int = 1, samples_chunk: int | None = None,
                    aggregation: dict | None = None) -> PredictionRun:
    """Predict every readable sample of `loader` (this rank's shard) and hand each batch to every sink.

    sinks: objects with `add(PredictedBatch)`, called in order, each image exactly once.
    tasks: {name: data.tasks.Task} of the model. seed: the sampling seed (per-image noise).
    amp: bf16 autocast. data_errors: 'abort' or 'skip' (see the module docstring; 'abort' raises
    SampleReadError with `advice`). progress: object with update(samples) and close() (closed here).
    on_unreadable: called with each batch's FailedSample records as they arrive.
    samples: ensemble members N per image (> 1: predict_ensemble, aggregated predictions plus uncertainty
    maps in each PredictedBatch; a model that samples nothing, the baseline, predicts once);
    samples_chunk, aggregation: see predict_ensemble.
    A collective when distributed (the failures are gathered): every rank must call it.
    """
    base = unwrap_model(model)
    samples = int(samples)
    if samples > 1 and not getattr(base, "draws_samples", False):
        import logging

        from utils.logger import LOGGER_NAME

        logging.getLogger(LOGGER_NAME).warning(
            f"{type(base).__name__} is deterministic: its {samples} samples would be one prediction; predicting "
            f"once, without uncertainty maps (eval_samples / --samples apply to diffusion models)")
        samples = 1  # deterministic model: its N draws would be one prediction

    was_training = base.training
    base.eval()
    run = PredictionRun()
    try:
        for batch in loader:
            new = batch.pop(ERRORS_KEY, None) or []
            run.failed.extend(new)
            if new and on_unreadable is not None:
                on_unreadable(new)
            if run.failed and data_errors == "abort":
                break  # the other ranks finish their shards; all learn of it in _gather_failures
            names = list(batch["meta"]["img_name"]) if "image" in batch else []
            if names:
                batch = _to_device(batch, tasks, device)
                if samples > 1:
                    pred, unc = predict_ensemble(base, batch["image"], names, seed, tasks, samples,
                                                 samples_chunk, aggregation, amp=amp)
                    done = PredictedBatch(batch, pred, tasks, unc)
                else:
                    done = PredictedBatch(batch, predict_batch(base, batch["image"], names, seed, amp=amp), tasks)
                for sink in sinks:
                    sink.add(done)
                run.count += len(names)
            if progress is not None:
                progress.update(len(names) + len(new))
    finally:
        if progress is not None:
            progress.close()
        base.train(was_training)
    run.failed = _gather_failures(run.failed)
    if run.failed and data_errors == "abort":
        raise unreadable_error(run.failed, advice)
    return run
