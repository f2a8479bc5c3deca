"""What `main.py --run_mode train|infer` does once the config and datasets are ready.

Process setup (one place): torchrun's environment (or none: one process, CUDA if available else CPU),
logger (console + <output_dir>/log.txt on rank 0), seeds, cuDNN autotuning on CUDA. Then:

* train: build model and criterion, hand them to `Trainer` (which resumes from checkpoints/last.pth
  automatically, or starts from --trained_model weights), train to max_iter with periodic evaluation,
  finish with the full-protocol evaluation and prediction images.
* infer: load --trained_model strictly and run the full-protocol evaluation on the val split, writing
  the metrics JSON (the original only printed it) and the prediction PNGs.

Both end with a per-task metric table and the paths of the log, checkpoints, metrics and predictions.
Shutdown is ordered: drop the DDP wrapper, barrier, destroy the process group (gloo workers otherwise
abort intermittently at exit).

The run's config.yml is written only after the model is built and its checkpoint loaded, so a command
that fails its checks leaves an existing run folder's config.yml untouched. Errors a user can fix
(unreadable sample, checkpoint that does not fit) end in one `error:` line on the console and in
log.txt, printed by rank 0 once, with exit status 2; a stop signal ends with the stop line and status
128 + signal (engine/stop.py); a second Ctrl-C exits at once (130) with the resume hint.

A storage failure (full disk or quota, I/O error, read-only filesystem) during any write of the run
(checkpoint, config.yml, metrics JSON, prediction PNGs, TensorBoard events, train_log.jsonl) ends in
`error: cannot write <file>: <reason>; last.pth still holds iteration N; free space and run the same
command to resume` with exit status 75 (EX_TEMPFAIL: retry once the cause is fixed), no traceback. Every
write is atomic (utils/io.py), so no partial file is left and the previous file of that name is intact.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import threading
import time

import torch

from engine.evaluator import compute_delta_m, evaluate, headline_metrics, metric_table, write_json_atomic
from utils import checkpoint as ckpt_lib
from data.sample_errors import SampleReadError
from engine.stop import TrainingStopped
from models.backbones import BackboneError
from utils.cli import one_line
from utils.config import cfg_get, save_config
from utils.devices import parse_device
from utils.io import StorageError, storage_error
from utils.distributed import (abandon_distributed, cleanup_distributed, elastic_store_warning, init_distributed,
                               is_main_process, report_error)
from utils.logger import close_logger, setup_logger
from utils.seed import rank_seed, seed_everything

__all__ = ["run_experiment", "summary_lines", "storage_failure", "storage_message", "EXIT_STORAGE"]


EXIT_USER = 2
EXIT_BUG_OR_NONFINITE = 1
EXIT_INTERRUPTED = 130
EXIT_STORAGE = 75  # sysexits EX_TEMPFAIL: the storage refused a write; nothing lost, rerun once fixed


def run_experiment(cfg, args, datasets: dict) -> int:
    from engine.trainer import NonFiniteLossError

    info = init_distributed(device=_forced_device(getattr(args, "device", None)),
                            timeout_minutes=float(cfg_get(cfg, "dist_timeout_minutes", 30.0)))
    try:
        log = setup_logger(cfg.output_dir, info.rank)
    except OSError as err:  # the run folder cannot even hold log.txt
        failed = storage_failure(err, cfg.output_dir)
        if failed is None:
            raise
        report_error(storage_message(failed, cfg), same_on_all_ranks=False)
        abandon_distributed()
        return EXIT_STORAGE
    seed_everything(rank_seed(int(cfg_get(cfg, "seed", 0)), info.rank))
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        _limit_cpu_threads(cfg, info, log)
    if is_main_process():
        log.info(f"run {cfg.version_name} ({cfg.run_mode}): {info.world_size} process(es), device {info.device}, "
                 f"output folder {cfg.output_dir}")
        store_warning = elastic_store_warning()
        if store_warning:
            log.warning(store_warning)
    status = 0
    clean = True
    debug = bool(getattr(args, "debug", False))
    previous_hook = threading.excepthook
    threading.excepthook = _quiet_storage_threads(previous_hook)
    try:
        if cfg.run_mode == "train":
            _train(cfg, args, datasets, info, log)
        else:
            _infer(cfg, args, datasets, info, log)
    except TrainingStopped as stop:  # every rank agreed on the stop iteration and saved
        if is_main_process():
            log.warning(str(stop) + f" (exit status {stop.status})")
        status = stop.status
    except (SampleReadError, ckpt_lib.CheckpointError, BackboneError) as err:  # raised on every rank alike
        _log_error(log, err, debug)
        status = EXIT_USER
    except NonFiniteLossError as err:
        _log_error(log, err, debug)
        status = EXIT_BUG_OR_NONFINITE
    except OSError as err:
        failed = storage_failure(err, cfg.output_dir)
        if failed is None:
            clean = False
            raise
        # a checkpoint failure is agreed by every rank (Trainer.save); any other write is one rank's own, and
        # the other ranks may be waiting in a collective: no barrier then
        clean = bool(getattr(err, "agreed", False))
        _log_error(log, storage_message(failed, cfg), debug, everywhere=not clean)
        status = EXIT_STORAGE
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        clean = False
        last = ckpt_lib.last_checkpoint(cfg.output_dir)
        if is_main_process():
            log.warning("interrupted (Ctrl-C): exited at once"
                        + (f"; {last} holds the last saved state: run the same command to resume" if last else ""))
        status = EXIT_INTERRUPTED
    except BaseException:
        clean = False  # other ranks may be inside a collective: no barrier, let the launcher tear down
        raise
    finally:
        if clean:
            cleanup_distributed()
        else:
            abandon_distributed()
        close_logger()
        threading.excepthook = previous_hook
    return status


def storage_failure(err: BaseException, output_dir: str) -> StorageError | None:
    """`err` as a StorageError naming the file, when the storage caused it (else None). Writers that bypass
    utils.io.atomic_write raise a bare OSError: its file name, or the TensorBoard folder when TensorBoard's
    writer raised it, or the run folder stands in."""
    failed = storage_error(err, getattr(err, "filename", None) or output_dir)
    if failed is None or isinstance(err, StorageError) or getattr(err, "filename", None):
        return failed
    tb = err.__traceback__
    while tb is not None:
        if f"{os.sep}tensorboard{os.sep}" in tb.tb_frame.f_code.co_filename:
            return StorageError(os.path.join(output_dir, "tb"), failed.errno)
        tb = tb.tb_next
    return failed


def storage_message(err: StorageError, cfg) -> str:
    """'cannot write F: R; last.pth still holds iteration N; free space and run the same command to resume'."""
    if getattr(cfg, "run_mode", "train") != "train":
        return f"{err}; no checkpoint was changed; free space and run the same command again"
    last = ckpt_lib.last_checkpoint(cfg.output_dir)
    it = ckpt_lib.checkpoint_iteration(last) if last else None
    held = (f"{ckpt_lib.LAST} still holds iteration {it}" if it is not None
            else "no checkpoint of this run was written yet")
    return f"{err}; {held}; free space and run the same command to resume"


def _quiet_storage_threads(previous):
    """threading.excepthook that keeps quiet about storage failures of background writers (TensorBoard's
    event writer thread): the main thread meets the same error at its next write and reports it in one line."""
    def hook(args):
        if isinstance(args.exc_value, OSError) and storage_error(args.exc_value, ".") is not None:
            return
        previous(args)

    return hook


def _log_error(log, err, debug: bool, everywhere: bool = False) -> None:
    """The one-line `error:` report (console and log.txt), from rank 0 only: the ranks raised it alike.
    everywhere: an error of this rank only (printed by whichever rank hit it)."""
    if everywhere or is_main_process():
        if debug and isinstance(err, BaseException):
            log.exception(f"error: {err}")
        else:
            log.error(f"error: {one_line(err)}")


def _forced_device(name):
    """--device for init_distributed: 'cpu' or 'cuda:N' force it; 'cuda' / None let each rank take
    cuda:LOCAL_RANK (or the CPU without a GPU)."""
    dev = parse_device(name)
    if dev is None or (dev.type == "cuda" and dev.index is None):
        return None
    return dev


def write_run_config(cfg, log) -> None:
    """config.yml of the run folder (rank 0), once every check has passed and the model is built."""
    if is_main_process():
        path = save_config(cfg, os.path.join(cfg.output_dir, "config.yml"))
        log.info(f"resolved config saved to {path}")


def _limit_cpu_threads(cfg, info, log) -> None:
    """On CPU, leave one core per DataLoader worker: with more busy threads than cores, every OpenMP
    parallel region waits for a preempted thread and a step became 30x slower on a 2-core machine.
    An explicit OMP_NUM_THREADS (torchrun sets 1) is respected."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    workers = int(cfg_get(cfg, "nworkers", 0))
    threads = max(1, cores // max(info.world_size, 1) - workers)
    if threads < torch.get_num_threads():
        torch.set_num_threads(threads)
        if is_main_process():
            log.info(f"CPU run: {threads} compute thread(s) per process ({cores} cores, {workers} DataLoader "
                     f"worker(s)); set OMP_NUM_THREADS to override")


def _build(cfg):
    from losses import build_criterion
    from models import build_model

    return build_model(cfg), build_criterion(cfg)


def _train(cfg, args, datasets, info, log) -> None:
    from engine.trainer import Trainer

    model, criterion = _build(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    if is_main_process():
        log.info(f"model {cfg.model}/{cfg.backbone}: {n_params / 1e6:.2f} M parameters")
    trainer = Trainer(cfg, model, criterion, datasets["train"], datasets.get("val"), info.device,
                      output_dir=cfg.output_dir, init_weights=args.trained_model,
                      trust_checkpoint=bool(getattr(args, "trust_checkpoint", False)))
    write_run_config(cfg, log)
    try:
        if trainer.iteration >= trainer.max_iter:
            payload = trainer.train()  # runs the final evaluation if it never completed
            payload = payload or _final_payload(cfg, trainer.max_iter)
            if is_main_process():
                log.info(f"training is already complete ({trainer.iteration}/{trainer.max_iter} iterations in "
                         f"{trainer.resumed_from}); delete the run folder or raise max_iter to train more")
        else:
            t0 = time.perf_counter()
            payload = trainer.train()
            if is_main_process():
                log.info(f"training finished in {time.perf_counter() - t0:.1f}s")
    finally:
        trainer.close()
        del trainer
    if is_main_process():
        log.info(summary_lines(cfg, payload))


def _final_payload(cfg, iteration: int):
    path = os.path.join(cfg.output_dir, "metrics", f"metrics_iter{iteration:06d}.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        payload["path"] = path
        return payload
    return None


def _infer(cfg, args, datasets, info, log) -> None:
    from data import build_dataloader

    from utils.ema import pick_weights

    model, _ = _build(cfg)
    ck, weights = pick_weights(ckpt_lib.load_checkpoint(args.trained_model,
                                                        trusted=bool(getattr(args, "trust_checkpoint", False))),
                               raw=bool(getattr(args, "raw_weights", False)))
    try:
        ck = ckpt_lib.load_model_weights(model, ck)
    except ckpt_lib.CheckpointError as err:
        raise ckpt_lib.CheckpointError(str(err).replace("the checkpoint", args.trained_model, 1)) from None
    if weights == "ema":
        log.info(f"{args.trained_model}: evaluating its weight EMA (pass --raw_weights for the trained weights)")
    model = model.to(info.device).eval()
    from engine.fast_inference import prepare_inference

    amp = prepare_inference(cfg, model, info.device)  # amp_cpu auto: the faster CPU precision; compile: true
    write_run_config(cfg, log)
    iteration = int(ck.get("iteration", 0) or 0) if isinstance(ck, dict) else 0
    workers = cfg_get(cfg, "eval_workers", None)
    workers = int(cfg_get(cfg, "nworkers", 0) if workers is None else workers)
    loader = build_dataloader(cfg, "val", distributed=info.is_distributed, dataset=datasets["val"],
                              num_workers=workers, catch_errors=True)
    pred_dir = os.path.join(cfg.output_dir, "predictions")
    t0 = time.perf_counter()
    res = evaluate(model, loader, cfg, info.device, full_edge=True, seed=int(cfg_get(cfg, "seed", 0)),
                   pred_dir=pred_dir, desc="infer", amp=amp)
    reference = cfg_get(cfg, "delta_m_reference", None)
    dm = compute_delta_m(res.results, reference, cfg)
    payload = {"iteration": iteration, "protocol": "full", "checkpoint": os.path.abspath(args.trained_model),
               "weights": weights, "num_images": res.num_images, "world_size": info.world_size, "seed": int(cfg_get(cfg, "seed", 0)),
               "results": res.results, "headline": headline_metrics(res.results, cfg), "delta_m": dm,
               "delta_m_reference": reference, "eval_seconds": round(time.perf_counter() - t0, 3)}
    if is_main_process():
        if res.curves:  # ensembles: one sparsification plot per task
            from engine.evaluator import write_curve_pictures

            payload["uncertainty_curves"] = write_curve_pictures(res.curves, os.path.join(cfg.output_dir, "uncertainty"))
        path = os.path.join(cfg.output_dir, "metrics", f"metrics_infer_iter{iteration:06d}.json")
        payload["path"] = write_json_atomic(path, payload)
        log.info(f"evaluated {args.trained_model} on {res.num_images} val images in {payload['eval_seconds']:.1f}s")
        log.info(summary_lines(cfg, payload, checkpoint=args.trained_model))


def summary_lines(cfg, payload, checkpoint: str | None = None) -> str:
    """The closing report: metric table and where everything is."""
    out = cfg.output_dir
    lines = ["", "=" * 72]
    if payload is not None:
        lines.append(f"metrics at iteration {payload.get('iteration')} ({payload.get('protocol')} protocol, "
                     f"{payload.get('num_images')} val images):")
        lines.append(metric_table(payload["results"], cfg, payload.get("delta_m")))
        if payload.get("delta_m") is not None and payload.get("delta_m_against"):
            lines.append(f"(Delta_m: mean relative change of the headline metrics against "
                         f"{payload['delta_m_against']}, in percent)")
    else:
        lines.append("no evaluation results (no val split, or training stopped early)")
    lines.append("-" * 72)
    lines.append(f"log:          {os.path.join(out, 'log.txt')}")
    if checkpoint:
        lines.append(f"checkpoint:   {os.path.abspath(checkpoint)}")
    else:
        ck = os.path.join(out, ckpt_lib.CKPT_DIR)
        lines.append(f"checkpoints:  {os.path.join(ck, ckpt_lib.LAST)}"
                     + (f", {os.path.join(ck, ckpt_lib.BEST)}" if os.path.isfile(os.path.join(ck, ckpt_lib.BEST))
                        else ""))
        lines.append(f"tensorboard:  {os.path.join(out, 'tb')}   ({_tensorboard_command()} --logdir {os.path.join(out, 'tb')})")
    if payload is not None and payload.get("path"):
        lines.append(f"metrics:      {payload['path']}")
    pred = os.path.join(out, "predictions")
    if os.path.isdir(pred):
        tasks = sorted(d for d in os.listdir(pred) if os.path.isdir(os.path.join(pred, d)))
        n = len(glob.glob(os.path.join(pred, "*", "*.png")))
        lines.append(f"predictions:  {pred}/  ({n} PNG files; {', '.join(tasks)})")
    lines.append("=" * 72)
    return "\n".join(lines)


def _tensorboard_command() -> str:
    """How to start TensorBoard from here: the executable next to this Python (e.g. `.venv/bin/tensorboard`,
    relative when under the current folder), or plain `tensorboard` when there is none."""

    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.isfile(exe):
        return "tensorboard"
    rel = os.path.relpath(exe)
    return rel if not rel.startswith("..") else exe
