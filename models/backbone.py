"""ViT backbone with multi-level taps (docs/method.md#backbone), built from timm 1.x modules.

Patch embedding, transformer blocks and LayerNorm are timm's own (`timm.layers.PatchEmbed`,
`timm.models.vision_transformer.Block`), so its fused attention (`F.scaled_dot_product_attention`)
is used and timm parameter names are kept (`patch_embed.proj`, `blocks.N.attn.qkv`, `norm`, ...):
timm weights and the original checkpoints load unchanged.

The forward is our own thin loop, because the original differs from timm's `forward_intermediates`:
there is no class token in the sequence (the position embedding keeps an unused slot 0 for weight
compatibility and only `pos_embed[:, 1:]` is added), taps are the UN-normalised tokens after the
configured blocks, and the last level is taken after the final norm. Each level goes through its own
1×1 projection `fea_fuse.{l}` D -> C; the output is B×(L·C)×h×w, level-major.

Unlike the original (fixed resolution), any input whose sides are multiples of 16 works: the stored
position grid is resized on the fly (bicubic, align_corners=False, no antialias).

Interface (models/backbones.py, docs/extending.md): every level is the patch grid, so `levels` is
(embed_dim, patch_size) per level and `decoder_stride` = `input_multiple` = patch_size; these are
declarations only and change no computation or parameter name. `build_backbone` builds these ViTs
for the VARIANTS names and hands `backbone: timm` to models/timm_backbone.py.
"""
from __future__ import annotations

import os
import types
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block

from models.backbones import BackboneFileError, BackboneValueError, Level
from models.timm_backbone import build_timm_backbone
from models.variants import KWARG_KEYS, TIMM, VARIANTS, VIT_PATCH_SIZE
from utils.config import cfg_get
from utils.config_schema import DEFAULT_DECODER_STRIDE

PATCH_SIZE = VIT_PATCH_SIZE
PRETRAINED_GRID = (24, 24)  # the @384 ImageNet checkpoints: 384/16


def _linspace(start: float, end: float, n: int) -> list[float]:
    """torch.linspace(start, end, n) values without touching a device (works under a meta context)."""
    return torch.linspace(start, end, n, device="cpu").tolist()


def resize_pos_grid(pos: torch.Tensor, src_hw: Sequence[int], dst_hw: Sequence[int]) -> torch.Tensor:
    """Resize grid position embeddings 1×(h·w)×D -> 1×(h'·w')×D, bicubic, align_corners=False, no antialias."""
    src_hw, dst_hw = tuple(src_hw), tuple(dst_hw)
    if src_hw == dst_hw:
        return pos
    d = pos.shape[-1]
    grid = pos.reshape(1, src_hw[0], src_hw[1], d).permute(0, 3, 1, 2)  # 1 d h w
    orig_dtype = grid.dtype
    grid = F.interpolate(grid.float(), size=dst_hw, mode="bicubic", align_corners=False, antialias=False)
    return grid.to(orig_dtype).permute(0, 2, 3, 1).reshape(1, dst_hw[0] * dst_hw[1], d)


