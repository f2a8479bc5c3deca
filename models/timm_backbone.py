"""Any timm model as a multi-level backbone for the TaskDiffusion decoder.

`TimmMultiLevel` wraps a timm model and returns what the paper's ViT returns: B×(L·C)×(H/s)×(W/s),
level-major, where s is the decoder stride (a config value) and L the number of taps. It declares
the interface of models/backbones.py (`levels`, `decoder_stride`, `input_multiple`, `num_levels`,
`out_dim`), so the decoder, the noise shape and the crop rule need nothing family-specific.

Multi-level features come from timm's own API:

* `forward_intermediates` (ViT, DINOv2, EVA, Swin, ConvNeXt and most timm families): the plain timm
  model is kept under `model.` with timm's parameter names, and `prune_intermediate_layers` drops
  the classifier and every block after the last tap (no unused parameters under DDP);
* `features_only` wrappers for families without it: timm renames flattened stages there
  (`layers.0` -> `layers_0`, `stages.0` -> `stages_0`, `stem.0` -> `stem_0`); the weight loader maps
  timm names onto them. NHWC outputs (Swin) are permuted to NCHW.

Bringing levels to the decoder grid H/s × W/s. Each level l (stride r_l) gets its own 1×1 conv
`fea_fuse.{l}` (C_l -> C) and is resampled to the grid:

* coarser levels (r_l > s) are enlarged bilinearly (align_corners=False, the decoder's own rule);
* finer levels (r_l < s) are shrunk with area averaging (`resample='area'`, default: every output
  cell is the mean of the input cells it covers, so nothing aliases) or bilinearly
  (`resample='bilinear'`, sharper and aliasing for factors above 2);
* levels already at stride s are only projected.

Projection and resampling are both linear with weights summing to one, so they commute exactly;
the conv runs at the smaller of the two resolutions (after shrinking, before enlarging).

Input sizes. H and W must be multiples of `input_multiple` = lcm(strides of every stage run,
decoder stride): the patch size for a ViT at s = patch size, 32 for Swin/ConvNeXt (every stage
exact, no timm padding), lcm(14, 16) = 112 for a ViT/14 on a stride-16 decoder. Models whose class
takes `dynamic_img_size` (ViT, EVA, Swin) are built with it on, so any such multiple runs (position
tables resized by timm, Swin masks built per input); `img_size` is set to the configured size. Swin windows: timm pads a stage grid
that is not a multiple of its window; sizes where every stage grid is a multiple of its window (or
no larger than it) need no padding, and a warning names the stage otherwise. Choose the window with
`model_kwargs.window_size` (timm resizes the checkpoint's relative-position tables).

Weights: `load_timm_weights` reads the timm model's own state dict from a local file (.safetensors,
.pth/.pt/.bin via timm's reader, .npz via the family's own loader when it has one) or from timm's hub
cache (`'timm'`), runs the family's `checkpoint_filter_fn` (position-embedding and window-table
resizing, original DINOv2/ConvNeXt/Swin layouts) and loads strictly; any misfit is one line naming
the file and the timm tag.
"""
from __future__ import annotations

import inspect
import os
import sys
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import (BackboneFileError, BackboneHubError, BackboneValueError, Level, check_input_size,
                              lcm)
from models.variants import TIMM_APIS as APIS
from models.variants import TIMM_KWARG_KEYS, TIMM_REQUIRED_KEYS
from models.variants import TIMM_RESAMPLE_MODES as RESAMPLE_MODES
from utils.cli import one_line
from utils.config_schema import DEFAULT_DECODER_STRIDE

__all__ = ["TimmMultiLevel", "build_timm_backbone", "load_timm_weights", "read_timm_state_dict", "RESAMPLE_MODES",
           "APIS", "TIMM_KWARG_KEYS"]



def _timm():
    import timm
    return timm


def _build(timm_name: str, kwargs: Mapping, meta: bool = False, **extra) -> nn.Module:
    """timm.create_model without weights; one-line errors naming the tag (unknown name, bad kwargs)."""
    timm = _timm()
    try:
        if meta:
            with torch.device("meta"):
                return timm.create_model(timm_name, pretrained=False, **dict(kwargs), **extra)
        return timm.create_model(timm_name, pretrained=False, **dict(kwargs), **extra)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise BackboneValueError(f"timm model {timm_name!r} is unknown to timm {timm.__version__}; set "
                                     f"backbone_kwargs.timm_name to a name from timm.list_models()") from exc
        raise
    except TypeError as exc:
        raise BackboneValueError(f"timm model {timm_name!r} does not accept backbone_kwargs.model_kwargs "
                                 f"{sorted(kwargs)}: {one_line(exc)}") from exc


