"""The training loop (docs/method.md#training-recipe recipe, docs/method.md#training-loop-changes weaknesses fixed).

One optimizer step = `grad_accum_steps` micro-batches of `trBatch` images per rank. Iteration k (0-based)
runs with lr_k = base·(1 − k/max_iter)^0.9 (× warm-up); after it, k+1 iterations are complete and that count
is what checkpoints store and what a resume continues from (the original stored k−1 and re-ran one step).

Reproducibility and exact resume (see utils/seed.py and engine/train_data.py): before micro-step m of
iteration k every global RNG (torch CPU/CUDA, numpy, random) is reseeded from (seed, rank, k, m), so
diffusion times/noise, drop-path and router noise depend only on (seed, rank, k, m); the data stream is
positioned at micro-batch k·accum with per-sample augmentation seeds. A run killed after a checkpoint at
iteration N/2 and restarted with the same command therefore computes the same losses for N/2..N as the
uninterrupted run (tested on CPU; on GPU up to non-deterministic kernels).

Distributed: DistributedDataParallel (device_ids on CUDA), SyncBatchNorm only for CUDA + DDP (its CPU path
raises). `find_unused_parameters` is True only for the MLoRE model, whose top-k routing can leave experts
without gradient in a step; the other models use every parameter, and DDP's extra graph traversal is skipped
(the original always paid it). Evaluation runs on every rank (each its shard) and BatchNorm buffers are
first broadcast from rank 0, so all ranks evaluate exactly the weights that the checkpoint stores.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import OrderedDict
from contextlib import nullcontext

import torch
from torch import nn

from engine.evaluator import (compute_delta_m, evaluate, headline_metrics, metric_table, metrics_path,
                              write_json_atomic)
from data.sample_errors import SampleReadError, describe_failures
from engine.stop import EvaluationInterrupted, StopSignals, TrainingStopped, signal_name
from engine.run_folder import describe_experiment
from engine.train_plugins import TrainPlugins
from engine.train_data import TrainStream
from utils import checkpoint as ckpt_lib
from utils.distributed import (all_gather_object, any_rank, broadcast_object, get_rank, get_world_size,
                               is_dist_avail_and_initialized, is_main_process)
from utils.config import cfg_get
from utils.io import StorageError
from utils.logger import Progress, get_logger
from utils.optim import build_optimizer, build_scheduler, current_lr
from utils.precision import bf16_autocast
from utils.seed import STEP_STREAM, get_rng_state, mix_seed, rank_seed, seed_everything, set_rng_state

__all__ = ["Trainer", "NonFiniteLossError", "find_unused_for", "prepare_model"]


class NonFiniteLossError(RuntimeError):
    """A loss or gradient was NaN/Inf and nonfinite_loss is 'abort' (the weights were not updated)."""


def find_unused_for(cfg) -> bool:
    """MLoRE's top-k routing may leave experts unused in a step; the other models use every parameter."""
    return str(cfg_get(cfg, "model", "")) == "TaskDiffusion_mlore"


def prepare_model(model: nn.Module, cfg, device: torch.device, distributed: bool) -> nn.Module:
    """Move to device, SyncBatchNorm for CUDA+DDP, channels_last when configured (unwrapped model)."""
    if distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if bool(cfg_get(cfg, "channels_last", False)):
        model = model.to(memory_format=torch.channels_last)
    return model


def _broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if not is_dist_avail_and_initialized() or get_world_size() == 1:
        return
    bufs = OrderedDict((n, b.detach().cpu()) for n, b in model.named_buffers())
    bufs = broadcast_object(bufs)
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(bufs[n].to(b.device))


