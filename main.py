"""Command-line entry point: parse arguments, load the config, prepare the run, hand over to the engine.

    python main.py --config_exp configs/demo/synthetic_pascal.yml --run_mode train --data_root data_root/synthetic
    torchrun --nproc_per_node=2 main.py --config_exp configs/pascal/vitL.yml --run_mode train

Why it is shaped like this: the original created the process group at import time and could only run
under a distributed launcher. Here importing this module does nothing; ``main()`` runs the steps in
order and every user-facing failure (bad config, missing dataset, unwritable or foreign output folder,
batch larger than the split, bad --device) becomes one `error: ...` line and exit status 2 instead of a
traceback (``--debug`` shows the traceback too). All these checks run before any file is written: the
run's config.yml is saved by the engine only once the model is built and its checkpoint loaded.
The training/evaluation itself is ``run(cfg, args, datasets)``, the single place the engine plugs into.

One live training per run folder: rank 0 takes `<run folder>/run.lock` (engine.run_folder.RunLock, an
O_EXCL file with a heartbeat, which works on NFS/Lustre/GPFS) before anything else is written and gives
it back on every exit path; a second training into a live run is refused (status 2) naming the holder,
and the lock of a dead run is taken over with a warning (docs/cluster.md). --run_mode infer takes none.

Exit statuses (also those of the run_/infer_ bash scripts, whose torchrun passes them on):
    0    done
    1    a bug (traceback) or a non-finite loss on finite data
    2    a user error, one `error:` line saying what to do: bad config or arguments, missing or broken
         dataset, unreadable sample or bad label values (data_errors: abort), a checkpoint that does not
         fit or cannot be read, a run folder of another experiment or in use by a live run
    75   the storage refused a write (full disk or quota, I/O error, read-only filesystem): `error: cannot
         write <file>: <reason>; last.pth still holds iteration N; free space and run the same command to
         resume` (sysexits EX_TEMPFAIL: nothing is lost, retry once fixed)
    130, 143, 138  stopped by SIGINT, SIGTERM or SIGUSR1 (128 + signal number) after saving its state
         (run the same command to resume)
"""
from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2  # bad config, bad arguments, missing or broken dataset
EXIT_STORAGE = 75  # a write refused by the storage (full disk or quota, I/O error, read-only); = engine.runner's


class UserError(Exception):
    """A problem the user can fix (printed without a traceback, exit status 2)."""


