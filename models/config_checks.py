"""Config cross-checks owned by the models: model and head, input size, backbone sizes, MLoRE keys.

Why here: which models and backbones exist, what head a model implies and how large MLoRE's router is
are facts of this package; the schema (utils/config_schema.py) only names the `MODELS` / `BACKBONES`
slots, which this module fills. Importing it registers `check_models` with utils.config (after the
data check, whose derived TRAIN.SCALE it reads); engine/config.py imports it.
"""
from __future__ import annotations

import data.config_checks  # noqa: F401  (registers the data check first: this one reads its TRAIN.SCALE)
from models import MODEL_HEADS
from models.variants import (BACKBONE_NAMES, KWARG_KEYS, TIMM, TIMM_KWARG_KEYS, TIMM_REQUIRED_KEYS, VARIANTS,
                             VIT_PATCH_SIZE)
from utils.config import Checker, register_config_check
from utils.config_schema import BACKBONES, DEFAULT_DECODER_STRIDE, MODELS, NUM_EXPERTS

__all__ = ["check_models", "decoder_stride"]

MODELS.provide(tuple(MODEL_HEADS))
BACKBONES.provide(BACKBONE_NAMES)


def _check_head(cfg: dict, chk: Checker) -> None:
    """`head` is implied by `model`; an explicit one (the original configs) must agree."""
    model = cfg["model"]
    implied = MODEL_HEADS[model]
    if "head" in cfg and implied is not None and cfg["head"] != implied:
        chk.fail("head", f"{cfg['head']!r} does not match model {model!r}, which uses {implied!r}.",
                 "Remove `head` (the model implies it) or make them agree.")
    cfg["head"] = implied if implied is not None else cfg.get("head")


def decoder_stride(cfg) -> int:
    """s of a validated config: decoder_stride when set, else DEFAULT_DECODER_STRIDE (the paper ViTs' grid)."""
    s = cfg.get("decoder_stride")
    return DEFAULT_DECODER_STRIDE if s is None else int(s)


def _check_decoder_stride(cfg: dict, chk: Checker) -> int:
    """The paper ViTs decode on their patch grid, so they take no other stride (models/backbone.py)."""
    s = decoder_stride(cfg)
    if cfg["backbone"] != TIMM and s != VIT_PATCH_SIZE:
        chk.fail("decoder_stride", f"{s} is not possible with the paper ViT {cfg['backbone']!r}, which decodes "
                                   f"on its {VIT_PATCH_SIZE}x{VIT_PATCH_SIZE} patch grid.",
                 f"Remove decoder_stride (or set {VIT_PATCH_SIZE}), or use backbone: timm")
    return s


def _check_input_size(cfg: dict, chk: Checker, stride: int) -> tuple:
    """Crops are multiples of the decoder stride; returns the decoder grid (h, w). For the paper ViTs the
    stride is the patch size, which is the whole rule; a timm backbone may need a larger multiple (its
    deepest stage, see models/backbones.py), checked when it is built, where the model's strides are known."""
    scale = tuple(cfg["TRAIN"]["SCALE"])
    if any(s % stride for s in scale):
        what = f"the ViT patch size {stride}" if cfg["backbone"] != TIMM else f"decoder_stride {stride}"
        chk.fail("crop_size", f"{list(scale)} is not a multiple of {what} in both dimensions.",
                 f"Round H and W to multiples of {stride}.")
    return scale[0] // stride, scale[1] // stride


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
                                 f"{tokens} of the {h}x{w} input at decoder stride {decoder_stride(cfg)} (the "
                                 f"router has a Linear over the token grid).",
                 "Set it to that value or to null (derived).")


def _check_backbone_keys(cfg: dict, chk: Checker) -> bool:
    """backbone_kwargs holds the keys of its backbone kind only (ViT sizes or timm's); False for timm."""
    bk = cfg["backbone_kwargs"]
    timm = cfg["backbone"] == TIMM
    allowed, other = (TIMM_KWARG_KEYS, KWARG_KEYS) if timm else (KWARG_KEYS, TIMM_KWARG_KEYS)
    for key in bk:
        if key not in allowed:
            chk.fail(f"backbone_kwargs.{key}", f"is a key of {'the paper ViTs' if key in other else 'no backbone'}, "
                                               f"not of backbone {cfg['backbone']!r}.",
                     f"Allowed here: {', '.join(allowed)}")
    if timm:
        for key in TIMM_REQUIRED_KEYS:
            if key not in bk:
                chk.fail(f"backbone_kwargs.{key}", "is required for backbone: timm.",
                         "e.g. backbone_kwargs: {timm_name: swin_large_patch4_window12_384.ms_in22k_ft_in1k, "
                         "out_indices: [0, 1, 2, 3]} (docs/extending.md)")
        if not bk["out_indices"]:
            chk.fail("backbone_kwargs.out_indices", "is empty; list the timm feature indices to tap.")
    return not timm


def _check_backbone_kwargs(cfg: dict, chk: Checker) -> None:
    """Size overrides must make a valid ViT: heads divide the width, taps are blocks that exist."""
    if not _check_backbone_keys(cfg, chk):
        return
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
    grid = _check_input_size(cfg, chk, _check_decoder_stride(cfg, chk))
    if cfg["model"] == "TaskDiffusion_mlore":
        _check_mlore(cfg, chk, grid)
    _check_backbone_kwargs(cfg, chk)


register_config_check(check_models, "models")
