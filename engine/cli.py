"""Command-line steps that need the whole stack: the checked config and the trained model (infer.py,
tools/*.py). The argument parsing and the `error: ...` printing they share are in utils/cli.py.
"""
from __future__ import annotations

from utils.cli import fail

__all__ = ["load_cli_config", "load_checkpoint_config", "load_trained_model", "check_trained_for"]


def load_cli_config(args):
    """The config named by --config_exp with --opts/--data_root applied, or None after printing why.

    Without --config_exp (infer.py allows it), the config stored in --trained_model is used: a checkpoint of
    this framework carries its run's resolved config, so `infer.py --trained_model run/checkpoints/best.pth
    --input photos/` needs nothing else; --config_exp, when given, still wins."""
    from engine.config import ConfigError, load_config
    from utils.checkpoint import CheckpointError

    try:
        if getattr(args, "config_exp", None):
            return load_config(args.config_exp, opts=args.opts, data_root=args.data_root)
        return load_checkpoint_config(args.trained_model, opts=args.opts, data_root=args.data_root)
    except (ConfigError, CheckpointError) as err:
        fail(err)
        return None


def load_checkpoint_config(checkpoint: str, opts=(), data_root=None):
    """The config stored in `checkpoint`, loaded and checked as a --config_exp file would be (through a
    temporary copy named after the checkpoint); CheckpointError when there is none."""
    import os
    import tempfile

    from engine.config import load_config
    from engine.run_folder import _checkpoint_config
    from utils.checkpoint import CheckpointError
    from utils.config import save_config

    if not os.path.isfile(checkpoint):
        raise CheckpointError(f"--trained_model {checkpoint}: no such file; pass a checkpoint written by training "
                              f"(<run folder>/checkpoints/best.pth or last.pth)")
    stored = _checkpoint_config(checkpoint)
    if not stored or not stored.get("db_name"):
        raise CheckpointError(
            f"checkpoint {checkpoint} holds no config this program can read (an original-repository checkpoint, or "
            f"not one of this framework); pass --config_exp with the config it was trained with")
    stored = {k: v for k, v in stored.items() if k != "_iteration"}
    with tempfile.TemporaryDirectory(prefix="taskdiffusion-") as tmp:
        path = save_config(stored, os.path.join(tmp, os.path.basename(checkpoint) + ".config.yml"))
        cfg = load_config(path, opts=list(opts or ()), data_root=data_root)
    cfg.config_file = f"{checkpoint} (its stored config)"
    return cfg


def load_trained_model(cfg, checkpoint: str, device, trusted: bool = False, raw: bool = False):
    """The config's model with the checkpoint's weights, in eval mode on `device`.

    trusted: the user passed --trust_checkpoint, so a checkpoint that needs a full unpickle may be opened.
    raw: load the trained weights even when the checkpoint holds a weight EMA (--raw_weights); by default
    the EMA weights are loaded when present (utils/ema.py). `model.loaded_weights` says which ('ema'/'raw').
    Raises utils.checkpoint.CheckpointError (file, key and what to do) when the weights do not fit or the
    file needs trust it was not given. A checkpoint of this framework trained for another experiment
    (dataset, tasks, model, backbone, width) says so in one short line, before any key is compared.
    """
    from models import build_model
    from utils.checkpoint import CheckpointError, load_checkpoint, load_model_weights
    from utils.ema import pick_weights
    from utils.logger import get_logger

    ck = load_checkpoint(checkpoint, trusted=trusted)
    check_trained_for(ck, cfg, checkpoint)
    model = build_model(cfg)
    ck, which = pick_weights(ck, raw=raw)
    try:
        load_model_weights(model, ck, trusted=trusted)
    except CheckpointError as err:  # name the file: the loaded dict no longer knows it
        raise CheckpointError(str(err).replace("the checkpoint", checkpoint, 1)) from None
    if which == "ema":
        get_logger().info(f"{checkpoint}: using its weight EMA (pass --raw_weights for the trained weights)")
    model.loaded_weights = which
    return model.to(device).eval()


def check_trained_for(ck, cfg, checkpoint: str) -> None:
    """CheckpointError when the config stored in `ck` is another experiment than `cfg` (engine.run_folder's
    identity keys); nothing for a checkpoint without a stored config (the key comparison then decides)."""
    from engine.run_folder import describe_experiment, experiment_identity
    from utils.checkpoint import CheckpointError

    stored = ck.get("config") if isinstance(ck, dict) else None
    if not isinstance(stored, dict) or not stored.get("db_name"):
        return
    a, b = experiment_identity(stored), experiment_identity(cfg)
    differ = [k for k in a if a.get(k) != b.get(k)]
    if differ:
        where = getattr(cfg, "config_file", None) or "the config"
        raise CheckpointError(
            f"checkpoint {checkpoint} was trained for {describe_experiment(stored)}, not for the "
            f"{describe_experiment(cfg)} of {where} (they differ in {', '.join(differ)}); pass the config it was "
            f"trained with, or leave --config_exp out to use the one stored in the checkpoint")
