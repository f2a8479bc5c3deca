"""Command-line pieces shared by the tools that run a trained checkpoint (infer.py, tools/*.py): the
arguments, the `error: ...` line and the device choice.

Every such tool takes the same model arguments and reports a bad config or checkpoint the same way (one
`error: ...` line, exit status 2), so a fix lands in one place. Loading the config with its checks and
building the trained model need the packages above utils: they are in engine/cli.py.
"""
from __future__ import annotations

import argparse

from utils.messages import one_line  # noqa: F401 - re-exported: the tools import it from here


def add_model_args(p: argparse.ArgumentParser, config_required: bool = True) -> argparse.ArgumentParser:
    """--config_exp, --trained_model, --data_root, --device, --batch_size, --seed, --opts, --trust_checkpoint,
    --raw_weights.

    config_required=False: --config_exp may be left out; the program then takes the config stored in the
    checkpoint (engine.cli.load_cli_config)."""
    p.add_argument("--config_exp", required=config_required, default=None,
                   help="the experiment config (or the run's saved config.yml)" + (
                       "" if config_required else "; default: the config stored in --trained_model"))
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
    p.add_argument("--raw_weights", action="store_true",
                   help="predict with the trained (raw) weights even when the checkpoint holds a weight EMA "
                        "(by default the EMA is used when present; docs/method.md#weight-ema)")
    return p


def fail(message, status: int = 2) -> int:
    """Print `error: message` on one line to stderr (utils.distributed.report_error: the project's one rule
    for who prints); returns `status` (2: a user error) for `return fail(...)`."""
    from utils.distributed import report_error

    report_error(message)
    return status
