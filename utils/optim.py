"""Optimizer and learning-rate schedule (docs/method.md#training-recipe).

Recipe: Adam with L2 weight decay on every parameter (torch's `Adam(weight_decay=...)` adds wd·θ to the
gradient, as the original) and a polynomial decay stepped every iteration,
    lr_k = (base − min_lr) · (1 − k/max_iter)^power + min_lr,   k = completed iterations (0 at the first),
optionally multiplied by a linear warm-up (k+1)/warmup_iters for k < warmup_iters. The schedule is a
`LambdaLR` whose multiplier is a pure function of k, so `scheduler.state_dict()` (which stores k as
`last_epoch`) restores the exact learning rate after a resume; k ≥ max_iter gives min_lr instead of the
complex number the original could produce one step past the end.

Improvements over the recipe, off by default: AdamW (decoupled decay) and excluding norms, biases,
position embeddings, class tokens and embedding tables from weight decay (`no_weight_decay_norm_bias`).
"""
from __future__ import annotations

import torch
from torch import nn

from utils.config import Checker, cfg_get, register_config_check

__all__ = ["build_optimizer", "build_scheduler", "param_groups", "PolyWarmup", "no_decay_names",
           "check_optimizer_keys"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "dist_token", "reg_token", "mask_token")


def no_decay_names(model: nn.Module) -> set:
    """Names of parameters that should not be decayed: norms, biases/1-d params, pos-embeds, tokens, embeddings."""
    names = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if (isinstance(module, (_NORMS + (nn.Embedding,))) or p.ndim <= 1
                    or pname.endswith(_NO_DECAY_SUFFIXES)):
                names.add(full)
    return names


def param_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool) -> list:
    """[{'params', 'weight_decay', 'name'}]: one group (the paper), or decay / no-decay groups."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not exclude_norm_bias:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay, "name": "all"}]
    skip = no_decay_names(model)
    decay = [p for n, p in named if n not in skip]
    no_decay = [p for n, p in named if n in skip]
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def check_optimizer_keys(cfg: dict, raw: dict, chk: Checker) -> None:
    """Config cross-check (registered with utils.config on import): an optimizer_kwargs extra only with
    the optimizer that takes it, since build_optimizer would otherwise drop it without a word."""
    kw = cfg["optimizer_kwargs"]
    for k, valid in (("momentum", ("sgd",)), ("nesterov", ("sgd",)), ("betas", ("adam", "adamw")),
                     ("eps", ("adam", "adamw"))):
        if k in kw and cfg["optimizer"] not in valid:
            chk.fail(f"optimizer_kwargs.{k}", f"applies to optimizer {'/'.join(valid)}, not {cfg['optimizer']!r}.",
                     "Remove it or change `optimizer`.")


register_config_check(check_optimizer_keys, "optimizer")


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (default, L2 decay as the paper), AdamW or SGD from cfg.optimizer / cfg.optimizer_kwargs."""
    name = str(cfg_get(cfg, "optimizer", "adam")).lower()
    kw = dict(cfg_get(cfg, "optimizer_kwargs", {}))
    if "lr" not in kw:
        raise ValueError("optimizer_kwargs.lr is missing from the config")
    lr = float(kw.pop("lr"))
    wd = float(kw.pop("weight_decay", 0.0))
    groups = param_groups(model, wd, bool(cfg_get(cfg, "no_weight_decay_norm_bias", False)))
    if name in ("adam", "adamw"):
        extra = {}
        if "betas" in kw:
            extra["betas"] = tuple(float(b) for b in kw["betas"])
        if "eps" in kw:
            extra["eps"] = float(kw["eps"])
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr, **extra)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(kw.get("momentum", 0.0)),
                               nesterov=bool(kw.get("nesterov", False)))
    raise ValueError(f"unknown optimizer {name!r} (config key `optimizer`); choose adam, adamw or sgd")


class PolyWarmup:
    """LR multiplier of completed iteration count k: linear warm-up × poly decay towards min_lr/base."""

    def __init__(self, max_iter: int, power: float = 0.9, warmup_iters: int = 0, min_ratio: float = 0.0):
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.max_iter, self.power = int(max_iter), float(power)
        self.warmup_iters, self.min_ratio = int(warmup_iters), float(min_ratio)

    def __call__(self, k: int) -> float:
        frac = min(max(k, 0), self.max_iter) / self.max_iter
        poly = (1.0 - frac) ** self.power
        factor = (1.0 - self.min_ratio) * poly + self.min_ratio
        if self.warmup_iters > 0 and k < self.warmup_iters:
            factor *= (k + 1) / self.warmup_iters
        return factor


def build_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration poly schedule (docs/method.md#training-recipe) with optional warm-up; call `.step()` after every optimizer step."""
    name = str(cfg_get(cfg, "scheduler", "poly"))
    if name != "poly":
        raise ValueError(f"unknown scheduler {name!r} (config key `scheduler`); only 'poly' is available")
    kw = cfg_get(cfg, "scheduler_kwargs", {}) or {}
    base = float(cfg_get(cfg, "optimizer_kwargs", {})["lr"])
    min_lr = float(cfg_get(kw, "min_lr", 0.0))
    fn = PolyWarmup(int(cfg_get(cfg, "max_iter", 40000)), float(cfg_get(kw, "power", 0.9)),
                    int(cfg_get(cfg, "warmup_iters", 0)), min_lr / base if base > 0 else 0.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=fn)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """Learning rate of the first parameter group (all groups share the schedule)."""
    return float(optimizer.param_groups[0]["lr"])
