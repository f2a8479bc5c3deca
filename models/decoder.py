"""Time-conditioned blocks and the cross-task gating FPN of the TaskDiffusion joint denoiser (spec §4.2-4.7).

Module and parameter names are the original's (`conv_1`, `norm`, `time_mlp.1`, `conv_2`,
`fpn_encoder.share_fpn.fpn_conv`, `mask_task`, `feat_task`, `specific_head`, `fpn_mask`,
`transforms.conv_transforms`) so the released checkpoints load with `strict=True`.

Notation: B batch, C decoder width, L backbone levels (4), T tasks, h×w token grid, M noisy-map
channels, `temb` the B×C time embedding.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def time_mlp(time_dim: int, channels: int) -> nn.Sequential:
    """A block's FiLM projection `time_mlp`: SiLU -> Linear(C -> 2·channels) (its Linear is `time_mlp.1`)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * channels))


def film(y: torch.Tensor, temb: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    """y·(1 + scale) + shift with (scale, shift) = proj(temb) split in halves (broadcast over h, w)."""
    scale, shift = proj(temb)[:, :, None, None].chunk(2, dim=1)  # b out 1 1 each
    return y * (scale + 1) + shift


class CondConvMLP(nn.Module):
    """`conv_2(GELU(FiLM(BN(conv_1(x)))))` (+ x when residual).

    Covers the original's Conv_MLP_withtime (3×3 then 1×1, in->out), its residual form
    Conv_MLP_withtime_res (C->C) and Mask_withtime (1×1 L·C->C, then 3×3 C->L) through the kernel
    sizes and channel counts.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, time_dim: int,
                 k1: int = 3, k2: int = 1, residual: bool = False):
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError("residual CondConvMLP needs in_channels == out_channels")
        self.residual = residual
        # registration order as in the original state dicts
        self.conv_1 = nn.Conv2d(in_channels, mid_channels, k1, padding=k1 // 2)
        self.conv_2 = nn.Conv2d(mid_channels, out_channels, k2, padding=k2 // 2)
        self.norm = nn.BatchNorm2d(mid_channels)
        self.time_mlp = time_mlp(time_dim, mid_channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        y = self.conv_2(F.gelu(film(self.norm(self.conv_1(x)), temb, self.time_mlp)))
        return x + y if self.residual else y


class CondConv(nn.Module):
    """Conv_withtime: `FiLM(BN(conv_1(x)))`, k×k conv, no activation."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, kernel_size: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_channels)
        self.time_mlp = time_mlp(time_dim, out_channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return film(self.norm(self.conv_1(x)), temb, self.time_mlp)


class ConvMLP(nn.Module):
    """Conv_MLP (no time): `conv_2(GELU(BN(conv_1(x)))) + conv_3(x)`; the default aux-head body."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 1)
        self.conv_3 = nn.Conv2d(in_channels, out_channels, 1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_2(F.gelu(self.norm(self.conv_1(x)))) + self.conv_3(x)


def task_feat_block(channels: int) -> nn.Sequential:
    """TaskFeat (`feat_task.{l}.<t>`): 3×3, BN, GELU, 1×1, 3×3, BN, GELU, 1×1 (no act. between 3 and 4)."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 1),
        nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 1),
    )


class NoisyInputFusion(nn.Module):
    """Transform_withtime (`transforms.conv_transforms.{l}`): level l -> conv1×1(cat(F_l, z)), (C+M) -> C."""

    def __init__(self, channels: int, noisy_channels: int, num_levels: int):
        super().__init__()
        self.conv_transforms = nn.ModuleList(
            nn.Conv2d(channels + noisy_channels, channels, 1) for _ in range(num_levels))

    def forward(self, levels: Sequence[torch.Tensor], z: torch.Tensor) -> list[torch.Tensor]:
        # levels: L × (b c h w); z: b m h w -> L × (b c h w); feature channels come first
        return [conv(torch.cat([f, z], dim=1)) for conv, f in zip(self.conv_transforms, levels)]


class SharedNoisyFPN(nn.Module):
    """`share_fpn.fpn_conv.{l}.{0,1}`: two CondConvMLP(C, C) per level on the fused noisy features."""

    def __init__(self, channels: int, time_dim: int, num_levels: int):
        super().__init__()
        self.fpn_conv = nn.ModuleList(
            nn.ModuleList(CondConvMLP(channels, channels, channels, time_dim) for _ in range(2))
            for _ in range(num_levels))

    def forward(self, x: torch.Tensor, temb: torch.Tensor, level: int) -> torch.Tensor:
        convs = self.fpn_conv[level]
        return convs[1](convs[0](x, temb), temb)


class CrossTaskFPN(nn.Module):
    """`fpn_encoder`: cross-task gating per level, then per-task softmax fusion of the levels (§4.7 2-4).

    The clean per-task features P (`feat_task`) are built by the head (`clean_task_features`) so
    subclasses can swap that module; this class only owns `feat_task` as a container, built by
    `feat_task_factory(level)`.
    """

    def __init__(self, tasks: Sequence[str], channels: int, time_dim: int, num_levels: int,
                 feat_task_factory: Callable[[int], nn.Module]):
        super().__init__()
        self.tasks = list(tasks)
        self.num_levels = num_levels
        t, c = len(self.tasks), channels
        self.share_fpn = SharedNoisyFPN(c, time_dim, num_levels)
        self.mask_task = nn.ModuleList(CondConv(c, t * t, time_dim, 3) for _ in range(num_levels))
        self.feat_task = nn.ModuleList(feat_task_factory(l) for l in range(num_levels))
        self.specific_head = nn.ModuleList(
            nn.ModuleDict({k: CondConv(c, c, time_dim, 1) for k in self.tasks}) for _ in range(num_levels))
        self.fpn_mask = nn.ModuleDict({
            k: CondConvMLP(num_levels * c, c, num_levels, time_dim, k1=1, k2=3) for k in self.tasks})

    def forward(self, fused: Sequence[torch.Tensor], temb: torch.Tensor,
                clean: Sequence[dict]) -> dict[str, torch.Tensor]:
        """fused: L × (b c h w) noisy-conditioned features; clean: L × {task: b c h w} -> {task: b c h w}."""
        tasks, n = self.tasks, len(self.tasks)
        per_task = {k: [] for k in tasks}  # task -> L × (b c h w)
        for l in range(self.num_levels):
            s = self.share_fpn(fused[l], temb, l)
            g = self.mask_task[l](s, temb)  # b (T_target T_source) h w
            b, _, h, w = g.shape
            gates = torch.sigmoid(g).view(b, n, n, h, w)
            src = torch.stack([clean[l][k] for k in tasks], dim=1)  # b T_source c h w
            mixed = torch.einsum("bijhw,bjchw->bichw", gates, src)  # b T_target c h w
            for i, k in enumerate(tasks):
                per_task[k].append(self.specific_head[l][k](mixed[:, i], temb))
        out = {}
        for k in tasks:
            v = torch.stack(per_task[k], dim=1)  # b L c h w
            pi = torch.softmax(self.fpn_mask[k](v.flatten(1, 2), temb), dim=1)  # b L h w
            out[k] = (pi.unsqueeze(2) * v).sum(dim=1)
        return out
