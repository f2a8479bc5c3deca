"""Command-line steps that need the whole stack: the checked config and the trained model (infer.py,
tools/*.py). The argument parsing and the `error: ...` printing they share are in utils/cli.py.
"""
from __future__ import annotations

from utils.cli import fail

__all__ = ["load_cli_config", "load_trained_model"]


def load_cli_config(args):
    """The config named by --config_exp with --opts/--data_root applied, or None after printing why."""
    from engine.config import ConfigError, load_config

    try:
        return load_config(args.config_exp, opts=args.opts, data_root=args.data_root)
    except ConfigError as err:
        fail(err)
        return None


def load_trained_model(cfg, checkpoint: str, device, trusted: bool = False, raw: bool = False):
    """The config's model with the checkpoint's weights, in eval mode on `device`.

    trusted: the user passed --trust_checkpoint, so a checkpoint that needs a full unpickle may be opened.
    raw: load the trained weights even when the checkpoint holds a weight EMA (--raw_weights); by default
    the EMA weights are loaded when present (utils/ema.py). `model.loaded_weights` says which ('ema'/'raw').
    Raises utils.checkpoint.CheckpointError (file, key and what to do) when the weights do not fit or the
    file needs trust it was not given.
    """
    from models import build_model
    from utils.checkpoint import CheckpointError, load_checkpoint, load_model_weights
    from utils.ema import pick_weights
    from utils.logger import get_logger

    model = build_model(cfg)
    ck, which = pick_weights(load_checkpoint(checkpoint, trusted=trusted), raw=raw)
    try:
        load_model_weights(model, ck)
    except CheckpointError as err:  # name the file: the loaded dict no longer knows it
        raise CheckpointError(str(err).replace("the checkpoint", checkpoint, 1)) from None
    if which == "ema":
        get_logger().info(f"{checkpoint}: using its weight EMA (pass --raw_weights for the trained weights)")
    model.loaded_weights = which
    return model.to(device).eval()