class ViTMultiLevel(nn.Module):
    """Pre-norm ViT/16 (timm blocks) returning B×(L·C)×h×w from taps + final norm (L = len(taps) + 1)."""

    def __init__(self, img_size: Sequence[int], embed_dim: int, depth: int, num_heads: int,
                 taps: Sequence[int], out_dim: int, mlp_ratio: float = 4.0, drop_path_rate: float = 0.15,
                 patch_size: int = PATCH_SIZE):
        super().__init__()
        img_size = (int(img_size[0]), int(img_size[1]))
        taps = tuple(int(t) for t in taps)
        if any(not 1 <= t <= depth for t in taps) or list(taps) != sorted(set(taps)):
            raise ValueError(f"backbone taps must be increasing 1-based block indices in 1..{depth}, got {taps}")
        for s in img_size:
            if s % patch_size:
                raise ValueError(f"backbone: configured image size {img_size} is not a multiple of {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.taps = taps
        self.num_levels = len(taps) + 1
        # the backbone interface (models/backbones.py): every level sits on the patch grid
        self.levels = (Level(embed_dim, patch_size),) * self.num_levels
        self.decoder_stride = patch_size
        self.input_multiple = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        num_tokens = self.grid_size[0] * self.grid_size[1]
        # Registration order as in the original checkpoints: pos_embed, patch_embed, blocks, norm, fea_fuse.
        # Slot 0 of pos_embed is the class-token position: never used, kept for weight compatibility.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, embed_dim))
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=3,
                                      embed_dim=embed_dim, strict_img_size=False)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = _linspace(0.0, drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=dpr[i],
                  norm_layer=norm_layer)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.fea_fuse = nn.ModuleList(nn.Conv2d(embed_dim, out_dim, 1) for _ in range(self.num_levels))
        self._tap_index = {t - 1: i for i, t in enumerate(taps)}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Spec docs/method.md#initialisation-and-pretrained-weights: pos_embed and Linear weights trunc-normal(0.02), zero Linear biases, LN 1/0;
        convs (patch embed, fea_fuse) keep PyTorch defaults."""
        trunc_normal_(self.pos_embed, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def set_drop_path(self, rate: float) -> None:
        """Change the stochastic-depth rates to linspace(0, rate, depth) (e.g. 0 for parity checks)."""
        for r, blk in zip(_linspace(0.0, rate, len(self.blocks)), self.blocks):
            for name in ("drop_path1", "drop_path2"):
                setattr(blk, name, DropPath(r) if r > 0 else nn.Identity())

    def grid_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """pos_embed[:, 1:] for an h×w token grid (resized from the stored grid when it differs)."""
        return resize_pos_grid(self.pos_embed[:, 1:], self.grid_size, (h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, hh, ww = x.shape
        p = self.patch_size
        if hh % p or ww % p:
            raise ValueError(f"backbone: input size {hh}x{ww} is not a multiple of the patch size {p}; "
                             f"pad the image (the data pipeline pads to the crop size)")
        h, w = hh // p, ww // p
        x = self.patch_embed(x) + self.grid_pos_embed(h, w)  # b (h w) d
        taps = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self._tap_index:
                taps.append(x)  # un-normalised tokens
        taps.append(self.norm(x))
        # 1×1 convs on the token maps, applied as Linear on tokens: b (h w) d -> b (h w) (L c)
        y = torch.cat([F.linear(t, conv.weight.flatten(1), conv.bias) for conv, t in zip(self.fea_fuse, taps)],
                      dim=-1)
        return y.transpose(1, 2).reshape(b, -1, h, w).contiguous()  # b (L c) h w, level-major


# --------------------------------------------------------------------------------------------------
# Building from a config
# --------------------------------------------------------------------------------------------------


def backbone_spec(cfg) -> dict:
    """Sizes of the configured backbone: VARIANTS entry updated by cfg.backbone_kwargs."""
    name = cfg_get(cfg, "backbone")
    if name not in VARIANTS:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(VARIANTS)}")
    spec = dict(VARIANTS[name], mlp_ratio=4.0)
    extra = dict(cfg_get(cfg, "backbone_kwargs", None) or {})
    unknown = set(extra) - set(KWARG_KEYS)
    if unknown:
        raise ValueError(f"backbone_kwargs: unknown keys {sorted(unknown)}; allowed: {list(KWARG_KEYS)}")
    spec.update(extra)
    missing = [k for k in ("embed_dim", "depth", "num_heads", "taps") if spec.get(k) is None]
    if missing:
        raise ValueError(f"backbone {name!r} needs backbone_kwargs {missing} in the config "
                         f"(e.g. backbone_kwargs: {{embed_dim: 64, depth: 4, num_heads: 2, taps: [1, 2, 3]}})")
    spec["name"] = name
    return spec


def build_backbone(cfg) -> nn.Module:
    """The configured backbone: a paper ViT (cfg.backbone a VARIANTS name, cfg.backbone_kwargs,
    cfg.final_embed_dim, cfg.TRAIN.SCALE, cfg.drop_path_rate, ImageNet weights from cfg.backbone_weights
    when set), or for `backbone: timm` the generic timm adapter (models/timm_backbone.py)."""
    if cfg_get(cfg, "backbone") == TIMM:
        return build_timm_backbone(cfg)
    stride = int(cfg_get(cfg, "decoder_stride", DEFAULT_DECODER_STRIDE))
    if stride != PATCH_SIZE:
        raise ValueError(f"decoder_stride {stride}: the paper ViT {cfg_get(cfg, 'backbone')!r} decodes on its "
                         f"{PATCH_SIZE}x{PATCH_SIZE} patch grid; remove decoder_stride or set it to {PATCH_SIZE}")
    spec = backbone_spec(cfg)
    train = cfg_get(cfg, "TRAIN", None)
    scale = cfg_get(train, "SCALE", None) if train is not None else None
    if scale is None:
        raise ValueError("config has no TRAIN.SCALE (the network input size [H, W])")
    drop_path = cfg_get(cfg, "drop_path_rate", None)
    model = ViTMultiLevel(
        img_size=scale, embed_dim=spec["embed_dim"], depth=spec["depth"], num_heads=spec["num_heads"],
        taps=spec["taps"], out_dim=int(cfg_get(cfg, "final_embed_dim")), mlp_ratio=float(spec["mlp_ratio"]),
        drop_path_rate=0.15 if drop_path is None else float(drop_path))
    weights = cfg_get(cfg, "backbone_weights", None)
    if weights:
        load_pretrained(model, weights, spec)
    return model


# --------------------------------------------------------------------------------------------------
# Pretrained ImageNet weights
# --------------------------------------------------------------------------------------------------


def _download_advice(spec: dict) -> str:
    tag = spec.get("timm_name")
    if not tag:
        return ("the tiny backbone has no ImageNet weights; set backbone_weights: null, or give a timm ViT "
                "state dict with matching sizes")
    hub = tag.split(".")[0] + "." + tag.split(".", 1)[1]
    return (f"this backbone ({spec['name']}) is initialised from the timm weight '{tag}'. Download it once, "
            f"e.g. `python -c \"import timm; timm.create_model('{tag}', pretrained=True)\"` (then "
            f"`backbone_weights: timm` reads it from the Hugging Face hub cache, also with HF_HUB_OFFLINE=1), "
            f"or fetch `model.safetensors` from https://huggingface.co/timm/{hub} and point "
            f"`backbone_weights:` (config or --opts) at that file (.safetensors, .pth/.bin or the original "
            f".npz all work)")


def load_pretrained(model: ViTMultiLevel, weights: str, spec: dict) -> dict:
    """Load ImageNet weights into the ViT part (fea_fuse stays random). Returns {'missing': [...]}.

    weights: 'timm' (timm hub tag via the local hub cache) or a path to .npz / .pth / .bin / .safetensors.
    """
    if str(weights) == "timm":
        sd = _timm_hub_state_dict(spec)
    else:
        path = Path(os.path.expanduser(str(weights)))
        if not path.is_file():
            raise BackboneFileError(f"backbone_weights: file {str(path)!r} does not exist; {_download_advice(spec)}")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            sd = _npz_state_dict(model, path, spec)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin"):
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
            for key in ("model", "state_dict"):
                if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                    sd = sd[key]
        else:
            raise BackboneValueError(f"backbone_weights: unsupported file type {suffix!r} ({path}); use .npz, "
                                     f".safetensors, .pth or .bin")
    return load_timm_state_dict(model, sd, source=str(weights))


def _timm_hub_state_dict(spec: dict) -> dict:
    tag = spec.get("timm_name")
    if not tag:
        raise ValueError(f"backbone_weights: timm is not available for {spec['name']}; {_download_advice(spec)}")
    import timm
    try:
        net = timm.create_model(tag, pretrained=True, num_classes=0)
    except Exception as exc:  # offline, empty cache, ...
        raise RuntimeError(f"backbone_weights: timm could not load '{tag}' ({type(exc).__name__}: {exc}); "
                           f"{_download_advice(spec)}") from exc
    return net.state_dict()


def _npz_state_dict(model: ViTMultiLevel, path: Path, spec: dict) -> dict:
    """Convert a JAX .npz with timm's own loader (`_load_weights`) into a timm-named state dict.

    timm's loader writes into a model object; we give it a stand-in that shares nothing with
    `model` except sizes, with a position table of the checkpoint's own shape (so timm does not
    resize it: the resize must be bicubic without antialias, done in load_timm_state_dict).
    """
    import numpy as np
    from timm.models import vision_transformer as vt

    with np.load(str(path)) as npz:
        key = next((k for k in npz.files if k.endswith("posembed_input/pos_embedding")), None)
        if key is None:
            raise ValueError(f"backbone_weights: {path} does not look like a ViT .npz (no pos_embedding)")
        pos_shape = npz[key].shape
    d = model.embed_dim
    if pos_shape[-1] != d:
        raise ValueError(f"backbone_weights: {path} has width {pos_shape[-1]}, the model has {d}")
    patch = PatchEmbed(img_size=PRETRAINED_GRID[0] * PATCH_SIZE, patch_size=PATCH_SIZE, embed_dim=d,
                       strict_img_size=False)
    blocks = nn.Sequential(*[Block(d, blk.attn.num_heads, mlp_ratio=blk.mlp.fc1.out_features / d,
                                   qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
                             for blk in model.blocks])
    stand_in = types.SimpleNamespace(
        patch_embed=patch, cls_token=None, pos_embed=torch.zeros(tuple(pos_shape)), blocks=blocks,
        norm=nn.LayerNorm(d, eps=1e-6), head=nn.Identity(), attn_pool=None, no_embed_class=False)
    try:
        vt._load_weights(stand_in, str(path))
    except Exception as exc:
        raise RuntimeError(f"backbone_weights: could not read {path} with timm's npz loader "
                           f"({type(exc).__name__}: {exc}); {_download_advice(spec)}") from exc
    sd = {"pos_embed": stand_in.pos_embed}
    for prefix, mod in (("patch_embed.", patch), ("blocks.", blocks), ("norm.", stand_in.norm)):
        sd.update({prefix + k: v for k, v in mod.state_dict().items()})
    return sd


def load_timm_state_dict(model: ViTMultiLevel, sd: dict, source: str = "state dict") -> dict:
    """Copy timm-named ViT weights into `model`: drops cls_token / head / fc_norm, resizes the
    position grid (bicubic, no antialias) keeping slot 0. Raises on any other mismatch."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    dropped_prefixes = ("cls_token", "head.", "head", "fc_norm.", "reg_token", "norm_pre.", "attn_pool.")
    sd = {k: v for k, v in sd.items() if not any(k == p or k.startswith(p) for p in dropped_prefixes)
          and not k.startswith("fea_fuse.")}
    if "pos_embed" in sd:
        pos = sd["pos_embed"].float()
        n = pos.shape[1]
        side = int(round(n ** 0.5))
        if side * side == n:  # table without a class slot: the slot is unused, zeros keep it inert
            slot0, grid = torch.zeros_like(pos[:, :1]), pos
        else:
            slot0, grid = pos[:, :1], pos[:, 1:]
            side = int(round(grid.shape[1] ** 0.5))
            if side * side != grid.shape[1]:
                raise ValueError(f"backbone_weights ({source}): cannot infer the position grid of "
                                 f"pos_embed with {n} tokens")
        grid = resize_pos_grid(grid, (side, side), model.grid_size)
        sd["pos_embed"] = torch.cat([slot0, grid], dim=1)
    own = model.state_dict()
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and own[k].shape != v.shape]
    unexpected = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in sd and not k.startswith("fea_fuse."))
    if bad_shapes or unexpected or missing:
        raise BackboneValueError(
            f"backbone_weights ({source}) do not fit the {len(model.blocks)}-block ViT of width "
            f"{model.embed_dim}:\n  shape mismatches: {bad_shapes[:8]}\n  unexpected keys: {unexpected[:8]}\n"
            f"  missing keys: {missing[:8]}\nCheck that the file is the weight for this backbone variant.")
    model.load_state_dict(sd, strict=False)
    return {"missing": sorted(k for k in own if k not in sd)}
