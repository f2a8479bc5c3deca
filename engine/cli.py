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


def load_trained_model(cfg, checkpoint: str, device, trusted: bool = False):
    """The config's model with the checkpoint's weights, in eval mode on `device`.

    trusted: the user passed --trust_checkpoint, so a checkpoint that needs a full unpickle may be opened.
    Raises utils.checkpoint.CheckpointError (file, key and what to do) when the weights do not fit or the
    file needs trust it was not given.
    """
    from models import build_model
    from utils.checkpoint import load_model_weights

    model = build_model(cfg)
    load_model_weights(model, checkpoint, trusted=trusted)
    return model.to(device).eval()
