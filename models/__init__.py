"""Model factory: `build_model(cfg)` dispatches on cfg.model (variants are imported lazily)."""
from __future__ import annotations

from collections.abc import Mapping

# Model wrapper (config key `model`) -> the original `head` value it implies (baseline has no diffusion head).
MODEL_HEADS = {"TaskDiffusion": "TaskDiffusion_head", "TaskDiffusion_mlore": "TaskDiffusion_mlore_head",
               "baseline": None}


def build_model(cfg):
    """'TaskDiffusion' | 'TaskDiffusion_mlore' | 'baseline' -> nn.Module (see models/taskdiffusion.py)."""
    name = cfg.get("model") if isinstance(cfg, Mapping) else getattr(cfg, "model", None)
    if name == "TaskDiffusion":
        from models.taskdiffusion import build_taskdiffusion_model
        return build_taskdiffusion_model(cfg)
    if name == "TaskDiffusion_mlore":
        from models.mlore import build_mlore_model
        return build_mlore_model(cfg)
    if name == "baseline":
        from models.baseline import build_baseline_model
        return build_baseline_model(cfg)
    raise ValueError(f"unknown model {name!r} in config key `model`; known: {', '.join(map(repr, MODEL_HEADS))}")
