"""Mixture of low-rank experts (MLoRE) for the TaskDiffusion decoder (docs/method.md#mlore-variant).

The MLoRE variant replaces the clean per-task feature branch of the decoder (`TaskFeat`, docs/method.md#time-conditioned-blocks)
by two stacked MoE blocks per backbone level and the auxiliary head body by a level-mixing module,
and exports the routing probabilities for the load-balancing loss (docs/method.md#load-balancing-loss).

Module and parameter names follow the original checkpoints exactly (`lora_list_1`, `router_1`,
`share_conv`, ...) so the released weights load with `strict=True` after the `module.` prefix is
stripped.

This file holds the building blocks (LoRA, SpatialAtt, MOEBlock, MoEStack, FpnAux, RouterNoise)
and, at the bottom, `build_mlore_model(cfg)`, which plugs them into the TaskDiffusion head through
its overridable hooks.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Sizes the original fixes in code (docs/method.md#moe-block, golden README "Sizes the original fixes").
LOW_RANK_BRANCH_RANK = 72  # rank of the per-task `conv2` LoRA
EXPERT_KERNEL_SIZE = 3  # kernel of the expert `W` convs and of `share_conv`
BLOCKS_PER_LEVEL = 2  # `feat_task.{l}.{0,1}`


# --------------------------------------------------------------------------------------------------
# Router noise: where the train-mode gate noise comes from
# --------------------------------------------------------------------------------------------------


def noise_key(level: int, task: str, block: int) -> str:
    """Canonical name of one router-noise draw, as in the golden file's `train_router_noise_order`."""
    return f"level{level}/{task}/block{block}"


def canonical_noise_order(num_levels: int, tasks: Sequence[str], blocks: int = BLOCKS_PER_LEVEL) -> list:
    """The order in which the original draws router noise: level, then task, then block."""
    return [noise_key(l, t, b) for l in range(num_levels) for t in tasks for b in range(blocks)]


class RouterNoise:
    """Supplies the N(0, 1) noise that train-mode routers add to their gate logits.

    Why: the original draws `torch.randn((B, n_experts, 1, 1, 1))` from the global RNG once per
    expert-block call. For parity tests and reproducible runs the draws must be injectable.

    source may be
      * None: draw `torch.randn(shape, generator=generator)` on the tensor's device (the global RNG
        when generator is None, exactly as the original);
      * a mapping `{noise_key(level, task, block): tensor}`;
      * a sequence of tensors in the original's draw order (`canonical_noise_order`), in which case
        `order` (the list of keys) must be given so each tensor is found by its key;
      * a callable `(key, shape, device, dtype) -> tensor`.
    """

    def __init__(self, source=None, order: Sequence[str] | None = None,
                 generator: torch.Generator | None = None):
        self.generator = generator
        self._fn: Callable | None = None
        self._table: Mapping[str, torch.Tensor] | None = None
        if source is None:
            pass
        elif callable(source):
            self._fn = source
        elif isinstance(source, Mapping):
            self._table = dict(source)
        elif isinstance(source, Sequence):
            if order is None:
                raise ValueError("RouterNoise: a list of noise tensors needs `order`, the key of each "
                                 "entry (see canonical_noise_order(num_levels, tasks))")
            if len(order) != len(source):
                raise ValueError(f"RouterNoise: {len(source)} noise tensors but {len(order)} keys in order")
            self._table = dict(zip(order, source))
        else:
            raise TypeError(f"RouterNoise: unsupported source type {type(source).__name__}")

    def __call__(self, key: str, shape, device, dtype) -> torch.Tensor:
        if self._fn is not None:
            noise = self._fn(key, shape, device, dtype)
        elif self._table is not None:
            if key not in self._table:
                raise KeyError(f"RouterNoise: no noise given for {key!r}; have {sorted(self._table)[:4]}...")
            noise = self._table[key]
        else:
            # A generator lives on one device: draw there, then move (keeps CPU generators usable).
            gen_device = self.generator.device if self.generator is not None else device
            noise = torch.randn(tuple(shape), generator=self.generator, device=gen_device, dtype=dtype)
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"RouterNoise: noise for {key!r} has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return noise.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class LoRA(nn.Module):
    """Low-rank conv `M(W(x))`: k×k conv in→r, then 1×1 conv r→out, no activation (docs/method.md#low-rank-experts)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rank: int):
        super().__init__()
        self.rank = rank
        self.W = nn.Conv2d(in_channels, rank, kernel_size, padding=kernel_size // 2)
        self.M = nn.Conv2d(rank, out_channels, 1)

    def reset_expert_parameters(self) -> None:
        """The shared experts' init (original `init_weights`): kaiming-uniform(a=√5) weights, zero biases."""
        for conv in (self.W, self.M):
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # b c h w -> b out h w
        return self.M(self.W(x))