class IncompleteInstallError(Exception):
    """A part of this program (e.g. the data package) is missing: exit status 1 with a message."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="TaskDiffusion: multi-task dense prediction with a joint denoising diffusion decoder.",
        epilog="Dataset root precedence: --data_root > $TASKDIFFUSION_DATA > db_root in the config.")
    p.add_argument("--config_exp", required=True, help="YAML experiment config (e.g. configs/pascal/vitL.yml)")
    p.add_argument("--run_mode", required=True, choices=("train", "infer"),
                   help="train (resumes from <output_dir>/checkpoints/last.pth if present) or infer (evaluate "
                        "--trained_model on the val split: metrics JSON and prediction PNGs)")
    p.add_argument("--trained_model", default=None,
                   help="checkpoint: required for infer; for train, the weights/state to start from")
    # The original declared --local-rank; torch<2 launchers send --local_rank. Both are accepted and
    # ignored: torchrun's LOCAL_RANK environment variable is what the process setup reads.
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--data_root", default=None,
                   help="folder holding PASCALContext/ or NYUDv2/ (overrides $TASKDIFFUSION_DATA and db_root)")
    p.add_argument("--output_dir", default=None, help="run folder (default <out_dir>/<version_name>)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, nested keys with dots, values in YAML: "
                        "--opts max_iter=100 optimizer_kwargs.lr=1e-4 task_dictionary.include_edge=false")
    p.add_argument("--seed", type=int, default=None, help="override the config seed")
    p.add_argument("--eval_workers", type=int, default=None, help="DataLoader workers for evaluation")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when a GPU is "
                                                  "visible, else cpu)")
    p.add_argument("--raw_weights", action="store_true",
                   help="infer: evaluate the trained (raw) weights even when --trained_model holds a weight EMA "
                        "(the EMA is used by default when present)")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow checkpoints that need a full unpickle (e.g. the original's .pth.tar): opening "
                        "them can run code, so only for files from a source you trust")
    p.add_argument("--debug", action="store_true", help="print tracebacks for user errors too")
    return p


def load(args: argparse.Namespace):
    """Load and validate the config with the command-line overrides; ConfigError propagates."""
    from engine.config import load_config

    opts = list(args.opts)
    if args.seed is not None:
        opts.append(f"seed={args.seed}")
    if args.eval_workers is not None:
        opts.append(f"eval_workers={args.eval_workers}")
    cfg = load_config(args.config_exp, opts=opts, data_root=args.data_root, output_dir=args.output_dir)
    cfg.run_mode = args.run_mode
    return cfg


def check_args(cfg, args) -> None:
    """Checks that need both the config and the command line, before anything expensive."""
    from utils.checkpoint import BEST, CKPT_DIR, resume_candidates

    if args.run_mode == "infer" and not args.trained_model:
        raise UserError("--run_mode infer needs --trained_model PATH (a checkpoint written by training, e.g. "
                        f"{os.path.join(cfg.output_dir, CKPT_DIR, BEST)}).")
    if args.trained_model and not os.path.isfile(args.trained_model):
        raise UserError(f"--trained_model {args.trained_model}: no such file.")
    w = cfg.backbone_weights
    fresh_training = (args.run_mode == "train" and not args.trained_model
                      and not resume_candidates(cfg.output_dir))
    if fresh_training and w not in (None, "timm") and not os.path.isfile(w):
        tag = weights_tag(cfg)
        raise UserError(
            f"config {cfg.config_file}, key 'backbone_weights': the pretrained backbone file {os.path.abspath(w)} "
            f"does not exist (timm model '{tag}'). Save that timm model's weights to that path (`.venv/bin/python "
            f"-m tools.prepare_weights --backbone {tag} --out {os.path.dirname(w) or '.'}`, README Backbones), "
            f"or set backbone_weights to 'timm' (timm hub cache) or null (random init) with "
            f"--opts backbone_weights=null.")


def weights_tag(cfg) -> str:
    """The timm tag whose weights the configured backbone starts from (named in weight-file errors)."""
    from models.variants import TIMM, VARIANTS

    if cfg.backbone == TIMM:
        return str(cfg.backbone_kwargs.get("timm_name"))
    return str(VARIANTS.get(cfg.backbone, {}).get("timm_name") or cfg.backbone)


def is_main_rank() -> bool:
    """Rank 0 writes files. Read from the launcher's environment: no process group exists yet."""
    from utils.distributed import is_main_process_env

    return is_main_process_env()


def reports_errors() -> bool:
    """Whether this process prints a pre-run error (utils.distributed.reports_shared_errors: every rank
    hits the same one, so the first process of each node does)."""
    from utils.distributed import reports_shared_errors

    return reports_shared_errors()


def check_output(cfg, args) -> None:
    """The output folder: writable, and (training) not another experiment's run folder. In infer mode the
    outputs go to their own folder inside it (engine.run_folder.infer_folder)."""
    from engine.run_folder import check_run_folder, check_writable_folder, infer_folder

    if cfg.run_mode == "infer":
        cfg.output_dir = infer_folder(cfg.output_dir, args.trained_model)
        check_writable_folder(cfg.output_dir)
    else:
        check_run_folder(cfg)


def check_device(args) -> None:
    from utils.devices import DeviceError, parse_device

    try:
        parse_device(args.device)
    except DeviceError as err:
        raise UserError(str(err)) from None


def _dataset_errors() -> tuple:
    errors = [FileNotFoundError, NotADirectoryError, ValueError]
    try:
        import data

        if isinstance(getattr(data, "DatasetError", None), type):
            errors.insert(0, data.DatasetError)
    except ImportError:
        pass
    return tuple(errors)


