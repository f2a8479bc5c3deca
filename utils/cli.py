"""Command-line pieces shared by the tools that run a trained checkpoint (infer.py, tools/*.py): the
arguments, the `error: ...` line and the device choice.

Every such tool takes the same model arguments and reports a bad config or checkpoint the same way (one
`error: ...` line, exit status 2), so a fix lands in one place. Loading the config with its checks and
building the trained model need the packages above utils: they are in engine/cli.py.
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


def pick_device(name: str | None):
    """--device, or CUDA when available, else CPU."""
    import torch

    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")
