"""Convert an original TaskDiffusion checkpoint into one this project loads with `strict=True`.

The original saves `{'model': ddp_model.state_dict(), ...}`: every key carries DDP's `module.`
prefix. This project keeps the original module names (`backbone.*`, `heads.*`), so conversion is:
strip the prefix, drop nothing, and check every name and shape against the model built from the
config. Any unknown, missing or mis-shaped key stops the conversion with a list of them: a silent
partial load would evaluate a half-random model.

Usage:
    python tools/convert_official_checkpoint.py --input best_model.pth.tar --output converted.pth \
        --config configs/pascal/vitL.yml

The input is opened without running code from it (`weights_only=True`). An original checkpoint that
also pickles Python objects (an EasyDict of arguments, ...) is refused with one error line; add
--trust_checkpoint to open it with a full unpickle, only for a file from a trusted source.
"""
from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint  # noqa: E402
from utils.checkpoint import extract_state_dict as _extract_state_dict  # noqa: E402
from utils.checkpoint import rename_keys as _rename_keys  # noqa: E402

class ConversionError(ValueError):
    """The checkpoint does not fit the model; the message lists what differs."""


def extract_state_dict(ckpt) -> "OrderedDict[str, torch.Tensor]":
    """utils.checkpoint.extract_state_dict, failing with ConversionError (this tool's error type)."""
    try:
        return _extract_state_dict(ckpt)
    except CheckpointError as err:
        raise ConversionError(str(err)) from None


def rename_keys(sd: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """utils.checkpoint.rename_keys (prefixes stripped, KEY_RENAMES applied), failing with ConversionError."""
    try:
        return _rename_keys(sd)
    except CheckpointError as err:
        raise ConversionError(str(err)) from None


def _list(items, limit: int = 20) -> str:
    items = list(items)
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n    {shown}{more}"


def convert_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Map an original state dict onto `model` (which may live on the meta device; only names and
    shapes are read). Returns the renamed state dict; raises ConversionError listing unknown keys,
    missing keys and shape mismatches."""
    sd = rename_keys(sd)
    expected = model.state_dict()
    unknown = [k for k in sd if k not in expected]
    missing = [k for k in expected if k not in sd]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if unknown or missing or shapes:
        msg = ["the checkpoint does not match the model built from the config "
               "(wrong config for this checkpoint? e.g. ViT-L vs ViT-B, MLoRE vs plain, PASCAL vs NYUD, "
               "final_embed_dim or crop size):"]
        if unknown:
            msg.append(f"  {len(unknown)} unknown key(s) in the checkpoint:{_list(unknown)}")
        if missing:
            msg.append(f"  {len(missing)} key(s) of the model missing from the checkpoint:{_list(missing)}")
        if shapes:
            msg.append(f"  {len(shapes)} shape mismatch(es):{_list(shapes)}")
        raise ConversionError("\n".join(msg))
    return OrderedDict((k, sd[k]) for k in expected)  # the model's order


def build_reference_model(cfg) -> nn.Module:
    """The model of `cfg` on the meta device (names and shapes only, no memory, no weight files)."""
    from models import build_model

    cfg = dict(cfg)
    cfg["backbone_weights"] = None
    try:
        from easydict import EasyDict
        cfg = EasyDict(cfg)
    except ImportError:  # pragma: no cover
        pass
    with torch.device("meta"):
        return build_model(cfg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="original checkpoint ({'model': state_dict} with module. keys)")
    parser.add_argument("--output", required=True, help="where to write the converted checkpoint (.pth)")
    parser.add_argument("--config", help="experiment config of the checkpoint; verifies every key and shape")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides key=value (as main.py)")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="allow an input that holds Python objects beyond tensors (many original .pth.tar "
                             "files do): opening it runs code stored in the file, so use this only for files "
                             "from a trusted source")
    args = parser.parse_args(argv)

    src = Path(args.input)
    if not src.is_file():
        print(f"error: input checkpoint {src} does not exist", file=sys.stderr)
        return 2
    try:
        ckpt = load_checkpoint(str(src), map_location="cpu", trusted=args.trust_checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sd = extract_state_dict(ckpt)
        if args.config:
            from engine.config import load_config
            cfg = load_config(args.config, opts=args.opts)
            sd = convert_state_dict(sd, build_reference_model(cfg))
            print(f"verified {len(sd)} tensors against {args.config}")
        else:
            sd = rename_keys(sd)
            print("warning: no --config given: names were converted but NOT verified against a model",
                  file=sys.stderr)
    except ConversionError as exc:
        print(f"error: {src}: {exc}", file=sys.stderr)
        return 1
    atomic_torch_save({"model": sd, "converted_from": str(src)}, Path(args.output))
    print(f"wrote {args.output} ({len(sd)} tensors); load with model.load_state_dict(ckpt['model'], strict=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