def _reference(timm_name: str, kwargs: Mapping) -> nn.Module:
    """The full (unpruned, headless) timm model, on the meta device when timm allows it: its state-dict
    names and shapes are what a weight file must match, and timm's filter functions read it."""
    try:
        return _build(timm_name, kwargs, meta=True, num_classes=0)
    except ValueError:
        raise
    except Exception:  # a family that computes buffers from values at construction
        return _build(timm_name, kwargs, num_classes=0)


class TimmMultiLevel(nn.Module):
    """A timm model as a multi-level backbone: B×3×H×W -> B×(L·C)×(H/s)×(W/s), level-major.

    Args:
        timm_name: timm model name, optionally with its weight tag ('vit_large_patch14_dinov2.lvd142m').
        out_indices: timm's feature indices to tap (block indices for ViT-like models, stage indices
            for hierarchical ones; negative counts from the end; an int n means the last n).
        out_dim: C, the decoder width each level is projected to.
        img_size: (H, W) the network is configured for (the crop size); given to timm where the model
            takes it (position grid, Swin windows) and checked against `input_multiple`.
        decoder_stride: s, pixels per decoder cell.
        model_kwargs: extra timm.create_model arguments (sizes of a tiny test model, window_size, ...).
        resample: how finer levels are shrunk to the decoder grid: 'area' or 'bilinear' (see module doc).
        norm: apply the model's final norm where timm's forward_intermediates does (ViT-like: every
            level; Swin: the last stage; ConvNeXt: none). Ignored by features_only wrappers.
        api: 'auto' (forward_intermediates when the family has it, else features_only) or either one.
        drop_path_rate: stochastic depth of the timm model (None: timm's default for the family).
        pretrained_file: weights loaded at the end (see `load_timm_weights`); None: random init.
    """

    def __init__(self, timm_name: str, out_indices, out_dim: int, img_size: Sequence[int],
                 decoder_stride: int = 16, model_kwargs: Mapping | None = None, resample: str = "area",
                 norm: bool = True, api: str = "auto", drop_path_rate: float | None = None,
                 pretrained_file: str | None = None):
        super().__init__()
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"timm backbone {timm_name!r}: resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        if api not in APIS:
            raise ValueError(f"timm backbone {timm_name!r}: api must be one of {APIS}, got {api!r}")
        self.timm_name = str(timm_name)
        self.out_dim = int(out_dim)
        self.decoder_stride = int(decoder_stride)
        self.resample = resample
        self.norm = bool(norm)
        img_size = (int(img_size[0]), int(img_size[1]))
        self.timm_kwargs = self._complete_kwargs(dict(model_kwargs or {}), img_size, drop_path_rate)
        ref = _reference(self.timm_name, self.timm_kwargs)
        has_api = hasattr(ref, "forward_intermediates") and hasattr(ref, "prune_intermediate_layers")
        self.api = ("intermediates" if has_api else "features_only") if api == "auto" else api
        if self.api == "intermediates" and not has_api:
            raise BackboneValueError(f"timm model {self.timm_name!r} has no forward_intermediates in timm "
                                     f"{_timm().__version__}; use api: features_only")
        self.model, take, infos = self._build_model(ref, out_indices)
        self.out_indices = tuple(take)
        self.levels = tuple(Level(int(i["num_chs"]), int(i["reduction"])) for i in infos["taps"])
        self.num_levels = len(self.levels)
        self.input_multiple = lcm(*(int(i["reduction"]) for i in infos["run"]), self.decoder_stride)
        self.img_size = check_input_size(img_size, self.input_multiple,
                                         where=f"timm backbone {self.timm_name!r}: configured image")
        self.fea_fuse = nn.ModuleList(nn.Conv2d(c, self.out_dim, 1) for c, _ in self.levels)
        self._fi_norm = "norm" in inspect.signature(self.model.forward_intermediates).parameters \
            if self.api == "intermediates" else False
        self._warn_window_padding()
        if pretrained_file:
            load_timm_weights(self, pretrained_file)

    # ------------------------------------------------------------------------------ construction
    def _complete_kwargs(self, kwargs: dict, img_size: tuple, drop_path_rate: float | None) -> dict:
        """Add the size arguments the model class takes: the configured img_size, and dynamic sizes
        (ViT-like: position grid resized per input; Swin: masks per input) unless the config says."""
        probe = _reference(self.timm_name, kwargs)
        params = inspect.signature(type(probe).__init__).parameters
        if "img_size" in params:
            kwargs.setdefault("img_size", img_size)
        if "dynamic_img_size" in params:
            kwargs.setdefault("dynamic_img_size", True)
        if drop_path_rate is not None and "drop_path_rate" in params:
            kwargs.setdefault("drop_path_rate", float(drop_path_rate))
        return kwargs

    def _build_model(self, ref: nn.Module, out_indices):
        """(timm module, absolute tap indices, feature infos of the taps and of every stage run)."""
        from timm.models._features import feature_take_indices

        info = list(ref.feature_info)
        idx = out_indices if isinstance(out_indices, int) else [int(i) for i in out_indices]
        try:
            take, last = feature_take_indices(len(info), idx)
        except (AssertionError, IndexError) as exc:
            raise BackboneValueError(f"timm backbone {self.timm_name!r}: out_indices {out_indices} are out of range for "
                                     f"its {len(info)} feature levels ({one_line(exc)})") from exc
        take = [int(t) for t in take]
        if take != sorted(set(take)):
            raise BackboneValueError(f"timm backbone {self.timm_name!r}: out_indices {out_indices} must be increasing")
        if self.api == "intermediates":
            model = _build(self.timm_name, self.timm_kwargs, num_classes=0)
            model.prune_intermediate_layers(take, prune_norm=not self.norm, prune_head=True)
        else:
            model = _build(self.timm_name, self.timm_kwargs, features_only=True, out_indices=tuple(take))
        return model, take, {"taps": [info[t] for t in take], "run": info[:last + 1]}

    def _warn_window_padding(self) -> None:
        """Warn (one line) when a windowed stage needs timm's padding at the configured size."""
        for name, m in self.model.named_modules():
            win, res = getattr(m, "window_size", None), getattr(m, "input_resolution", None)
            if not (isinstance(win, tuple) and isinstance(res, tuple) and len(win) == len(res) == 2):
                continue
            if any(r > w and r % w for r, w in zip(res, win)):
                warnings.warn(f"timm backbone {self.timm_name!r}: {name} has a {res[0]}x{res[1]} grid at input "
                              f"{self.img_size[0]}x{self.img_size[1]}, not a multiple of its window {win[0]}x{win[1]}; "
                              f"timm pads it. Choose model_kwargs.window_size dividing every stage grid for exact "
                              f"windows", stacklevel=3)
                return

    # ------------------------------------------------------------------------------ interface
    @property
    def strides(self) -> tuple:
        return tuple(level.stride for level in self.levels)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's activation checkpointing of the wrapped model (memory for compute)."""
        target = self.model.model if self.api == "features_only" and hasattr(self.model, "model") else self.model
        if hasattr(target, "set_grad_checkpointing"):
            target.set_grad_checkpointing(enable)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The raw tapped levels, NCHW, each checked against its declaration."""
        if self.api == "intermediates":
            kw = {"norm": self.norm} if self._fi_norm else {}
            feats = self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True,
                                                     output_fmt="NCHW", **kw)
        else:
            feats = self.model(x)
            if isinstance(feats, Mapping):
                feats = list(feats.values())
            if str(getattr(self.model, "output_fmt", "NCHW")).upper().endswith("NHWC"):
                feats = [f.permute(0, 3, 1, 2) for f in feats]
        hh, ww = x.shape[-2:]
        for f, (c, r) in zip(feats, self.levels):
            if tuple(f.shape[1:]) != (c, hh // r, ww // r):
                raise RuntimeError(f"timm backbone {self.timm_name!r}: a level has shape {tuple(f.shape[1:])}, "
                                   f"declared {(c, hh // r, ww // r)} (channels, H/stride, W/stride)")
        return list(feats)

    def to_grid(self, level: int, f: torch.Tensor, size: tuple) -> torch.Tensor:
        """fea_fuse.{level} and resampling of one level to the decoder grid (see the module doc)."""
        conv = self.fea_fuse[level]
        if tuple(f.shape[-2:]) == size:
            return conv(f)
        if f.shape[-2] >= size[0] and f.shape[-1] >= size[1]:  # finer level: shrink, then project
            if self.resample == "area":
                return conv(F.adaptive_avg_pool2d(f, size))
            return conv(F.interpolate(f, size=size, mode="bilinear", align_corners=False))
        return F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hh, ww = check_input_size(x.shape[-2:], self.input_multiple, where=f"timm backbone {self.timm_name!r}: input")
        size = (hh // self.decoder_stride, ww // self.decoder_stride)
        return torch.cat([self.to_grid(l, f, size) for l, f in enumerate(self.features(x))], dim=1)


def _get(cfg, key, default=None):
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def build_timm_backbone(cfg) -> TimmMultiLevel:
    """The backbone of a `backbone: timm` config: cfg.backbone_kwargs (TIMM_KWARG_KEYS), cfg.final_embed_dim,
    cfg.TRAIN.SCALE, cfg.decoder_stride (default 16), cfg.drop_path_rate, weights from cfg.backbone_weights."""
    bk = dict(_get(cfg, "backbone_kwargs", None) or {})
    unknown = sorted(set(bk) - set(TIMM_KWARG_KEYS))
    missing = [k for k in TIMM_REQUIRED_KEYS if bk.get(k) is None]
    if unknown or missing:
        raise ValueError(f"backbone_kwargs for backbone: timm: {'unknown keys ' + str(unknown) if unknown else ''}"
                         f"{'; ' if unknown and missing else ''}{'missing ' + str(missing) if missing else ''}; "
                         f"allowed: {list(TIMM_KWARG_KEYS)} (e.g. {{timm_name: vit_large_patch14_dinov2.lvd142m, "
                         f"out_indices: [5, 11, 17, 23]}})")
    train = _get(cfg, "TRAIN", None)
    scale = _get(train, "SCALE", None) if train is not None else None
    if scale is None:
        raise ValueError("config has no TRAIN.SCALE (the network input size [H, W])")
    drop_path = _get(cfg, "drop_path_rate", None)
    return TimmMultiLevel(
        bk.get("timm_name"), bk.get("out_indices"), out_dim=int(_get(cfg, "final_embed_dim")), img_size=scale,
        decoder_stride=int(_get(cfg, "decoder_stride", None) or DEFAULT_DECODER_STRIDE),
        model_kwargs=bk.get("model_kwargs"), resample=bk.get("resample", "area"), norm=bool(bk.get("norm", True)),
        api=bk.get("api", "auto"), drop_path_rate=None if drop_path is None else float(drop_path),
        pretrained_file=_get(cfg, "backbone_weights", None) or None)


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def _advice(tag: str) -> str:
    return (f"save the weights of timm model '{tag}' (e.g. `timm.create_model('{tag}', pretrained=True)"
            f".state_dict()` or the hub's model.safetensors) to that path, or set backbone_weights: null")


def read_timm_state_dict(path: str, timm_name: str, timm_kwargs: Mapping | None = None) -> dict:
    """A timm state dict from a local file or, for 'timm', from timm's hub cache (offline works).

    .safetensors / .pth / .pt / .bin go through timm's reader (unwraps {'state_dict'|'model'|EMA: ...},
    strips 'module.' / '_orig_mod.'); .npz goes through the family's own `load_pretrained` on a full
    model built with `timm_kwargs` (JAX ViT checkpoints). One-line errors name the file and the tag.
    """
    timm = _timm()
    if str(path) == "timm":
        try:
            return timm.create_model(timm_name, pretrained=True).state_dict()
        except Exception as exc:
            raise BackboneHubError(f"backbone_weights: timm could not load '{timm_name}' from its hub cache "
                                   f"({type(exc).__name__}: {one_line(exc)[:200]}); {_advice(timm_name)}") from exc
    file = Path(os.path.expanduser(str(path)))
    if not file.is_file():
        raise BackboneFileError(f"backbone_weights: file '{file}' does not exist (timm model '{timm_name}'); "
                                f"{_advice(timm_name)}")
    if file.suffix.lower() in (".npz", ".npy"):
        full = _build(timm_name, timm_kwargs or {}, num_classes=0)
        if not hasattr(full, "load_pretrained"):
            raise BackboneValueError(f"backbone_weights: timm model '{timm_name}' cannot read the .npz file '{file}'; "
                                     f"use its .safetensors or .pth weights")
        try:
            full.load_pretrained(str(file))
        except Exception as exc:
            raise BackboneValueError(f"backbone_weights: '{file}' is not a .npz checkpoint of timm model '{timm_name}' "
                                     f"({type(exc).__name__}: {one_line(exc)[:200]})") from exc
        return full.state_dict()
    try:
        sd = timm.models.load_state_dict(str(file))
    except Exception as exc:
        raise BackboneValueError(f"backbone_weights: cannot read '{file}' as weights of timm model '{timm_name}' "
                                 f"({type(exc).__name__}: {one_line(exc)[:200]}); {_advice(timm_name)}") from exc
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneValueError(f"backbone_weights: '{file}' holds no state dict of tensors (timm model '{timm_name}'); "
                                 f"{_advice(timm_name)}")
    return dict(sd)


def _filter(sd: dict, ref: nn.Module, source: str, tag: str) -> dict:
    """The family's own checkpoint_filter_fn (resizing, layout conversion), when it has one."""
    fn = getattr(sys.modules.get(type(ref).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return sd
    try:
        return dict(fn(sd, ref))
    except Exception as exc:
        raise BackboneValueError(f"backbone_weights: '{source}' does not convert to timm model '{tag}' "
                                 f"({type(exc).__name__}: {one_line(exc)[:200]}); {_advice(tag)}") from exc


def _classifier_prefixes(ref: nn.Module) -> tuple:
    cls = (getattr(ref, "pretrained_cfg", None) or {}).get("classifier") or ()
    return tuple(c + "." for c in ((cls,) if isinstance(cls, str) else cls))


def _timm_key(own_key: str, full_keys) -> str | None:
    """The timm name of a key of the wrapped module: features_only wrappers rename flattened stages
    (FeatureListNet: `layers.0` -> `layers_0`) or nest the model (FeatureGetterNet: `model.`)."""
    if own_key in full_keys:
        return own_key
    if own_key.startswith("model.") and own_key[len("model."):] in full_keys:  # FeatureGetterNet
        return own_key[len("model."):]
    top, dot, rest = own_key.partition(".")
    for i, ch in enumerate(top):
        if ch == "_":
            cand = f"{top[:i]}.{top[i + 1:]}{dot}{rest}"
            if cand in full_keys:
                return cand
    return None


def _examples(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_timm_weights(model: TimmMultiLevel, path: str, timm_name: str | None = None) -> dict:
    """Load a timm model's weights into `model.model` (fea_fuse keeps its init).

    path: a local file (.safetensors, .pth/.pt/.bin, .npz) holding the timm model's own state dict,
    or 'timm' for timm's hub cache. timm_name: the tag named in errors (default: the model's).
    Classifier weights and weights of pruned blocks are ignored; any other missing, unexpected or
    mis-shaped key is a one-line ValueError naming the file and the tag.
    Returns {'loaded': n, 'ignored': [timm keys not used]}.
    """
    tag = timm_name or model.timm_name
    sd = read_timm_state_dict(path, tag, model.timm_kwargs)
    ref = _reference(model.timm_name, model.timm_kwargs)
    sd = _filter(sd, ref, str(path), tag)
    full = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    heads = _classifier_prefixes(ref)
    ignored = sorted(k for k in sd if k.startswith(heads) and k not in full)
    sd = {k: v for k, v in sd.items() if k not in ignored}
    own = {k[len("model."):]: k for k in model.state_dict() if k.startswith("model.")}
    mapping = {o: _timm_key(o, full) for o in own}
    unmapped = sorted(o for o, t in mapping.items() if t is None)
    unexpected = sorted(k for k in sd if k not in full)
    bad = [f"{k} {tuple(v.shape)} vs {full[k]}" for k, v in sd.items() if k in full and tuple(v.shape) != full[k]]
    missing = sorted(t for t in mapping.values() if t is not None and t not in sd) + unmapped
    if missing or unexpected or bad:
        parts = [f"{len(x)} {what} (e.g. {_examples(x)})" for x, what in
                 ((missing, "missing keys"), (unexpected, "unexpected keys"), (bad, "shape mismatches")) if x]
        raise BackboneValueError(f"backbone_weights: '{path}' does not fit timm model '{tag}'"
                                 f"{' as configured' if model.timm_kwargs else ''}: {'; '.join(parts)}; use the weights "
                                 f"of '{tag}' (timm.create_model('{tag}').state_dict() saved as .safetensors or .pth) "
                                 f"or set backbone_weights: null")
    used = {mapping[o] for o in own}
    state = {own[o]: sd[mapping[o]] for o in own}
    model.load_state_dict(state, strict=False)
    return {"loaded": len(state), "ignored": sorted(set(ignored) | (set(sd) - used))}