def open_datasets(cfg) -> dict:
    """{'train': Dataset, 'val': Dataset} (only 'val' in infer mode), opened through data.build_dataset."""
    try:
        from data import build_dataset
    except ImportError as err:
        raise IncompleteInstallError(f"the dataset package is not available ({err}); main.py needs "
                                     f"data.build_dataset.") from None
    splits = ("val",) if cfg.run_mode == "infer" else ("train", "val")
    out = {}
    for split in splits:
        try:
            ds = build_dataset(cfg, split)
        except _dataset_errors() as err:
            raise UserError(f"cannot open the {cfg.db_name} {split} split under {cfg.db_root}: {err}") from None
        if len(ds) == 0:
            raise UserError(f"the {cfg.db_name} {split} split under {cfg.db_root} is empty.")
        out[split] = ds
    if "train" in out:
        check_batch_fits(cfg, len(out["train"]))
    return out


def check_batch_fits(cfg, n_train: int) -> None:
    """trBatch images per process must fit in the training split (drop_last: else no batch at all)."""
    from utils.distributed import env_world_size

    world = max(env_world_size(), 1)
    per_rank = n_train // world
    if per_rank < int(cfg.trBatch):
        raise UserError(f"config key 'trBatch' = {cfg.trBatch}: the {cfg.db_name} train split has {n_train} "
                        f"image(s), {per_rank} per process for {world} process(es), fewer than one batch; "
                        f"lower it with --opts trBatch={max(per_rank, 1)}, use fewer processes, or add data.")


def print_summary(cfg, datasets: dict) -> None:
    if not is_main_rank():
        return
    h, w = cfg.TRAIN.SCALE
    sizes = ", ".join(f"{s} {len(d)}" for s, d in datasets.items())
    classes = ", ".join(f"{t} {k if k > 0 else str(cfg.TASKS.NUM_OUTPUT[t]) + 'ch'}"
                        for t, k in cfg.TASKS.NUM_CLASSES.items())
    print(f"[main] experiment {cfg.version_name}: model {cfg.model}, backbone {cfg.backbone}, C={cfg.final_embed_dim}")
    print(f"[main] dataset {cfg.db_name} at {cfg.db_root}: {sizes} images; crop {h}x{w}")
    print(f"[main] tasks (canonical order): {', '.join(cfg.TASKS.NAMES)}")
    print(f"[main] classes/channels per task: {classes}")
    print(f"[main] output folder: {cfg.output_dir}")


def run(cfg, args, datasets: dict) -> int:
    """Train or evaluate (the engine); returns the exit status. See engine/runner.py."""
    from engine.runner import run_experiment

    return run_experiment(cfg, args, datasets)


def take_run_lock(cfg):
    """Training, rank 0: the run folder's lock (engine.run_folder.RunLock), or RunFolderError naming the live
    run that holds it. None for infer mode and the other ranks (they read or follow rank 0)."""
    from engine.run_folder import RunLock

    if cfg.run_mode != "train" or not is_main_rank():
        return None
    lock = RunLock(cfg.output_dir).acquire()
    for warning in lock.warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return lock


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from engine.run_folder import RunFolderError
    from utils.config import ConfigError
    from utils.io import StorageError

    lock = None
    try:
        try:
            cfg = load(args)
            check_device(args)
            check_args(cfg, args)
            check_output(cfg, args)
            lock = take_run_lock(cfg)
            if is_main_rank():
                print(f"[main] config {args.config_exp} is valid")
            datasets = open_datasets(cfg)
            print_summary(cfg, datasets)
        except (ConfigError, UserError, RunFolderError) as err:
            return _report(err, EXIT_USAGE, args.debug)
        except IncompleteInstallError as err:
            return _report(err, 1, args.debug)
        except StorageError as err:  # the run lock on a read-only or full filesystem
            return _report(f"{err}; nothing of the run was changed; free space (or fix the mount) and run the same "
                           f"command again", EXIT_STORAGE, args.debug)
        except KeyboardInterrupt:
            if reports_errors():
                print("interrupted (Ctrl-C) before training started; nothing was written", file=sys.stderr)
            return 130
        return run(cfg, args, datasets)
    finally:
        if lock is not None:  # every exit path: done, error, stop signal, Ctrl-C, crash
            lock.release()


def _report(err: Exception, status: int, debug: bool) -> int:
    """One `error:` line (utils.distributed.report_error: the first process of each node); the traceback
    too with --debug."""
    from utils.distributed import report_error

    if debug and reports_errors():
        import traceback

        traceback.print_exception(err)
    report_error(err)
    return status


if __name__ == "__main__":
    sys.exit(main())
