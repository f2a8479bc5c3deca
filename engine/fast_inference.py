"""Inference set up for speed on the user's machine: the faster CPU precision (`amp_cpu: auto`) and
regional compilation (`compile: true`), for infer.py and `main.py --run_mode infer`.

Why in engine: both need the model (a probe inference at the configured crop), and utils/precision.py,
which times, decides, caches and logs, must not import models. Training uses neither: it keeps fp32 on
CPU unless `amp_cpu: true`, and compiles in the trainer (engine/trainer.py).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from utils.checkpoint import unwrap_model
from utils.config import cfg_get
from utils.logger import LOGGER_NAME
from utils.precision import bf16_autocast

__all__ = ["inference_probe", "precision_key", "inference_bf16", "compile_for_inference", "prepare_inference"]


def probe_size(cfg) -> tuple[int, int]:
    """The configured crop (TRAIN.SCALE), the size every inference of the config is padded to."""
    scale = cfg_get(cfg_get(cfg, "TRAIN", {}) or {}, "SCALE", None) or cfg_get(cfg, "crop_size", None)
    if not scale:
        raise ValueError("config has no TRAIN.SCALE / crop_size: cannot size the precision probe")
    return int(scale[0]), int(scale[1])


def inference_probe(model, cfg, device, batch: int = 1) -> Callable[[bool], None]:
    """probe(bf16): one inference of `model` on a random batch at the configured crop, bf16 autocast on/off."""
    base = unwrap_model(model)
    h, w = probe_size(cfg)
    images = torch.randn((batch, 3, h, w), generator=torch.Generator().manual_seed(0)).to(device)
    noise = base.initial_noise(images, [f"probe{i}" for i in range(batch)], 0) if hasattr(base, "initial_noise") \
        else None

    @torch.no_grad()
    def run(bf16: bool) -> None:
        was = base.training
        base.eval()
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bool(bf16)):
            model(images, noise=noise) if noise is not None else model(images)
        base.train(was)

    return run


def precision_key(cfg) -> str:
    """What the precision decision depends on besides the machine: the model, its width, tasks and crop."""
    tasks = cfg_get(cfg_get(cfg, "TASKS", {}) or {}, "NAMES", []) or []
    parts = [cfg_get(cfg, "model", "?"), cfg_get(cfg, "backbone", "?"), f"C{cfg_get(cfg, 'final_embed_dim', '?')}",
             f"T{cfg_get(cfg, 'timesteps', '?')}", "+".join(tasks), "x".join(map(str, probe_size(cfg))),
             f"compile={bool(cfg_get(cfg, 'compile', False))}"]
    return " ".join(str(p) for p in parts)


def inference_bf16(cfg, model, device) -> bool:
    """bf16 autocast for this inference run: utils.precision.bf16_autocast with a probe of this model."""
    return bf16_autocast(cfg, device, probe=inference_probe(model, cfg, device), key=precision_key(cfg))


def compile_for_inference(cfg, model, device, amp: bool):
    """`compile: true`: the model's regions compiled in place (models/compile.py) and warmed up on one
    batch at the configured crop, with the warm-up time logged. Other image sizes or batch sizes
    compile again on their first batch. Returns the model."""
    if not bool(cfg_get(cfg, "compile", False)):
        return model
    from models.compile import compile_regions

    log = logging.getLogger(LOGGER_NAME)
    opts = cfg_get(cfg, "compile_options", None) or {}
    kwargs = {k: cfg_get(opts, k) for k in ("backend", "mode") if cfg_get(opts, k, None) is not None}
    compile_regions(unwrap_model(model), **kwargs)
    h, w = probe_size(cfg)
    log.info(f"compile: compiling the backbone, clean features, decoder step and aux heads "
             f"({kwargs.get('backend', 'inductor')}) with a warm-up at {h}x{w}, "
             f"{'bf16' if amp else 'fp32'}; this takes a while once per process")
    t0 = time.perf_counter()
    inference_probe(model, cfg, device)(amp)
    log.info(f"compile: warm-up done in {time.perf_counter() - t0:.1f} s (other image or batch sizes compile "
             f"again on their first batch)")
    return model


def prepare_inference(cfg, model, device) -> bool:
    """Choose the precision (amp_cpu auto: measured on the eager model) and compile if asked; returns amp."""
    amp = inference_bf16(cfg, model, device)
    compile_for_inference(cfg, model, device, amp)
    return amp
