"""Exponential moving average of the weights (config `ema`, docs/method.md#weight-ema), on timm's ModelEmaV3.

Off by default (`ema.decay: null`): the paper recipe keeps no average and nothing here runs. With a decay d,
after every optimizer step k (the count of completed iterations) that is a multiple of `ema.every`:

    θ_ema ← θ            while k ≤ start_iter   (the average starts from the current weights)
    θ_ema ← d·θ_ema + (1 − d)·θ   afterwards

timm's `ModelEmaV3` does the arithmetic (one foreach lerp over the state dict); this module adds what the
trainer needs around it: the schedule of the config, a state dict for the checkpoint (the EMA tensors and
the count of updates, so a resume continues bit-exactly), the memory it costs, and the choice of weights
for prediction (`pick_weights`: the EMA when a checkpoint has one, unless the raw weights are asked for).

BatchNorm buffers (`ema.buffers`): `average` (default, timm's default) averages the floating-point buffers
like the weights: running_mean/var of BatchNorm are already moving averages of batch statistics, and the
averaged weights see features whose statistics change as slowly as the weights themselves, so the averaged
statistics are the ones that fit the averaged weights to first order. `copy` takes the raw model's buffers
as they are (the statistics of the raw weights, as timm's `exclude_buffers=True`): choose it when the
buffers are not statistics of the weights (e.g. counters) or to recompute statistics separately. Integer
buffers (num_batches_tracked) are always copied. Constant float buffers (the diffusion schedule) stay
exactly equal under either rule (lerp of equal values).

Distributed: every rank keeps its own EMA (each evaluates its shard with it). The weights are identical on
every rank after the DDP step, so the averaged weights are too; the BatchNorm buffers of the ranks differ by
their last local batch, so the trainer broadcasts rank 0's EMA buffers before evaluating, as it does for the
raw model, and the checkpoint stores rank 0's.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from utils.config import Checker, cfg_get, register_config_check

__all__ = ["WeightEMA", "build_ema", "pick_weights", "EMA_KEY", "ema_settings", "check_ema"]

EMA_KEY = "ema"  # the checkpoint entry: {'state': EMA model state dict, 'updates': int, 'decay': float}


def ema_settings(cfg) -> dict | None:
    """The `ema` section of a config as plain values, or None when the EMA is off (decay null)."""
    sec = cfg_get(cfg, "ema", None) or {}
    if cfg_get(sec, "decay", None) is None:
        return None
    return {"decay": float(sec["decay"]), "start_iter": int(cfg_get(sec, "start_iter", 0)),
            "every": int(cfg_get(sec, "every", 1)), "buffers": str(cfg_get(sec, "buffers", "average")),
            "evaluate": str(cfg_get(sec, "evaluate", "both")), "select": str(cfg_get(sec, "select", "ema"))}


class WeightEMA:
    """The EMA of one (bare, unwrapped) model: `update(model, k)` after each optimizer step.

    module: the averaged copy (an nn.Module in eval mode, on the model's device and dtype).
    """

    def __init__(self, model: nn.Module, decay: float, start_iter: int = 0, every: int = 1,
                 buffers: str = "average"):
        from timm.utils.model_ema import ModelEmaV3

        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"ema.decay must lie in (0, 1), got {decay}")
        if buffers not in ("average", "copy"):
            raise ValueError(f"ema.buffers must be 'average' or 'copy', got {buffers!r}")
        self.decay, self.start_iter, self.every = float(decay), int(start_iter), max(1, int(every))
        self.buffers = buffers
        # stochastic rounding only touches bf16 EMA tensors (the model trains in fp32 under bf16 autocast);
        # seed 0 on every rank keeps ranks equal if a user ever keeps the model in bf16.
        self._ema = ModelEmaV3(model, decay=self.decay, exclude_buffers=buffers == "copy",
                               stochastic_rounding_seed=0)
        for p in self._ema.module.parameters():
            p.requires_grad_(False)
        self.updates = 0  # averaging updates applied (after start_iter); checkpointed

    @property
    def module(self) -> nn.Module:
        return self._ema.module

    def due(self, iteration: int) -> bool:
        return int(iteration) % self.every == 0

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int) -> bool:
        """After the optimizer step that completed `iteration`; returns whether the EMA changed."""
        if not self.due(iteration):
            return False
        if int(iteration) <= self.start_iter:
            self._ema.set(model)  # before the average starts: follow the raw weights exactly
            return True
        self._ema.update(model)  # step=None: timm uses the constant decay
        self.updates += 1
        return True

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Restart the average from `model`'s weights (a fresh run from --trained_model weights)."""
        self._ema.set(model)
        self.updates = 0

    def num_bytes(self) -> int:
        """Memory of the averaged copy (parameters and buffers) on its device."""
        return sum(t.numel() * t.element_size() for t in self.module.state_dict().values())

    def state_dict(self) -> dict:
        return {"state": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
                "updates": int(self.updates), "decay": self.decay, "start_iter": self.start_iter,
                "every": self.every, "buffers": self.buffers}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the EMA tensors and the update count (strict: the EMA must fit the model)."""
        self.module.load_state_dict(state["state"], strict=True)
        self.updates = int(state.get("updates", 0))


def build_ema(cfg, model: nn.Module) -> WeightEMA | None:
    """The EMA the config asks for (None when ema.decay is null, the default)."""
    s = ema_settings(cfg)
    if s is None:
        return None
    return WeightEMA(model, s["decay"], s["start_iter"], s["every"], s["buffers"])


def pick_weights(ckpt, raw: bool = False) -> tuple:
    """(checkpoint to load, which weights): the EMA weights when `ckpt` has them and `raw` is False.

    ckpt: a loaded checkpoint dict. Returns a shallow copy whose 'model' entry is the EMA state dict (so
    utils.checkpoint.load_model_weights loads it), or `ckpt` itself; which: 'ema' or 'raw'.
    """
    ema = ckpt.get(EMA_KEY) if isinstance(ckpt, Mapping) else None
    if raw or not isinstance(ema, Mapping) or not isinstance(ema.get("state"), Mapping):
        return ckpt, "raw"
    out = dict(ckpt)
    out["model"] = ema["state"]
    return out, "ema"


def check_ema(cfg: dict, raw: dict, chk: Checker) -> None:
    """ema.select must name weights that ema.evaluate evaluates (a select of unevaluated weights would
    pick best.pth on nothing); without `select` in the YAML it follows evaluate: ema or raw."""
    sec = cfg["ema"]
    written = (raw.get("ema") or {}) if isinstance(raw.get("ema"), dict) else {}
    if sec["evaluate"] in ("ema", "raw"):
        if "select" in written and written["select"] != sec["evaluate"]:
            chk.fail("ema.select", f"is {written['select']!r} but ema.evaluate is {sec['evaluate']!r}, so only the "
                                   f"{sec['evaluate']} weights are evaluated.",
                     "Set ema.evaluate: both, or drop ema.select")
        sec["select"] = sec["evaluate"]


register_config_check(check_ema, "ema")
