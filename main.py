"""Command-line entry point: parse arguments, load the config, prepare the run, hand over to the engine.

    python main.py --config_exp configs/demo/synthetic_pascal.yml --run_mode train --data_root data_root/synthetic
    torchrun --nproc_per_node=2 main.py --config_exp configs/pascal/vitL.yml --run_mode train

Why it is shaped like this: the original created the process group at import time and could only run
under a distributed launcher. Here importing this module does nothing; ``main()`` runs the steps in
order and every user-facing failure (bad config, missing dataset) becomes a one-paragraph message and
exit status 2 instead of a traceback. The training/evaluation itself is ``run(cfg, args, datasets)``,
the single place the engine plugs into.
"""
from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2  # bad config, bad arguments, missing or broken dataset


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
    return p


def load(args: argparse.Namespace):
    """Load and validate the config with the command-line overrides; ConfigError propagates."""
    from utils.config import load_config

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
    from utils.checkpoint import BEST, CKPT_DIR, last_checkpoint

    if args.run_mode == "infer" and not args.trained_model:
        raise UserError("--run_mode infer needs --trained_model PATH (a checkpoint written by training, e.g. "
                        f"{os.path.join(cfg.output_dir, CKPT_DIR, BEST)}).")
    if args.trained_model and not os.path.isfile(args.trained_model):
        raise UserError(f"--trained_model {args.trained_model}: no such file.")
    w = cfg.backbone_weights
    fresh_training = (args.run_mode == "train" and not args.trained_model
                      and last_checkpoint(cfg.output_dir) is None)
    if fresh_training and w not in (None, "timm") and not os.path.isfile(w):
        raise UserError(
            f"config {cfg.config_file}, key 'backbone_weights': the pretrained ViT file {os.path.abspath(w)} does "
            f"not exist. Download the timm weights (e.g. vit_large_patch16_384.augreg_in21k_ft_in1k) to that path, "
            f"or set backbone_weights to 'timm' (timm hub cache) or null (random init) with "
            f"--opts backbone_weights=null.")


def is_main_rank() -> bool:
    """Rank 0 writes files. Read from the launcher's environment: no process group exists yet."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_output(cfg) -> str:
    """Create the run folder and save the resolved config there (rank 0 only)."""
    from utils.config import save_config

    # infer mode must not overwrite the training run's config.yml in the same folder
    path = os.path.join(cfg.output_dir, "config.yml" if cfg.run_mode != "infer" else "config_infer.yml")
    if is_main_rank():
        os.makedirs(cfg.output_dir, exist_ok=True)
        save_config(cfg, path)
    return path


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
    return out


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from utils.config import ConfigError

    try:
        cfg = load(args)
        check_args(cfg, args)
        cfg_path = prepare_output(cfg)
        if is_main_rank():
            print(f"[main] config {args.config_exp} is valid; resolved copy saved to {cfg_path}")
        datasets = open_datasets(cfg)
        print_summary(cfg, datasets)
    except (ConfigError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except IncompleteInstallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return run(cfg, args, datasets)


if __name__ == "__main__":
    sys.exit(main())
