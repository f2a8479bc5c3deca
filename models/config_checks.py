"""Config cross-checks owned by the models: model and head, input size, backbone sizes, MLoRE keys.

Why here: which models and backbones exist, what head a model implies and how large MLoRE's router is
are facts of this package; the schema (utils/config_schema.py) only names the `MODELS` / `BACKBONES`
slots, which this module fills. Importing it registers `check_models` with utils.config (after the
data check, whose derived TRAIN.SCALE it reads); engine/config.py imports it.
"""
from __future__ import annotations

import data.config_checks  # noqa: F401  (registers the data check first: this one reads its TRAIN.SCALE)
from models import MODEL_HEADS
from models.variants import VARIANTS
from utils.config import Checker, register_config_check
from utils.config_schema import BACKBONES, MODELS, NUM_EXPERTS, PATCH_SIZE

__all__ = ["check_models"]

MODELS.provide(tuple(MODEL_HEADS))
BACKBONES.provide(tuple(VARIANTS))


def _check_head(cfg: dict, chk: Checker) -> None:
    """`head` is implied by `model`; an explicit one (the original configs) must agree."""
    model = cfg["model"]
    implied = MODEL_HEADS[model]
    if "head" in cfg and implied is not None and cfg["head"] != implied:
        chk.fail("head", f"{cfg['head']!r} does not match model {model!r}, which uses {implied!r}.",
                 "Remove `head` (the model implies it) or make them agree.")
    cfg["head"] = implied if implied is not None else cfg.get("head")


def _check_input_size(cfg: dict, chk: Checker) -> tuple:
    """The ViT cuts the input into PATCH_SIZE patches; returns the token grid (h, w)."""
    scale = tuple(cfg["TRAIN"]["SCALE"])
    if any(s % PATCH_SIZE for s in scale):
        chk.fail("crop_size", f"{list(scale)} is not a multiple of the ViT patch size {PATCH_SIZE} in both "
                              f"dimensions.", "Round H and W to multiples of 16.")
    return scale[0] // PATCH_SIZE, scale[1] // PATCH_SIZE


def _check_mlore(cfg: dict, chk: Checker, grid: tuple) -> None:
    """MLoRE needs its expert ranks and top-k; its router is a Linear over the token grid."""
    if cfg["rank_list"] is None:
        chk.fail("rank_list", f"is required for model TaskDiffusion_mlore: a list of {NUM_EXPERTS} expert "
                              f"ranks (paper PASCAL: 16, 24, ..., 128).")
    if cfg["topk"] is None:
        chk.fail("topk", f"is required for model TaskDiffusion_mlore: experts kept per sample, 1..{NUM_EXPERTS} "
                         f"(paper: PASCAL 3, NYUD 4).")
    tokens = grid[0] * grid[1]
    if cfg["spatial_size"] is None:
        cfg["spatial_size"] = tokens
    elif cfg["spatial_size"] != tokens:
        h, w = cfg["TRAIN"]["SCALE"]
        chk.fail("spatial_size", f"{cfg['spatial_size']} must equal the token count h*w = {grid[0]}*{grid[1]} = "
                                 f"{tokens} of the {h}x{w} input (the router has a Linear over the token grid).",
                 "Set it to that value or to null (derived).")


def _check_backbone_kwargs(cfg: dict, chk: Checker) -> None:
    """Size overrides must make a valid ViT: heads divide the width, taps are blocks that exist."""
    bk = cfg["backbone_kwargs"]
    depth = bk.get("depth", VARIANTS[cfg["backbone"]]["depth"])
    if "embed_dim" in bk and "num_heads" in bk and bk["embed_dim"] % bk["num_heads"]:
        chk.fail("backbone_kwargs.num_heads", f"{bk['num_heads']} does not divide embed_dim {bk['embed_dim']}.")
    if "taps" in bk:
        taps = bk["taps"]
        if any(b <= a for a, b in zip(taps, taps[1:])):
            chk.fail("backbone_kwargs.taps", f"{taps} must be strictly increasing block numbers.")
        if depth is not None and taps[-1] > depth:
            chk.fail("backbone_kwargs.taps", f"{taps} goes past the backbone depth {depth} (blocks count from 1).")


def check_models(cfg: dict, raw: dict, chk: Checker) -> None:
    """The model keys agree with each other and with the input size; derives head and spatial_size."""
    _check_head(cfg, chk)
    grid = _check_input_size(cfg, chk)
    if cfg["model"] == "TaskDiffusion_mlore":
        _check_mlore(cfg, chk, grid)
    _check_backbone_kwargs(cfg, chk)


register_config_check(check_models, "models")
