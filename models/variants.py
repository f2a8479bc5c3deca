"""The backbone names a config may use: the paper's ViT variants (sizes, taps, timm weights) and `timm`.

Why apart from models/backbone.py and models/timm_backbone.py: the config checks (models/config_checks.py)
need the names, depths and allowed `backbone_kwargs` keys to validate a config, and must not import torch
and timm to do so. `TIMM_KWARG_KEYS` lives here for the same reason; models/timm_backbone.py reads it.
"""
from __future__ import annotations

from utils.config_schema import PATCH_SIZE

__all__ = ["VARIANTS", "KWARG_KEYS", "TIMM", "TIMM_KWARG_KEYS", "TIMM_REQUIRED_KEYS", "TIMM_RESAMPLE_MODES",
           "TIMM_APIS", "BACKBONE_NAMES",
           "VIT_PATCH_SIZE"]

# name in config -> sizes, taps (1-based block indices) and the timm weight tag to initialise from
VARIANTS = {
    "TaskDiffusion_vitL": dict(embed_dim=1024, depth=24, num_heads=16, taps=(6, 12, 18),
                               timm_name="vit_large_patch16_384.augreg_in21k_ft_in1k"),
    "TaskDiffusion_vitB": dict(embed_dim=768, depth=12, num_heads=12, taps=(3, 6, 9),
                               timm_name="vit_base_patch16_384.augreg_in21k_ft_in1k"),
    "TaskDiffusion_vitS": dict(embed_dim=384, depth=12, num_heads=6, taps=(3, 6, 9),
                               timm_name="vit_small_patch16_384.augreg_in21k_ft_in1k"),
    # tiny width for tests and the demo: sizes come from cfg.backbone_kwargs
    "TaskDiffusion_vitT": dict(embed_dim=None, depth=None, num_heads=None, taps=None, timm_name=None),
}
KWARG_KEYS = ("embed_dim", "depth", "num_heads", "taps", "mlp_ratio")  # what backbone_kwargs may override

# The paper ViTs cut the image into 16x16 patches and decode on that grid (models/backbone.py declares it);
# the value is the schema's, which also bounds crop_size from below.
VIT_PATCH_SIZE = PATCH_SIZE

# `backbone: timm`: any timm model through the generic adapter (models/timm_backbone.py, docs/extending.md)
TIMM = "timm"
TIMM_KWARG_KEYS = ("timm_name", "out_indices", "model_kwargs", "resample", "norm", "api")
TIMM_REQUIRED_KEYS = ("timm_name", "out_indices")
TIMM_RESAMPLE_MODES = ("area", "bilinear")  # how levels finer than the decoder grid are shrunk
TIMM_APIS = ("auto", "intermediates", "features_only")  # which timm API taps the levels

BACKBONE_NAMES = tuple(VARIANTS) + (TIMM,)
