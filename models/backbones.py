"""The one backbone interface the rest of the code reads: levels, decoder stride, input multiple.

Every backbone module (the paper's `models.backbone.ViTMultiLevel`, the generic timm adapter
`models.timm_backbone.TimmMultiLevel`) maps images B×3×H×W to decoder features
B×(L·C)×(H/s)×(W/s), level-major, and declares:

* `levels`: one `Level(channels, stride)` per level, the backbone's own channels before the
  per-level 1×1 projection and the stride at which the backbone computes that level;
* `decoder_stride` (s): the grid the decoder works on; every level is brought to it;
* `input_multiple`: the multiple H and W must be (patch size, deepest stride, lcm with s);
* `num_levels` (L) and `out_dim` (C).

Why one place: decoder input projections, the DDIM noise shape, the crop/pad rule, MLoRE's token
count and the benchmarks all derive from these numbers, so a new backbone family only has to
declare them once. `backbone_interface(module)` reads them (and checks they are coherent);
`decoder_grid` turns an input size into the decoder grid, with a one-line error for an unusable size.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

__all__ = ["Level", "BackboneSpec", "backbone_interface", "decoder_grid", "check_input_size", "lcm", "BackboneError",
           "BackboneValueError", "BackboneFileError", "BackboneHubError"]


class BackboneError(Exception):
    """A backbone cannot be built as configured (timm name, out_indices, input size, weights file).

    Why a class of its own: these are user errors, found on every rank alike while the model is built, and
    the engine reports them as one `error:` line with exit status 2 (engine/runner.py) instead of a
    traceback. Raised as the subclasses below, which are also the builtin kind callers may catch."""


class BackboneValueError(BackboneError, ValueError):
    """A configured value or a weights file that does not fit the backbone."""


class BackboneFileError(BackboneError, FileNotFoundError):
    """A configured weights file that does not exist."""


class BackboneHubError(BackboneError, RuntimeError):
    """backbone_weights: timm, and timm's hub cache does not hold the weights (offline)."""


class Level(NamedTuple):
    """One backbone level: its own channel count and the stride (pixels per cell) it is computed at."""

    channels: int
    stride: int


class BackboneSpec(NamedTuple):
    """What a backbone declares to the rest of the model (see the module docstring)."""

    levels: tuple
    decoder_stride: int
    input_multiple: int
    out_dim: int

    @property
    def num_levels(self) -> int:
        return len(self.levels)


def lcm(*values: int) -> int:
    """Least common multiple of positive integers (1 for none)."""
    out = 1
    for v in values:
        out = out * int(v) // math.gcd(out, int(v))
    return out


def backbone_interface(module) -> BackboneSpec:
    """The declared interface of a backbone module; raises one line if an attribute is missing or
    incoherent (so a new backbone class fails at build time, not deep inside the decoder)."""
    name = type(module).__name__
    missing = [a for a in ("levels", "decoder_stride", "input_multiple", "num_levels", "out_dim")
               if not hasattr(module, a)]
    if missing:
        raise TypeError(f"backbone {name} does not declare {', '.join(missing)}; a backbone must expose "
                        f"levels, decoder_stride, input_multiple, num_levels and out_dim (models/backbones.py)")
    levels = tuple(Level(int(c), int(s)) for c, s in module.levels)
    s, mult = int(module.decoder_stride), int(module.input_multiple)
    if len(levels) != int(module.num_levels) or not levels:
        raise ValueError(f"backbone {name}: num_levels {module.num_levels} but {len(levels)} levels declared")
    if s <= 0 or mult <= 0 or mult % s:
        raise ValueError(f"backbone {name}: input_multiple {mult} must be a positive multiple of the decoder "
                         f"stride {s}")
    return BackboneSpec(levels, s, mult, int(module.out_dim))


def check_input_size(hw: Sequence[int], multiple: int, where: str = "input") -> tuple:
    """(H, W) as ints; one-line ValueError unless both are positive multiples of `multiple`."""
    h, w = int(hw[0]), int(hw[1])
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        up = (-(-max(h, 1) // multiple) * multiple, -(-max(w, 1) // multiple) * multiple)
        raise BackboneValueError(f"{where} size {h}x{w} is not a multiple of {multiple} (the backbone's input multiple); "
                         f"use {up[0]}x{up[1]} (pad or set crop_size to multiples of {multiple})")
    return h, w


def decoder_grid(module, hw: Sequence[int]) -> tuple:
    """(H/s, W/s): the decoder grid of an H×W input for this backbone (noise shape, MLoRE tokens)."""
    spec = backbone_interface(module)
    h, w = check_input_size(hw, spec.input_multiple)
    return h // spec.decoder_stride, w // spec.decoder_stride