class SpatialAtt(nn.Module):
    """Router feature (docs/method.md#router): a channel branch pooled over space and a learned spatial pooling.

    y: B×C×h×w -> B×(2·(C//4))×1×1.

    The spatial branch applies `convsp = Linear(spatial_size -> 1)` to the flattened token grid, so
    the router only works at the token count it was built for. `resize_to=(h, w)` (opt-in, not the
    original) resizes the router's input to that grid first, so the model also runs at other input
    sizes; the expert branch itself is unaffected.
    """

    def __init__(self, channels: int, reduced: int, spatial_size: int,
                 resize_to: tuple[int, int] | None = None):
        super().__init__()
        if resize_to is not None and resize_to[0] * resize_to[1] != spatial_size:
            raise ValueError(f"SpatialAtt: resize_to {tuple(resize_to)} has {resize_to[0] * resize_to[1]} "
                             f"cells but spatial_size is {spatial_size}")
        self.spatial_size = spatial_size
        self.resize_to = tuple(resize_to) if resize_to is not None else None
        self.conv1 = nn.Conv2d(channels, reduced, 1)
        self.ln = nn.LayerNorm(reduced)
        self.conv3 = nn.Conv2d(reduced, reduced, 1)
        self.convsp = nn.Linear(spatial_size, 1)
        self.ln_sp = nn.LayerNorm(channels)
        self.conv2 = nn.Conv2d(channels, reduced, 1)

    def _spatial_input(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        if h * w == self.spatial_size:
            return y
        if self.resize_to is None:
            raise ValueError(
                f"MLoRE router: the token grid is {h}x{w} = {h * w} tokens but the router was built for "
                f"spatial_size = {self.spatial_size} (its Linear runs over the flattened grid, so MLoRE is "
                f"a fixed-size model). Use an input of the configured size (spatial_size = (H/s)*(W/s), s the "
                f"decoder stride), or set `mlore_router_resize: true` in the config to resize the router input to the "
                f"configured grid (not the original's behaviour).")
        down = h * w > self.spatial_size
        return F.interpolate(y, size=self.resize_to, mode="bilinear", align_corners=False, antialias=down)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        ys = self._spatial_input(y)  # checked first: a clear message before any shape error
        # channel branch: per-pixel LN over channels, then mean over space
        a = self.conv1(y)  # b r h w
        a = self.ln(a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        a = self.conv3(F.gelu(a)).mean(dim=(2, 3), keepdim=True)  # b r 1 1
        # spatial branch: learned weighted pooling over the flattened grid
        s = self.convsp(ys.flatten(2))  # b c (h w) -> b c 1
        s = F.gelu(self.ln_sp(s.transpose(1, 2)))  # b 1 c
        s = self.conv2(s.transpose(1, 2).unsqueeze(-1))  # b c 1 1 -> b r 1 1
        return torch.cat([a, s], dim=1)  # b 2r 1 1


def keep_topk(p: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the k largest entries along dim 1, without renormalising (docs/method.md#moe-block step 4)."""
    if k >= p.shape[1]:
        return p
    idx = p.topk(k, dim=1).indices
    mask = torch.zeros_like(p).scatter_(1, idx, 1.0)
    return p * mask


class MOEBlock(nn.Module):
    """One MoE block shared by all tasks, with task-specific router, BNs and low-rank branch (docs/method.md#moe-block).

    forward(x, task) on x: B×C×h×w returns (out B×C×h×w, route feature B×(C/2)×1×1,
    gate values p B×n×1×1×1 after the top-k cut; n = len(rank_list), 15 in every paper config).
    """

    def __init__(self, tasks: Sequence[str], channels: int, spatial_size: int, rank_list: Sequence[int],
                 topk: int, kernel_size: int = EXPERT_KERNEL_SIZE, low_rank: int = LOW_RANK_BRANCH_RANK,
                 router_resize_to: tuple[int, int] | None = None, fused_experts: bool = True):
        super().__init__()
        rank_list = [int(r) for r in rank_list]
        if not rank_list:
            raise ValueError("MOEBlock: rank_list is empty (the paper configs use 15 ranks)")
        if not 1 <= topk <= len(rank_list):
            raise ValueError(f"MOEBlock: topk must be in 1..{len(rank_list)}, got {topk}")
        self.tasks = list(tasks)
        self.num_experts = len(rank_list)
        self.topk = int(topk)
        self.fused_experts = fused_experts
        c, k = channels, kernel_size
        reduced = channels // 4
        # Registration order follows the original's state-dict order.
        self.lora_list_1 = nn.ModuleList(LoRA(c, c, k, r) for r in rank_list)
        self.conv1 = nn.ModuleDict({t: nn.Conv2d(c, c, 1) for t in self.tasks})
        self.conv2 = nn.ModuleDict({t: LoRA(c, c, k, low_rank) for t in self.tasks})
        self.conv3 = nn.ModuleDict({t: nn.Conv2d(c, c, 1) for t in self.tasks})
        self.share_conv = nn.Conv2d(c, c, k, padding=k // 2)
        self.bn = nn.ModuleDict({t: nn.BatchNorm2d(c) for t in self.tasks})
        self.bn_all = nn.ModuleDict({t: nn.BatchNorm2d(c) for t in self.tasks})
        # router output: n gate logits | n noise scales | 1 mixing scalar for the low-rank branch
        self.router_1 = nn.ModuleDict({
            t: nn.Sequential(SpatialAtt(c, reduced, spatial_size, router_resize_to),
                             nn.Conv2d(2 * reduced, 2 * self.num_experts + 1, 1))
            for t in self.tasks})
        for lora in self.lora_list_1:
            lora.reset_expert_parameters()

    # -- routing -------------------------------------------------------------------------------
    def route(self, y: torch.Tensor, task: str, noise: torch.Tensor | None = None):
        """Gate values for one task: returns (route feature, p B×n×1×1×1, mu B×1×1×1).

        noise (B×n×1×1×1, standard normal) is used only in training mode; it is scaled by the
        router's raw per-expert std before the softmax (as the original: no positivity constraint).
        """
        n = self.num_experts
        feat = self.router_1[task][0](y)  # b c/2 1 1
        q = self.router_1[task][1](feat)  # b (2n+1) 1 1
        logits = q[:, :n].unsqueeze(-1)  # b n 1 1 1
        if self.training:
            if noise is None:
                noise = torch.randn(logits.shape, device=logits.device, dtype=logits.dtype)
            logits = logits + noise * q[:, n:2 * n].unsqueeze(-1)
        p = keep_topk(torch.softmax(logits, dim=1), self.topk)
        mu = q[:, 2 * n:]  # b 1 1 1
        return feat, p, mu

    # -- experts -------------------------------------------------------------------------------
    def mix_experts(self, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Σ_i p_i · lora_i(y) for per-sample weights p (B×n×1×1×1)."""
        if not self.fused_experts:
            out = 0
            for i, lora in enumerate(self.lora_list_1):
                out = out + p[:, i] * lora(y)
            return out
        # Fused form of the same sum: Σ_i M_i(p_i·W_i(y)) + Σ_i p_i·b_Mi, i.e. one k×k conv to all
        # ranks at once, a per-sample scale of each expert's rank slice, one 1×1 conv back. Same
        # numbers up to summation order, 2 convs instead of 2n.
        loras = self.lora_list_1
        w_in = torch.cat([l.W.weight for l in loras])  # R c k k
        b_in = torch.cat([l.W.bias for l in loras])  # R
        w_out = torch.cat([l.M.weight for l in loras], dim=1)  # c R 1 1
        b_out = torch.stack([l.M.bias for l in loras])  # n c
        ranks = torch.tensor([l.rank for l in loras], device=y.device)
        pw = p.flatten(1)  # b n
        hidden = F.conv2d(y, w_in, b_in, padding=loras[0].W.padding)  # b R h w
        hidden = hidden * pw.repeat_interleave(ranks, dim=1)[:, :, None, None]
        bias = pw @ b_out  # b c
        return F.conv2d(hidden, w_out) + bias[:, :, None, None]

    def forward(self, x: torch.Tensor, task: str, noise: torch.Tensor | None = None):
        y = self.conv1[task](x)  # b c h w
        feat, p, mu = self.route(y, task, noise)
        moe = self.mix_experts(y, p)
        # the shared conv sees a detached input: it does not train the task-specific conv1
        o = self.bn_all[task](moe) + mu * self.conv2[task](y) + self.share_conv(y.detach())
        out = self.conv3[task](F.gelu(self.bn[task](o)))
        return out, feat, p


class MoEStack(nn.ModuleList):
    """The clean task-feature module of one level: `feat_task.{l}.{0,1}`, two MOEBlocks in series.

    forward(x, task, level, noise_fn) -> (feature B×C×h×w, [p_block0, p_block1]).
    noise_fn(key, shape, device, dtype) supplies train-mode router noise (see RouterNoise).
    """

    def __init__(self, tasks, channels, spatial_size, rank_list, topk, blocks: int = BLOCKS_PER_LEVEL,
                 **kwargs):
        super().__init__(MOEBlock(tasks, channels, spatial_size, rank_list, topk, **kwargs)
                         for _ in range(blocks))

    def forward(self, x: torch.Tensor, task: str, level: int = 0, noise_fn: Callable | None = None):
        probs = []
        for j, block in enumerate(self):
            noise = None
            if block.training:
                shape = (x.shape[0], block.num_experts, 1, 1, 1)
                noise = (noise_fn or RouterNoise())(noise_key(level, task, j), shape, x.device, x.dtype)
            x, _, p = block(x, task, noise)
            probs.append(p)
        return x, probs


class FpnAux(nn.Module):
    """Auxiliary head body of the MLoRE variant (docs/method.md#mlore-auxiliary-head): softmax mixing of the L levels.

    Y: B×(L·C)×H×W (levels concatenated level-major) -> B×C×H×W = Σ_l π_l · Y_l.
    """

    def __init__(self, channels: int, num_levels: int = 4):
        super().__init__()
        self.num_levels = num_levels
        self.task_mask = nn.Sequential(
            nn.Conv2d(num_levels * channels, channels, 1),
            nn.BatchNorm2d(channels),
            nn.GELU(),
            nn.Conv2d(channels, num_levels, 3, padding=1),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        b, _, h, w = y.shape
        pi = torch.softmax(self.task_mask(y), dim=1)  # b l h w
        levels = y.view(b, self.num_levels, -1, h, w)  # b l c h w
        return (pi.unsqueeze(2) * levels).sum(dim=1)


# --------------------------------------------------------------------------------------------------
# The MLoRE head and model (docs/method.md#mlore-decoder-changes)
# --------------------------------------------------------------------------------------------------

from models.taskdiffusion import (TaskDiffusion, TaskDiffusionHead, build_backbone_checked,  # noqa: E402
                                  build_taskdiffusion_model)
from utils.config import cfg_get  # noqa: E402
from utils.config_schema import DEFAULT_DECODER_STRIDE  # noqa: E402


class MLoREHead(TaskDiffusionHead):
    """TaskDiffusion head with MoE clean-feature branch and level-mixing aux bodies (docs/method.md#mlore-variant).

    Differences from the parent, all through its hooks:
      * `fpn_encoder.feat_task.{l}` is a MoEStack (`feat_task.{l}.{0,1}`, two MOEBlocks);
      * `aux_heads.<t>.0` is FpnAux;
      * the training output gains `route`: {'route_1_prob': L × {task: B×n×1×1×1},
        'route_2_prob': ...}, the gate values after the top-k cut of block 0 / block 1 of each level.

    Extra keyword argument of forward_train / sample / the model: `router_noise`, the train-mode
    gate noise (anything RouterNoise accepts; a list is read in `canonical_noise_order`). Without
    it the noise is drawn from `generator` (or the global RNG) after the diffusion draws, in the
    original's order.
    """

    def __init__(self, *, rank_list: Sequence[int], topk: int, spatial_size: int,
                 router_resize_to: tuple[int, int] | None = None, fused_experts: bool = True, **kwargs):
        # plain attributes, read by the hooks that the parent's __init__ calls
        self.moe_kwargs = dict(spatial_size=int(spatial_size), rank_list=[int(r) for r in rank_list],
                               topk=int(topk), router_resize_to=router_resize_to, fused_experts=fused_experts)
        super().__init__(**kwargs)

    def build_feat_task(self, level: int) -> nn.Module:
        return MoEStack(self.tasks, self.embed_dim, **self.moe_kwargs)

    def build_aux_body(self, task: str) -> nn.Module:
        return FpnAux(self.embed_dim, self.num_levels)

    def noise_order(self) -> list:
        """Keys of the router-noise draws of one forward, in draw order."""
        return canonical_noise_order(self.num_levels, self.tasks, BLOCKS_PER_LEVEL)

    def clean_task_features(self, levels: Sequence[torch.Tensor], generator: torch.Generator | None = None,
                            router_noise=None, **hook_kwargs):
        """P[l][t] = MOE_{l,1}(MOE_{l,0}(F_l, t), t), looping level, task, block as the original does
        (which fixes the order of the global-RNG router draws)."""
        if hook_kwargs:
            raise TypeError(f"MLoREHead got unexpected arguments {sorted(hook_kwargs)}")
        noise_fn = router_noise if isinstance(router_noise, RouterNoise) else \
            RouterNoise(router_noise, order=self.noise_order(), generator=generator)
        clean, route_1, route_2 = [], [], []
        for l, x in enumerate(levels):
            feats, p1, p2 = {}, {}, {}
            for t in self.tasks:
                feats[t], (p1[t], p2[t]) = self.fpn_encoder.feat_task[l](x, t, level=l, noise_fn=noise_fn)
            clean.append(feats)
            route_1.append(p1)
            route_2.append(p2)
        return clean, {"route": {"route_1_prob": route_1, "route_2_prob": route_2}}


def mlore_head_kwargs(cfg, router_resize: bool | None = None, decoder_stride: int | None = None) -> dict:
    """MLoREHead's extra arguments from a config (rank_list, topk, spatial_size, router resize).

    decoder_stride: s of the built backbone's declaration (models/backbones.py); the router's token grid
    is (H/s)×(W/s). None: the config's decoder_stride (DEFAULT_DECODER_STRIDE, the paper ViTs', when unset)."""
    rank_list, topk = cfg_get(cfg, "rank_list"), cfg_get(cfg, "topk")
    if rank_list is None or topk is None:
        raise ValueError("model TaskDiffusion_mlore needs rank_list (15 expert ranks, paper PASCAL "
                         "[16, 24, ..., 128]) and topk (experts kept per sample, paper PASCAL 3, NYUD 4)")
    train = cfg_get(cfg, "TRAIN")
    scale = cfg_get(train, "SCALE") if train is not None else None
    if scale is None:
        raise ValueError("config has no TRAIN.SCALE (the network input size [H, W])")
    s = int(decoder_stride if decoder_stride is not None else cfg_get(cfg, "decoder_stride", DEFAULT_DECODER_STRIDE))
    grid = (int(scale[0]) // s, int(scale[1]) // s)
    spatial_size = cfg_get(cfg, "spatial_size")
    spatial_size = grid[0] * grid[1] if spatial_size is None else int(spatial_size)
    if spatial_size != grid[0] * grid[1]:
        raise ValueError(f"spatial_size {spatial_size} must equal the token count h*w = {grid[0]}*{grid[1]} = "
                         f"{grid[0] * grid[1]} of the {scale[0]}x{scale[1]} input: the MLoRE router applies a "
                         f"Linear over the flattened token grid. Set spatial_size to that value (or null).")
    if router_resize is None:
        router_resize = bool(cfg_get(cfg, "mlore_router_resize", False))
    return dict(rank_list=rank_list, topk=int(topk), spatial_size=spatial_size,
                router_resize_to=grid if router_resize else None)


def build_mlore_model(cfg, router_resize: bool | None = None, **extra_head_kwargs) -> TaskDiffusion:
    """ViT backbone + MLoREHead from a config with model: TaskDiffusion_mlore.

    MLoRE is a fixed-size model: the router needs exactly spatial_size tokens. `router_resize=True`
    (or the config key `mlore_router_resize: true`) lets it run at other input sizes by resizing the
    router's input to the configured grid; this is not the original's behaviour and off by default.
    """
    backbone, spec = build_backbone_checked(cfg)
    return build_taskdiffusion_model(cfg, head_cls=MLoREHead, backbone=(backbone, spec),
                                     **mlore_head_kwargs(cfg, router_resize, spec.decoder_stride),
                                     **extra_head_kwargs)