class Trainer:
    """Builds the optimisation state around `model` and runs training with periodic evaluation.

    model: the bare model (moved/wrapped here). train_set / val_set: datasets (val may be None: no eval).
    output_dir: the run folder; checkpoints/, tb/, metrics/, predictions/ are created inside.
    init_weights: checkpoint whose weights initialise a fresh run (ignored when last.pth exists: resume wins).
    trust_checkpoint: allow checkpoints that need a full unpickle (can run code; only for trusted files).
    """

    def __init__(self, cfg, model: nn.Module, criterion: nn.Module, train_set, val_set, device: torch.device,
                 output_dir: str | None = None, init_weights: str | None = None, resume: bool = True,
                 tensorboard: bool = True, trust_checkpoint: bool = False):
        self.cfg = cfg
        self.log = get_logger()
        self.device = device
        self.rank, self.world = get_rank(), get_world_size()
        self.distributed = is_dist_avail_and_initialized() and self.world > 1
        self.output_dir = output_dir or cfg.output_dir
        self.seed = int(cfg_get(cfg, "seed", 0))
        self.max_iter = int(cfg.max_iter)
        self.val_interval = int(cfg_get(cfg, "val_interval", self.max_iter))
        self.ckpt_interval = cfg_get(cfg, "ckpt_interval", None)
        self.keep_checkpoints = cfg_get(cfg, "keep_checkpoints", None)
        self.data_errors = str(cfg_get(cfg, "data_errors", "abort"))
        self.trust_checkpoint = bool(trust_checkpoint)
        self.skipped = []  # unreadable training samples left out (data_errors: skip)
        self.accum = int(cfg_get(cfg, "grad_accum_steps", 1))
        self.batch_size = int(cfg_get(cfg, "trBatch", 2))
        self.policy = str(cfg_get(cfg, "nonfinite_loss", "abort"))
        self.amp = bf16_autocast(cfg, device)
        self.channels_last = bool(cfg_get(cfg, "channels_last", False))
        clip = cfg_get(cfg, "grad_clip_param", None) or {}
        self.clip_norm = cfg_get(clip, "max_norm", None)
        self.clip_type = float(cfg_get(clip, "norm_type", 2.0))
        self.train_set, self.val_set = train_set, val_set
        seed_everything(rank_seed(self.seed, self.rank))

        self.model = prepare_model(model, cfg, device, self.distributed)
        self.criterion = criterion.to(device)
        self.optimizer = build_optimizer(cfg, self.model)
        # weight EMA and loss balancing (engine/train_plugins.py); the defaults are the paper recipe
        self.plugins = TrainPlugins(cfg, self.model, self.criterion, self.optimizer, device)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        # bf16 needs no loss scaling; the (disabled) scaler keeps the checkpoint format ready for fp16.
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.iteration = 0
        self.best = None  # {'iteration', 'delta_m', 'reference', 'headline'}
        self.resumed_from = None
        if is_main_process():  # partial files of a save that was killed mid-write
            for path in ckpt_lib.remove_stale_temporaries(self.output_dir):
                self.log.info(f"removed {path} (an incomplete checkpoint write of an earlier run)")
        last, last_ck = None, None
        if resume:  # the newest checkpoint that loads (a damaged last.pth is set aside with a warning)
            last, last_ck, notes = ckpt_lib.choose_resume_checkpoint(self.output_dir, trusted=self.trust_checkpoint)
            for note in notes if is_main_process() else ():
                self.log.warning(note)
        if last:
            self._resume(last, last_ck)
            if init_weights:
                self.log.warning(f"--trained_model {init_weights} is ignored: resuming the run in {self.output_dir} "
                                 f"(use another --output_dir to start from those weights)")
        elif init_weights:
            ckpt = self._load(init_weights, "--trained_model")
            self._fit(ckpt, init_weights, "--trained_model")
            self.plugins.restart_ema(self.model)
            self.log.info(f"initialised the weights from {init_weights} (fresh optimizer and schedule)")

        if is_main_process():  # before the first save: the weights and two Adam moments per parameter
            self._warn_free_space(size=3 * sum(p.numel() * p.element_size() for p in self.model.parameters()))
        self.train_model = self._wrap(self.model)
        self.tb = None
        if tensorboard and is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(self.output_dir, "tb"),
                                    purge_step=self.iteration + 1 if self.resumed_from else None)
        self.val_loader = self._val_loader() if val_set is not None else None
        self.history = []  # [(iteration, {term: value})] of this process, for tests and summaries

    # ----------------------------------------------------------------------------- setup
    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: DDP around the model, compiled as `compile_options` say.

        scope 'regions' compiles the model's pieces in place before the DDP wrap (evaluation, which calls
        the plain model, is compiled too); scope 'model' compiles the whole training module."""
        wrapped = model
        opts = cfg_get(self.cfg, "compile_options", None) or {}
        kwargs = {"backend": cfg_get(opts, "backend", "inductor")}
        if cfg_get(opts, "mode", None):
            kwargs["mode"] = cfg_get(opts, "mode")
        compile_on = bool(cfg_get(self.cfg, "compile", False))
        if compile_on and cfg_get(opts, "scope", "regions") == "regions":
            from models.compile import compile_regions

            compile_regions(model, **kwargs)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            dev_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DDP(model, device_ids=dev_ids, output_device=dev_ids[0] if dev_ids else None,
                          find_unused_parameters=find_unused_for(self.cfg))
        if compile_on and cfg_get(opts, "scope", "regions") == "model":
            wrapped = torch.compile(wrapped, **kwargs)
        return wrapped

    def _val_loader(self):
        from data import build_dataloader

        workers = cfg_get(self.cfg, "eval_workers", None)
        workers = int(cfg_get(self.cfg, "nworkers", 0) if workers is None else workers)
        return build_dataloader(self.cfg, "val", distributed=self.distributed, dataset=self.val_set,
                                num_workers=workers, catch_errors=True)

    def _load(self, path: str, how: str) -> dict:
        try:
            return ckpt_lib.load_checkpoint(path, trusted=self.trust_checkpoint)
        except ckpt_lib.CheckpointError as err:
            raise ckpt_lib.CheckpointError(f"{how}: {err}") from None

    def _fit(self, ck: dict, path: str, how: str) -> None:
        """Load the weights of `ck` into the model; on a mismatch say which file, how it was chosen and
        what it was trained on against what is asked for."""
        try:
            ckpt_lib.load_model_weights(self.model, ck)
        except ckpt_lib.CheckpointError as err:
            raise ckpt_lib.CheckpointError(
                f"{how} {path}: {describe_experiment(ck.get('config'))} does not fit the requested "
                f"{describe_experiment(self.cfg)}: {err}") from None

    def _resume(self, path: str, ck: dict | None = None) -> None:
        how = "auto-resume from the run folder's last checkpoint"
        ck = self._load(path, how) if ck is None else ck
        self._fit(ck, path, how + (" (move the folder away or pass another --output_dir to start a new run)"))
        self.plugins.load(ck, self.model, path)
        if ck.get("optimizer") is not None:
            self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scheduler") is not None:
            sched = dict(ck["scheduler"])
            # the schedule's shape (max_iter, warm-up) comes from the current config, not the checkpoint
            sched["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)
            self.scheduler.load_state_dict(sched)
        if ck.get("scaler") is not None:
            self.scaler.load_state_dict(ck["scaler"])
        self.iteration = int(ck.get("iteration", 0))
        self.best = ck.get("best")
        # the lr of the next step, as the uninterrupted run (also when max_iter was changed)
        self.scheduler.last_epoch = self.iteration
        for g, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            g["lr"] = base * fn(self.iteration)
        rng = ck.get("rng") or {}
        set_rng_state(rng.get(str(self.rank)) if isinstance(rng, dict) and str(self.rank) in rng else None)
        self.resumed_from = path
        self.log.info(f"resumed from {path}: {self.iteration} of {self.max_iter} iterations done, "
                      f"next lr {current_lr(self.optimizer):.4g}")

    # ----------------------------------------------------------------------------- checkpoints
    def save(self, is_best: bool = False, periodic: bool | None = None) -> list:
        """Rank 0 writes last.pth (+ best.pth, + iter_XXXXXX.pth at ckpt_interval, pruned to
        keep_checkpoints); every rank waits. periodic=None: decided by ckpt_interval."""
        rngs = all_gather_object(get_rng_state())
        paths, failure = [], None
        if is_main_process():
            from utils.config import config_to_dict

            state = ckpt_lib.build_state(self.model, self.optimizer, self.scheduler, self.scaler, self.iteration,
                                         rng={str(r): s for r, s in enumerate(rngs)},
                                         config=config_to_dict(self.cfg), best=self.best,
                                         extra=self.plugins.state())
            if periodic is None:
                periodic = bool(self.ckpt_interval) and self.iteration % int(self.ckpt_interval) == 0
            try:
                paths = ckpt_lib.save_checkpoint(state, self.output_dir, is_best=is_best, periodic=periodic,
                                                 keep=self.keep_checkpoints)
                self._warn_free_space()
            except StorageError as err:  # full disk: every rank must leave together, not wait in a barrier
                failure = err
        failure = broadcast_object(failure)  # the barrier after the save, carrying rank 0's outcome
        if failure is not None:
            failure.agreed = True  # raised on every rank alike (engine/runner.py shuts down cleanly)
            raise failure
        return paths

    def _warn_free_space(self, size: int | None = None) -> None:
        """Rank 0: warn when the next checkpoint (last.pth, + a periodic copy, + best.pth) will not fit."""
        files = 1 + bool(self.ckpt_interval) + (self.val_set is not None)
        warning = ckpt_lib.free_space_warning(self.output_dir, files, size=size)
        if warning:
            self.log.warning(warning)

    # ----------------------------------------------------------------------------- one step
    def _step_batch(self, batch: dict):
        tasks = self.cfg.TASKS.NAMES
        images = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = {t: batch[t].to(self.device, non_blocking=True) for t in tasks}
        return images, targets

    def _next_batch(self, stream, saved: list) -> dict:
        """The next training batch; when a rank cannot read one (data_errors: abort), every rank learns it
        here, before the forward (whose DDP collectives would otherwise wait for the failed rank forever),
        the model's buffers are restored to the last completed iteration, and SampleReadError is raised on
        every rank with the failing ranks' messages (rank 0 reports it once)."""
        if self.data_errors == "skip":  # the stream leaves unreadable samples out: nothing to agree on
            return next(stream)
        batch, message = None, None
        try:
            batch = next(stream)
        except SampleReadError as err:
            message = str(err)
        if any_rank(message is not None):  # a single process gathers just its own message
            messages = [m for m in all_gather_object(message) if m]
            message = messages[0] + (f" (and {len(messages) - 1} other rank(s) failed too)"
                                     if len(messages) > 1 else "")
        if message is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self._restore_buffers(saved)
            raise SampleReadError(message)
        return batch

    def _restore_buffers(self, saved: list) -> None:
        with torch.no_grad():
            for b, s in zip(self.model.buffers(), saved):
                b.copy_(s)

    def _nonfinite(self, terms: dict, loss: torch.Tensor, what: str, saved: list) -> bool:
        """True when any rank has a non-finite loss (all ranks agree); restores the buffers, then reports
        (raises for 'abort'). Costs one small all-reduce per micro-step in DDP."""
        bad_local = not bool(torch.isfinite(loss).item())
        if not any_rank(bad_local):
            return False
        self.optimizer.zero_grad(set_to_none=True)
        self._restore_buffers(saved)
        names = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())] if bad_local else []
        per_rank = all_gather_object(names)
        where = "; ".join(f"rank {r}: {', '.join(n) or 'finite'}" for r, n in enumerate(per_rank)) \
            if self.world > 1 else ", ".join(names)
        tasks = sorted({n.split("/", 1)[1] for ns in per_rank for n in ns if "/" in n} - {"total", "main", "aux"})
        self._report_nonfinite(f"non-finite {what} at iteration {self.iteration + 1} in task(s) "
                               f"{', '.join(tasks) or '?'} ({where})")
        return True

    def _report_nonfinite(self, msg: str) -> None:
        if self.policy == "skip":
            self.log.warning(msg + "; step skipped (nonfinite_loss: skip), weights unchanged")
            return
        last = ckpt_lib.last_checkpoint(self.output_dir)
        raise NonFiniteLossError(
            msg + ". Training stopped before the optimizer step, so the weights are not corrupted"
            + (f"; the last checkpoint is {last}" if last else "")
            + ". Lower the learning rate, disable amp, or set nonfinite_loss: skip to skip such steps.")

    def train_step(self, stream) -> dict | None:
        """One optimizer step (accum micro-batches). Returns the averaged loss terms, or None if skipped."""
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        balancer = self.plugins.balancer
        balancer.begin_step(self.iteration)
        sums: dict = OrderedDict()
        # BatchNorm statistics change in the forward, before the loss is known: keep a copy so that a
        # non-finite step leaves the model exactly as it was (the buffers are small: head BN only)
        saved = [b.detach().clone() for b in self.model.buffers()]
        for m in range(self.accum):
            seed_everything(mix_seed(self.seed, STEP_STREAM, self.rank, self.iteration, m))
            batch = self._next_batch(stream, saved)
            images, targets = self._step_batch(batch)
            sync = (m == self.accum - 1 and not balancer.owns_reduction) or not self.distributed
            ctx = self.train_model.no_sync() if not sync and hasattr(self.train_model, "no_sync") else nullcontext()
            with ctx:
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    out = self.train_model(images, targets)
                loss, terms = balancer(out, targets)  # fixed: self.criterion(out, targets)
                if self._nonfinite(terms, loss, "loss", saved):
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                balancer.backward(loss, self.accum)  # fixed: (loss / self.accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
        balance_logs = balancer.finish(self.model)
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = float(self.clip_norm) if self.clip_norm else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=self.clip_type)
        if not bool(torch.isfinite(gnorm).item()):  # identical on every rank: gradients are all-reduced
            self.optimizer.zero_grad(set_to_none=True)
            self._restore_buffers(saved)
            self._report_nonfinite(f"non-finite gradient norm at iteration {self.iteration + 1}")
            return None
        self.optimizer.step()
        self.scheduler.step()
        self.plugins.after_step(self.model, self.iteration + 1)
        vals = torch.stack([v / self.accum for v in sums.values()]).cpu().tolist()
        out = OrderedDict(zip(sums.keys(), vals))
        out["grad_norm"] = float(gnorm)
        out.update(balance_logs)
        return out

    # ----------------------------------------------------------------------------- evaluation
    def validate(self, final: bool = False) -> dict | None:
        """Evaluate on every rank; rank 0 writes metrics JSON and TensorBoard; returns the payload."""
        if self.val_loader is None:
            return None
        t0 = time.perf_counter()
        pred_dir = os.path.join(self.output_dir, "predictions") if final else None
        runs = []  # [(weights, EvalOutput)]: the raw model, or the EMA's choice first (engine/train_plugins.py)
        for i, (which, model) in enumerate(self.plugins.eval_weights(self.model)):
            _broadcast_buffers(model)
            runs.append((which, evaluate(model, self.val_loader, self.cfg, self.device, full_edge=final,
                                         seed=self.seed, amp=self.amp, pred_dir=pred_dir if i == 0 else None,
                                         n_visuals=4 if self.tb is not None and i == 0 else 0,
                                         desc=f"eval it {self.iteration}" + self.plugins.eval_label(which))))
        res = runs[0][1]
        headline = headline_metrics(res.results, self.cfg)
        reference, against = cfg_get(self.cfg, "delta_m_reference", None), "delta_m_reference of the config"
        own = not reference
        if own:  # no published reference: compare with this run's first evaluation
            reference = (self.best or {}).get("reference") or {t: {self.infos[t].metric: v}
                                                               for t, v in headline.items()}
            against = "the first evaluation of this run (tasks scoring 0 there left out)"
        dm = compute_delta_m(res.results, reference, self.cfg, skip_zero=own)
        payload = {"iteration": self.iteration, "protocol": "full" if final else "estimate",
                   "num_images": res.num_images, "world_size": self.world, "seed": self.seed,
                   "results": res.results, "headline": headline, "delta_m": dm, "delta_m_against": against,
                   "delta_m_reference": reference, "eval_seconds": round(time.perf_counter() - t0, 3),
                   "skipped_samples": [f.message for f in res.skipped]}
        others = self.plugins.describe_evaluations(payload, runs, self.cfg, skip_zero=own)
        failure = None
        if is_main_process():
            try:
                payload["path"] = write_json_atomic(metrics_path(self.output_dir, self.iteration), payload)
            except StorageError as err:  # full disk: every rank leaves together (as a failed checkpoint)
                failure = err
        if self.world > 1:
            failure = broadcast_object(failure)
        if failure is not None:
            failure.agreed = True
            raise failure
        if is_main_process():
            path = payload["path"]
            self.log.info(f"evaluation at iteration {self.iteration} ({payload['protocol']} protocol, "
                          f"{res.num_images} images, {payload['eval_seconds']:.1f}s) -> {path}\n"
                          + metric_table(res.results, self.cfg, dm))
            self._tb_eval(res, dm, self.plugins.tb_prefix(runs[0][0]))
            for which, other, other_dm in others:
                self.log.info(f"{which} weights at iteration {self.iteration}:\n"
                              + metric_table(other.results, self.cfg, other_dm))
                self._tb_eval(other, other_dm, self.plugins.tb_prefix(which), images=False)
        return payload

    def _select_best(self, payload: dict) -> bool:
        """Best by Delta_m (vs delta_m_reference, or vs this run's first evaluation when there is none)."""
        if payload is None:
            return False
        decision = None
        if is_main_process():
            dm = payload["delta_m"]
            better = dm is not None and (self.best is None or self.best.get("delta_m") is None
                                         or dm > self.best["delta_m"])
            if better or self.best is None:
                self.best = {"iteration": self.iteration, "delta_m": dm, "reference": payload["delta_m_reference"],
                             "headline": payload["headline"]}
            decision = (better, self.best)
        better, self.best = broadcast_object(decision)
        return bool(better)

    @property
    def infos(self) -> dict:
        from data.tasks import task_infos

        return task_infos(self.cfg.db_name, self.cfg.TASKS.NAMES)

    # ----------------------------------------------------------------------------- monitoring
    def _tb_train(self, terms: dict, lr: float, it_s: float) -> None:
        if self.tb is None:
            return
        k = self.iteration
        for name, v in terms.items():  # loss/<task>, aux/<task>, loss/total, ..., and train/grad_norm
            self.tb.add_scalar(name if "/" in name else f"train/{name}", v, k)
        self.tb.add_scalar("train/lr", lr, k)
        if it_s > 0:
            self.tb.add_scalar("speed/it_per_s", it_s, k)
            self.tb.add_scalar("speed/images_per_s", it_s * self.batch_size * self.accum * self.world, k)
        if self.device.type == "cuda":
            self.tb.add_scalar("memory/max_allocated_GiB", torch.cuda.max_memory_allocated(self.device) / 2**30, k)

    def _tb_eval(self, res, dm, prefix: str = "val", images: bool = True) -> None:
        if self.tb is None:
            return
        k = self.iteration
        for task, metrics in res.results.items():
            if not isinstance(metrics, dict):
                continue
            for name, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                    self.tb.add_scalar(f"{prefix}/{task}/{name}", float(v), k)
        if dm is not None:
            self.tb.add_scalar(f"{prefix}/delta_m", dm, k)
        for name, grid in (res.visuals if images else ()):
            self.tb.add_image(f"val_images/{name}", grid, k, dataformats="HWC")
        for task, pic in getattr(res, "curves", []):  # ensembles: sparsification curves per task
            self.tb.add_image(f"val_uncertainty/{task}", pic, k, dataformats="HWC")
        self.tb.flush()

    # ----------------------------------------------------------------------------- loop
    def train(self, stop_at: int | None = None) -> dict | None:
        """Train from self.iteration to max_iter (or to `stop_at`, a test hook simulating a kill).

        Nothing trained is lost: at an evaluation iteration the checkpoint is written before evaluating
        (best.pth after it); SIGTERM/SIGINT/SIGUSR1 finish the current step, save and raise
        TrainingStopped (engine/stop.py); an unreadable sample saves the completed iterations and raises
        SampleReadError. An evaluation that did not complete (crash, signal) runs first on resume.
        Returns the final evaluation payload (None when stopped early or without a val set).
        """
        cfg, log = self.cfg, self.log
        nworkers = int(cfg_get(cfg, "nworkers", 0))
        end = self.max_iter if stop_at is None else min(int(stop_at), self.max_iter)
        jsonl = self._open_train_log()
        final = None
        stream = None
        progress = None
        completed = False
        with StopSignals(on_signal=self._on_signal) as stop:
            try:
                if self._eval_pending():
                    final = self._evaluate_and_select(stop, last=self.iteration >= self.max_iter)
                if self.iteration >= end:
                    completed = True
                    return final
                stream = TrainStream(self.train_set, self.batch_size, self.seed, self.rank, self.world,
                                     num_workers=nworkers, start_micro=self.iteration * self.accum,
                                     pin_memory=self.device.type == "cuda", data_errors=self.data_errors)
                print_freq = int(cfg_get(cfg, "print_freq", 200))
                every = max(1, min(print_freq, max(self.max_iter // 20, 1)))
                progress = Progress(self.max_iter, start=self.iteration, desc="train", every=every,
                                    enabled=is_main_process())
                if is_main_process():
                    log.info(f"training iterations {self.iteration + 1}..{end} of {self.max_iter}: {self.world} "
                             f"process(es) x trBatch {self.batch_size} x accum {self.accum} on {self.device}, "
                             f"{stream.batches_per_epoch} batches per epoch per process, amp "
                             f"{'bf16' if self.amp else 'off (fp32)'}")
                t_last = time.perf_counter()
                while self.iteration < end:
                    if self._agree_stop(stop):
                        self._stop_now(stop.requested, progress)
                    lr = current_lr(self.optimizer)
                    try:
                        terms = self.train_step(stream)
                    except SampleReadError:
                        self._save_logged(progress, why="the iterations trained before the unreadable sample")
                        raise
                    self.iteration += 1
                    stream.seek(self.iteration * self.accum)  # a skipped step may have left micro-batches unread
                    now = time.perf_counter()
                    it_s = 1.0 / max(now - t_last, 1e-9)
                    t_last = now
                    if terms is None:  # skipped step: the schedule still advances (as the uninterrupted run)
                        self.scheduler.step()
                    else:
                        self.history.append((self.iteration, {"lr": lr, **terms}))
                        if jsonl is not None:
                            jsonl = self._append_train_log(jsonl, {"iteration": self.iteration, "lr": lr, **terms})
                        self._tb_train(terms, lr, it_s)
                        progress.update(1, loss=terms.get("loss/total", float("nan")), lr=lr)
                    last = self.iteration == self.max_iter
                    due = self.iteration % self.val_interval == 0 or last
                    periodic = bool(self.ckpt_interval) and self.iteration % int(self.ckpt_interval) == 0
                    if due or periodic:
                        self._save_logged(progress)  # before evaluating: an evaluation crash loses nothing
                    if due and self.val_loader is not None:
                        progress.write(f"iteration {self.iteration}: evaluating ({'full' if last else 'estimate'})")
                        payload = self._evaluate_and_select(stop, last=last)
                        if last:
                            final = payload
                    t_last = time.perf_counter()
                completed = True
            finally:
                if progress is not None:
                    progress.close()
                if jsonl is not None:
                    try:
                        jsonl.close()
                    except OSError:  # a full disk: the warning of _append_train_log says what was lost
                        pass
                if stream is not None:
                    self.skipped.extend(stream.skipped)
                    stream.close()
                if self.tb is not None:
                    self.tb.flush()
                self._report_skipped(collective=completed)
        return final

    # ----------------------------------------------------------------------------- stopping and saving
    def _on_signal(self, signum: int) -> None:
        hint = " (press Ctrl-C again to exit at once without saving)" if signum == signal.SIGINT else ""
        self.log.warning(f"received {signal_name(signum)}: finishing iteration {self.iteration + 1}, then saving "
                         f"and stopping{hint}")

    def _agree_stop(self, stop: StopSignals) -> bool:
        """True on every rank when any rank was asked to stop (all ranks stop at the same iteration)."""
        return any_rank(stop.requested is not None)

    def _stop_now(self, signum: int | None, progress) -> None:
        """Save and raise TrainingStopped. signum None: another rank received the signal (reported as
        SIGTERM, a termination request)."""
        self._save_logged(progress)
        raise TrainingStopped(self.iteration, self.max_iter, signal.SIGTERM if signum is None else signum,
                              os.path.join(ckpt_lib.checkpoint_dir(self.output_dir), ckpt_lib.LAST))

    def _save_logged(self, progress, why: str = "") -> list:
        paths = self.save(periodic=None)
        if paths:
            msg = f"checkpoint at iteration {self.iteration}: {', '.join(paths)}" + (f" ({why})" if why else "")
            (progress.write if progress is not None else self.log.info)(msg)
        return paths

    def _eval_pending(self) -> bool:
        """An evaluation iteration whose metrics were never written (the run died or stopped in it)."""
        if self.val_loader is None or self.iteration == 0:
            return False
        due = self.iteration % self.val_interval == 0 or self.iteration == self.max_iter
        pending = due and not os.path.isfile(metrics_path(self.output_dir, self.iteration))
        return bool(broadcast_object(pending))  # rank 0's file system view decides for everyone

    def _evaluate_and_select(self, stop: StopSignals, last: bool) -> dict | None:
        """Evaluate (a signal aborts it: the state is saved already), then best.pth when it improved."""
        stop.interruptible = True
        try:
            if stop.requested is not None:
                raise EvaluationInterrupted(stop.requested)
            payload = self.validate(final=last)
        except EvaluationInterrupted as sig:
            last_path = ckpt_lib.last_checkpoint(self.output_dir)
            self.log.warning(f"evaluation at iteration {self.iteration} interrupted; it runs again on resume")
            raise TrainingStopped(self.iteration, self.max_iter, sig.signum, last_path) from None
        finally:
            stop.interruptible = False
        if self._select_best(payload):
            paths = self.save(is_best=True, periodic=False)  # last.pth too: it carries the best record
            if paths:
                self.log.info(f"best so far (Delta_m {self.best.get('delta_m')}): {', '.join(paths)}")
        return payload

    def _append_train_log(self, jsonl, record: dict):
        """One line of metrics/train_log.jsonl (rank 0). A full or failing disk stops this secondary log with one
        warning instead of ending rank 0 alone mid-iteration (the other ranks would then fail in a collective):
        the next checkpoint write meets the same disk and ends the run on every rank with the one-line storage
        error, and last.pth still holds the iterations trained so far."""
        try:
            jsonl.write(json.dumps(record) + "\n")
            jsonl.flush()
            return jsonl
        except OSError as err:
            self.log.warning(f"cannot append to {getattr(jsonl, 'name', 'train_log.jsonl')}: "
                             f"{getattr(err, 'strerror', None) or err}; the per-iteration log stops here (checkpoints "
                             f"and metrics files are still written while the disk allows)")
            try:
                jsonl.close()
            except OSError:
                pass
            return None

    def _open_train_log(self):
        """metrics/train_log.jsonl for appending, after dropping lines past the resumed iteration (those
        iterations run again, so each iteration appears once). Rank 0 only; None elsewhere."""
        if not is_main_process():
            return None
        from utils.io import atomic_write

        path = os.path.join(self.output_dir, "metrics", "train_log.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
            keep = [ln for ln in lines if _jsonl_iteration(ln) <= self.iteration]
            if len(keep) != len(lines):
                def write(tmp):
                    with open(tmp, "w", encoding="utf-8") as f:
                        f.writelines(ln if ln.endswith("\n") else ln + "\n" for ln in keep)

                atomic_write(path, write)
        return open(path, "a", encoding="utf-8")

    def _report_skipped(self, collective: bool) -> None:
        """Summary of the training samples left out under data_errors: skip (every rank's, by rank 0, when
        the loop ended normally; each rank its own when an exception is in flight: no collective then)."""
        if self.data_errors != "skip":
            return
        merged = list(self.skipped)
        if collective:
            merged = [f for part in all_gather_object(merged) for f in part]
        if merged and (is_main_process() or not collective):
            unique = {f.index: f for f in merged}
            self.log.warning(f"training left out {describe_failures(list(unique.values()))} "
                             f"({len(merged)} time(s) in all; data_errors: skip)")

    def close(self) -> None:
        """Release the DDP wrapper and TensorBoard writer (before the process group is destroyed)."""
        if self.tb is not None:
            tb, self.tb = self.tb, None
            try:
                tb.close()
            except OSError:  # a full disk refuses the last events: the run reports the failed write itself
                pass
        self.train_model = None
        self.val_loader = None


def _jsonl_iteration(line: str) -> float:
    """The iteration of one train_log.jsonl line (inf for an unreadable line: dropped on resume)."""
    try:
        return float(json.loads(line).get("iteration", float("inf")))
    except (ValueError, AttributeError):
        return float("inf")
