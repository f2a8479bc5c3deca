"""Command-line pieces shared by the tools that run a trained checkpoint (infer.py, tools/*.py).

Every such tool takes the same model arguments, reports a bad config or checkpoint the same way (one
`error: ...` line, exit status 2) and builds the model the same way, so a fix lands in one place.
"""
from __future__ import annotations

import argparse
import sys


def add_model_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--config_exp, --trained_model, --data_root, --device, --batch_size, --seed, --opts, --trust_checkpoint."""
    p.add_argument("--config_exp", required=True, help="the experiment config (or the run's saved config.yml)")
    p.add_argument("--trained_model", required=True,
                   help="checkpoint (ours, or an original one with module. keys)")
    p.add_argument("--data_root", default=None,
                   help="dataset root for split inputs (default: $TASKDIFFUSION_DATA / the config's db_root)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--batch_size", type=int, default=None, help="images per forward (default valBatch)")
    p.add_argument("--seed", type=int, default=None, help="diffusion sampling seed (default: the config's seed)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow a checkpoint that holds Python objects beyond tensors (e.g. the original "
                        "repository's .pth.tar): opening such a file runs code stored in it, so use this only "
                        "for files from a trusted source")
    return p


def fail(message) -> int:
    """Print `error: message` to stderr; returns the exit status 2 for `return fail(...)`."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def load_cli_config(args):
    """The config named by --config_exp with --opts/--data_root applied, or None after printing why."""
    from utils.config import ConfigError, load_config

    try:
        return load_config(args.config_exp, opts=args.opts, data_root=args.data_root)
    except ConfigError as err:
        fail(err)
        return None


def pick_device(name: str | None):
    """--device, or CUDA when available, else CPU."""
    import torch

    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
