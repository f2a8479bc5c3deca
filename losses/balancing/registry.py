"""The registry of multi-task balancing methods (config `loss_balancing.name`), as data/datasets.py is for
datasets and models/backbones.py for backbones: a method is a name, a factory and the options it reads.

Why a registry: the trainer calls one interface (losses/balancing/base.py, `Balancer`) whatever the
method, and a user adds a method in a file of their own with `register_balancer` (docs/extending.md); its
options then load, validate and appear in docs/configs.md like every other key, because they are declared
as `utils.config_schema.Spec`s here and the schema reads this table live (BALANCING_OPTIONS).

Importing this module registers `check_loss_balancing` with utils.config: it refuses an option that the
chosen method does not read (it would be ignored without a word) and a method whose library is missing.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Mapping

from utils.config import Checker, register_config_check
from utils.config_schema import BALANCERS, BALANCING_OPTIONS, Spec

__all__ = ["BalancerSpec", "register_balancer", "register_option", "balancer_spec", "balancer_names",
           "check_loss_balancing"]


@dataclass(frozen=True)
class BalancerSpec:
    """name: the config name. factory(criterion, settings, seed) -> Balancer, settings: {option: value} of
    the options in `options`. requires: importable modules the method needs (checked at config load), with
    `install` the hint. kind: 'scaling' (combines the losses) or 'gradient' (combines per-task gradients)."""

    name: str
    factory: Callable
    options: tuple = ()
    requires: tuple = ()
    install: str = ""
    kind: str = "scaling"
    doc: str = ""


_METHODS: dict = {}  # name -> BalancerSpec, in registration order
_OPTIONS: dict = {}  # option name -> Spec (shared by the methods that read it)
_NAMES: list = []  # live list behind the schema's BALANCERS slot

BALANCERS.provide(_NAMES)
BALANCING_OPTIONS.provide(_OPTIONS)


def register_option(name: str, spec: Spec) -> None:
    """Declare one loss_balancing option; a second declaration must be the same Spec (options are shared)."""
    if name == "name":
        raise ValueError("loss_balancing.name is the method itself, not an option")
    old = _OPTIONS.get(name)
    if old is not None and old != spec:
        raise ValueError(f"loss_balancing option {name!r} is declared twice with different types/defaults "
                         f"({old} vs {spec}); give the new method's option another name")
    _OPTIONS[name] = spec


def register_balancer(name: str, factory: Callable, options: Mapping[str, Spec] | None = None,
                      requires: tuple = (), install: str = "", kind: str = "scaling", doc: str = "") -> BalancerSpec:
    """Register a balancing method under `name` (lower case, as written in the config); returns its spec.
    Registering a name again replaces it (a user's file may refine a built-in)."""
    if not name or name != name.lower():
        raise ValueError(f"balancing method names are lower case, got {name!r}")
    for opt, spec in (options or {}).items():
        register_option(opt, spec)
    spec = BalancerSpec(name, factory, tuple(options or {}), tuple(requires), install, kind, doc)
    _METHODS[name] = spec
    if name not in _NAMES:
        _NAMES.append(name)
    return spec


def balancer_names() -> tuple:
    return tuple(_NAMES)


def balancer_spec(name: str) -> BalancerSpec:
    if name not in _METHODS:
        raise KeyError(f"unknown loss balancing method {name!r}; known: {', '.join(_NAMES)}")
    return _METHODS[name]


def missing_requirements(spec: BalancerSpec) -> list:
    return [m for m in spec.requires if importlib.util.find_spec(m) is None]


def check_loss_balancing(cfg: dict, raw: dict, chk: Checker) -> None:
    """Options set (to other than their default) in the YAML/--opts belong to the chosen method; the
    method's libraries are installed."""
    lb = cfg["loss_balancing"]
    spec = balancer_spec(lb["name"])
    written = raw.get("loss_balancing") or {}
    for opt in written:  # a saved config.yml lists every option at its default: only a changed one counts
        if opt != "name" and opt not in spec.options and opt in _OPTIONS and lb.get(opt) != _OPTIONS[opt].default:
            users = [m.name for m in _METHODS.values() if opt in m.options]
            chk.fail(f"loss_balancing.{opt}", f"is not read by method {spec.name!r} (it applies to "
                                              f"{', '.join(users) or 'no method'}).",
                     "Remove it or choose a method that uses it (docs/method.md#multi-task-balancing)")
    missing = missing_requirements(spec)
    if missing:
        chk.fail("loss_balancing.name", f"method {spec.name!r} needs the package(s) {', '.join(missing)}, which "
                                        f"are not installed.", spec.install or "Install them with pip")


register_config_check(check_loss_balancing, "loss_balancing")
