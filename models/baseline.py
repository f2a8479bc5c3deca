"""Non-diffusion multi-task baseline: the TaskDiffusion decoder without the diffusion (`model: baseline`).

This is the ablation the method is judged against: the same ViT backbone and the same decoder
layout (docs/method.md#decoder-core), but one deterministic forward pass with

  * no noisy label map, no label embeddings, no NoisyInputFusion (`transforms`);
  * no time embedding and no FiLM: every time-conditioned block becomes the same block without
    its `time_mlp` (conv -> BN [-> GELU -> conv]);
  * the cross-task gates computed from the backbone features themselves: the shared branch
    (`share_fpn`) reads the clean level F_l instead of the fused noisy features.

Everything else is kept: clean per-task features (`feat_task`, the original TaskFeat), sigmoid
cross-task gating per level, per-task specific heads, per-task softmax fusion of the levels,
refinement layers with the ×4 upsampling before the last one, prediction heads and aux heads.
Module names follow the TaskDiffusion head where the module exists there, so the backbone and the
time-free parts of a TaskDiffusion checkpoint could be loaded with `strict=False`.

Size: about 89% of the TaskDiffusion head at the paper PASCAL ViT-L width (see
tests/models/test_baseline.py for the numbers); the difference is the FiLM projections, the time
MLP, the label embeddings and the noisy-input fusion convs.

API (same as TaskDiffusion): model(images, targets=None) -> {'pred': {task: B×K×H×W}}
(+ 'aux' when targets are given and with_aux). targets only select the training output format;
the prediction does not depend on them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data.tasks import TaskInfo
from models.decoder import (ConvMLP, conv3x3_of_upsampled, foldable_into_head, skip_plus_1x1_into_head,
                            task_feat_block)
from models.diffusion import upsample_bilinear
from models.taskdiffusion import BackboneHeadModel, build_backbone_checked, config_task_infos
from utils.config import cfg_get


class ConvBlock(nn.Module):
    """`conv_2(GELU(BN(conv_1(x))))` (+ x when residual): CondConvMLP without time conditioning."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, k1: int = 3, k2: int = 1,
                 residual: bool = False):
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError("residual ConvBlock needs in_channels == out_channels")
        self.residual = residual
        self.conv_1 = nn.Conv2d(in_channels, mid_channels, k1, padding=k1 // 2)
        self.conv_2 = nn.Conv2d(mid_channels, out_channels, k2, padding=k2 // 2)
        self.norm = nn.BatchNorm2d(mid_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_2(F.gelu(self.norm(self.conv_1(x))))
        return x + y if self.residual else y

    def forward_into_head(self, x: torch.Tensor, head: nn.Conv2d, size: Sequence[int] | None) -> torch.Tensor:
        """`head(self(up(x)))` (up = bilinear to `size`, or none), the exact low-resolution form the
        TaskDiffusion decoder uses (models/decoder.py): conv_1 runs before the upsampling and conv_2 is
        folded into the head, so the baseline is timed the same way as the model it is compared with."""
        if not (self.residual and foldable_into_head(self, head)):
            return head(self(upsample_bilinear(x, size) if size is not None else x))
        a = self.conv_1(x) if size is None else conv3x3_of_upsampled(x, self.conv_1.weight, self.conv_1.bias, size)
        return skip_plus_1x1_into_head(x, F.gelu(self.norm(a)), self.conv_2, head, size)


class ConvBN(nn.Module):
    """`BN(conv_1(x))`, k×k conv, no activation: CondConv without time conditioning."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv_1(x))


class SharedFPN(nn.Module):
    """`share_fpn.fpn_conv.{l}.{0,1}`: two ConvBlock(C, C) per level on the clean level features."""

    def __init__(self, channels: int, num_levels: int):
        super().__init__()
        self.fpn_conv = nn.ModuleList(
            nn.ModuleList(ConvBlock(channels, channels, channels) for _ in range(2)) for _ in range(num_levels))

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        convs = self.fpn_conv[level]
        return convs[1](convs[0](x))


class GatedFPN(nn.Module):
    """`fpn_encoder`: clean task features, cross-task gating per level, softmax fusion of the levels.

    levels: L × (B×C×h×w) -> ({task: B×C×h×w} fused, clean P: L × {task: B×C×h×w}).
    """

    def __init__(self, tasks: Sequence[str], channels: int, num_levels: int):
        super().__init__()
        self.tasks = list(tasks)
        self.num_levels = num_levels
        t, c = len(self.tasks), channels
        self.share_fpn = SharedFPN(c, num_levels)
        self.mask_task = nn.ModuleList(ConvBN(c, t * t, 3) for _ in range(num_levels))
        self.feat_task = nn.ModuleList(
            nn.ModuleDict({k: task_feat_block(c) for k in self.tasks}) for _ in range(num_levels))
        self.specific_head = nn.ModuleList(
            nn.ModuleDict({k: ConvBN(c, c, 1) for k in self.tasks}) for _ in range(num_levels))
        self.fpn_mask = nn.ModuleDict({k: ConvBlock(num_levels * c, c, num_levels, k1=1, k2=3) for k in self.tasks})

    def forward(self, levels: Sequence[torch.Tensor]) -> tuple[dict, list]:
        tasks, n = self.tasks, len(self.tasks)
        clean = [{k: self.feat_task[l][k](x) for k in tasks} for l, x in enumerate(levels)]
        per_task = {k: [] for k in tasks}  # task -> L × (b c h w)
        for l, x in enumerate(levels):
            g = self.mask_task[l](self.share_fpn(x, l))  # b (T_target T_source) h w
            b, _, h, w = g.shape
            gates = torch.sigmoid(g).view(b, n, n, h, w)
            src = torch.stack([clean[l][k] for k in tasks], dim=1)  # b T_source c h w
            mixed = torch.einsum("bijhw,bjchw->bichw", gates, src)  # b T_target c h w
            for i, k in enumerate(tasks):
                per_task[k].append(self.specific_head[l][k](mixed[:, i]))
        out = {}
        for k in tasks:
            v = torch.stack(per_task[k], dim=1)  # b L c h w
            pi = torch.softmax(self.fpn_mask[k](v.flatten(1, 2)), dim=1)  # b L h w
            out[k] = (pi.unsqueeze(2) * v).sum(dim=1)
        return out, clean


class BaselineHead(nn.Module):
    """Single-pass multi-task decoder on backbone features B×(L·C)×h×w; logits at 4h×4w."""

    def __init__(self, task_infos: Mapping[str, TaskInfo], embed_dim: int, num_levels: int = 4,
                 module_layer: int = 3, with_aux: bool = True):
        super().__init__()
        self.task_infos = dict(task_infos)
        self.tasks = list(self.task_infos)
        if not self.tasks:
            raise ValueError("BaselineHead: no tasks configured")
        if module_layer < 1:
            raise ValueError(f"module_layer must be >= 1, got {module_layer}")
        c = self.embed_dim = int(embed_dim)
        self.num_levels, self.with_aux = int(num_levels), bool(with_aux)
        outs = {t: int(i.num_outputs) for t, i in self.task_infos.items()}
        if self.with_aux:
            self.aux_heads = nn.ModuleDict({
                t: nn.Sequential(ConvMLP(self.num_levels * c, c), nn.Conv2d(c, outs[t], 3, padding=1))
                for t in self.tasks})
        self.pred_heads = nn.ModuleDict({t: nn.Conv2d(c, outs[t], 3, padding=1) for t in self.tasks})
        self.encoders = nn.ModuleList(
            nn.ModuleDict({t: ConvBlock(c, c, c, residual=True) for t in self.tasks}) for _ in range(module_layer))
        self.fpn_encoder = GatedFPN(self.tasks, c, self.num_levels)
        self.fast_path = True

    def set_fast_path(self, enabled: bool = True) -> "BaselineHead":
        """Fast path (default): the last refinement layer + prediction head and the aux heads run their
        convs at the low resolution (exact rewrite, as in TaskDiffusionHead.set_fast_path); the
        reference path upsamples first and convolves the ×4 map. Same numbers. Returns self."""
        self.fast_path = bool(enabled)
        return self

    def forward(self, features: torch.Tensor, with_aux: bool = True) -> dict:
        b, ch, h, w = features.shape
        if ch != self.num_levels * self.embed_dim:
            raise ValueError(f"baseline head: features have {ch} channels, expected "
                             f"{self.num_levels}×{self.embed_dim} (levels × final_embed_dim)")
        x, clean = self.fpn_encoder(list(features.chunk(self.num_levels, dim=1)))
        size = (4 * h, 4 * w)
        last = len(self.encoders) - 1
        for layer in self.encoders[:last]:
            for t in self.tasks:
                x[t] = layer[t](x[t])
        if self.fast_path:
            out = {"pred": {t: self.encoders[last][t].forward_into_head(x[t], self.pred_heads[t], size)
                            for t in self.tasks}}
        else:
            out = {"pred": {t: self.pred_heads[t](self.encoders[last][t](upsample_bilinear(x[t], size)))
                            for t in self.tasks}}
        if with_aux and self.with_aux:
            out["aux"] = {}
            for t in self.tasks:
                y = torch.cat([p[t] for p in clean], dim=1)  # b (L c) h w
                body, head = self.aux_heads[t]
                out["aux"][t] = (body.forward_into_head(y, head, size) if self.fast_path
                                 else head(body(upsample_bilinear(y, size))))
        return out


class BaselineModel(BackboneHeadModel):
    """Backbone + BaselineHead; outputs resized to the input size (bilinear, align_corners=False)."""

    def forward(self, images: torch.Tensor, targets: Mapping[str, torch.Tensor] | None = None,
                noise: torch.Tensor | None = None, times: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> dict:
        """targets given: {'pred', 'aux'} (training format); otherwise {'pred'}. The baseline draws
        nothing: `generator` is accepted for API compatibility, noise/times are an error."""
        if noise is not None or times is not None:
            raise ValueError("the baseline model has no diffusion: noise/times cannot be injected "
                             "(model: baseline in the config; use TaskDiffusion for diffusion inputs)")
        out = self.heads(self.forward_features(images), with_aux=targets is not None)
        return self.resize_outputs(out, images.shape[-2:])


def build_baseline_model(cfg) -> BaselineModel:
    """Backbone from cfg + BaselineHead (final_embed_dim, module_layer, with_aux, TASKS.NAMES)."""
    backbone, spec = build_backbone_checked(cfg)
    heads = BaselineHead(config_task_infos(cfg), spec.out_dim,
                         num_levels=spec.num_levels, module_layer=int(cfg_get(cfg, "module_layer", 3)),
                         with_aux=bool(cfg_get(cfg, "with_aux", True)))
    return BaselineModel(backbone, heads)
