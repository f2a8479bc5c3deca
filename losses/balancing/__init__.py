"""Multi-task balancing plug-ins (config `loss_balancing`, docs/method.md#multi-task-balancing).

`fixed` (the default) is the criterion's weighted sum, bit for bit; the loss-scaling methods live in
scaling.py, the torchjd gradient aggregators in gradient.py, the registry in registry.py (a user adds a
method with `register_balancer`, docs/extending.md). The trainer builds one with `build_balancer` and calls
the interface of base.Balancer.
"""
from losses.balancing.base import Balancer, FixedWeights, LossScaling
from losses.balancing.registry import (balancer_names, balancer_spec, register_balancer, register_option,
                                       check_loss_balancing)
from losses.balancing import scaling as _scaling  # noqa: F401  (registers the loss-scaling methods)
from losses.balancing import gradient as _gradient  # noqa: F401  (registers the torchjd aggregators)
from utils.config import cfg_get

__all__ = ["Balancer", "FixedWeights", "LossScaling", "build_balancer", "register_balancer", "register_option",
           "balancer_names", "balancer_spec", "check_loss_balancing"]


def build_balancer(cfg, criterion) -> Balancer:
    """The method named by cfg.loss_balancing.name with its options (fixed when the section is absent)."""
    sec = dict(cfg_get(cfg, "loss_balancing", None) or {})
    spec = balancer_spec(str(sec.get("name", "fixed")))
    settings = {k: sec[k] for k in spec.options if k in sec}
    if spec.kind == "gradient" and bool(cfg_get(cfg, "compile", False)):
        settings["chunk_size"] = 1  # torch.vmap does not run through compiled regions' backward
    return spec.factory(criterion, settings, int(cfg_get(cfg, "seed", 0)))
