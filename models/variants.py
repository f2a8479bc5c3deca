"""The named ViT backbone variants: sizes, decoder taps and the timm weights each starts from.

Why apart from models/backbone.py: the config checks (models/config_checks.py) need the names and depths
to validate `backbone` and `backbone_kwargs.taps`, and must not import torch and timm to do so.
"""
from __future__ import annotations

__all__ = ["VARIANTS", "KWARG_KEYS"]

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
