"""Time-conditioned blocks and the cross-task gating FPN of the TaskDiffusion joint denoiser (docs/method.md#time-conditioned-blocks, #decoder-core).

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

from models.diffusion import upsample_bilinear


def time_mlp(time_dim: int, channels: int) -> nn.Sequential:
    """A block's FiLM projection `time_mlp`: SiLU -> Linear(C -> 2·channels) (its Linear is `time_mlp.1`)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * channels))


def film(y: torch.Tensor, temb: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    """y·(1 + scale) + shift with (scale, shift) = proj(temb) split in halves (broadcast over h, w)."""
    scale, shift = proj(temb)[:, :, None, None].chunk(2, dim=1)  # b out 1 1 each
    return y * (scale + 1) + shift


class StackMemo:
    """Per-call cache of stacked weights for grouped ops (`stacked`): built on first use in a forward or
    sampling call, from the live parameters (gradients flow back into each block's own tensors)."""

    def __init__(self):
        self.memo: dict = {}

    def stacked(self, key, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


class FilmParams(StackMemo):
    """The FiLM projections (and, in eval mode, the BatchNorms) of many blocks, concatenated once.

    Why: every time-conditioned block computes Linear(SiLU(temb)) for its own scale/shift: ~50 tiny
    matmuls per DDIM step on the same input, plus BN and three elementwise passes over the block's
    big output. With all projections stacked (scales of every block, then shifts) one matmul per step
    gives every block's coefficients (`FilmTable`), and in eval mode the BatchNorm (running stats)
    and the conv bias fold into them, so a block's BN + FiLM is a single multiply-add
    `a·A + B` on the bias-free conv output. Built from the live parameters on every call (gradients
    flow into each block's own Linear); `blocks[i].film_slot` must be i (the head assigns it).
    """

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.sizes = [int(b.norm.num_features) for b in blocks]
        lins = [b.time_mlp[1] for b in blocks]
        self.weight = torch.cat([l.weight[:n] for l, n in zip(lins, self.sizes)]
                                + [l.weight[n:] for l, n in zip(lins, self.sizes)])  # (2 Σout) time_dim
        self.bias = torch.cat([l.bias[:n] for l, n in zip(lins, self.sizes)]
                              + [l.bias[n:] for l, n in zip(lins, self.sizes)])
        self.offsets = [0]
        for n in self.sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.fold = all(type(b.norm) is nn.BatchNorm2d and not b.norm.training and b.norm.running_var is not None
                        and b.norm.affine and b.conv_1.bias is not None for b in blocks)
        if self.fold:  # BN(a0 + bias) = a0·inv + (beta + (bias - mean)·inv), for all blocks at once
            cat = lambda get: torch.cat([get(b) for b in blocks])  # noqa: E731
            eps = {float(b.norm.eps) for b in blocks}
            eps = eps.pop() if len(eps) == 1 else cat(lambda b: torch.full_like(b.norm.running_var, b.norm.eps))
            self.inv = cat(lambda b: b.norm.weight) * torch.rsqrt(cat(lambda b: b.norm.running_var) + eps)
            self.shift0 = cat(lambda b: b.norm.bias) + (cat(lambda b: b.conv_1.bias)
                                                        - cat(lambda b: b.norm.running_mean)) * self.inv

    def table(self, temb: torch.Tensor) -> "FilmTable":
        return FilmTable(self, temb)



class FilmTable:
    """Per-step FiLM coefficients of the blocks of a FilmParams, for one time embedding temb (b × time_dim).

    `coeffs(block)` -> (A, B), each b×out×1×1: the block computes `BN(conv)·(1 + scale) + shift` as
    `addcmul(B, a, A)` where a is the conv output with bias (`folded` False: A = 1 + scale, B = shift,
    BN applied by the block) or without bias and BN (`folded` True: eval-mode BN folded in).
    """

    def __init__(self, params: FilmParams, temb: torch.Tensor):
        n = sum(params.sizes)
        ss = F.linear(F.silu(temb), params.weight, params.bias)  # b (2 Σout)
        a, b = ss[:, :n] + 1, ss[:, n:]
        if params.fold:
            a, b = params.inv * a, params.shift0 * a + b
        dev = temb.device.type
        if torch.is_autocast_enabled(dev):  # cast once here, not once per block
            a, b = a.to(torch.get_autocast_dtype(dev)), b.to(torch.get_autocast_dtype(dev))
        self.folded = params.fold
        self.params = params
        self.a_all, self.b_all = a[:, :, None, None], b[:, :, None, None]  # b (Σout) 1 1
        self.a = self.a_all.split(params.sizes, dim=1)  # slots × (b out 1 1)
        self.b = self.b_all.split(params.sizes, dim=1)

    def coeffs(self, block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        i = block.film_slot
        return self.a[i], self.b[i]

    def group_coeffs(self, blocks: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of several blocks side by side, b (Σ out) 1 1: a view when their slots are consecutive
        (the head orders the slots so that every grouped op's blocks are), else one concatenation."""
        slots = [b.film_slot for b in blocks]
        if slots == list(range(slots[0], slots[0] + len(slots))):
            lo, hi = self.params.offsets[slots[0]], self.params.offsets[slots[-1] + 1]
            return self.a_all[:, lo:hi], self.b_all[:, lo:hi]
        return torch.cat([self.a[i] for i in slots], dim=1), torch.cat([self.b[i] for i in slots], dim=1)


def conv_bn_film(block: nn.Module, x: torch.Tensor, temb, upsample_to: Sequence[int] | None = None) -> torch.Tensor:
    """FiLM(BN(conv_1(up(x)))) of a time-conditioned block, for a tensor temb (the plain formula) or a
    FilmTable (one multiply-add on the conv output). `upsample_to`: bilinear ×-upsampling before the
    3×3 conv_1, computed at the low resolution (conv3x3_of_upsampled)."""
    conv = block.conv_1
    if not isinstance(temb, FilmTable):
        a = conv(x) if upsample_to is None else conv3x3_of_upsampled(x, conv.weight, conv.bias, upsample_to)
        return film(block.norm(a), temb, block.time_mlp)
    bias = None if temb.folded else conv.bias
    if upsample_to is None:
        a = F.conv2d(x, conv.weight, bias, conv.stride, conv.padding)
    else:
        a = conv3x3_of_upsampled(x, conv.weight, bias, upsample_to, memo=temb.params)
    if not temb.folded:
        a = block.norm(a)
    ca, cb = temb.coeffs(block)
    return torch.addcmul(cb.to(a.dtype), a, ca.to(a.dtype))  # .to: no-op unless autocast is off mid-way


# --------------------------------------------------------------------------------------------------
# Grouped ops: the same block shape for every task (or level) run as one op over the stacked inputs
# --------------------------------------------------------------------------------------------------
#
# Why: at the paper's batch of 2 a GPU decoder is launch-bound; every task (and level) running its own
# small conv, norm and FiLM one after the other is ~5x the kernels the math needs. Blocks with the same
# shapes run as one grouped convolution (weights concatenated per call, `FilmParams.stacked`), one
# BatchNorm over the stacked channels (per-channel maths, so the same statistics; running statistics
# written back to every block's own buffers) and one FiLM multiply-add. Layout: b (G c) h w, group-major.


def same_shapes(mods: Sequence[nn.Module], *attrs: str) -> bool:
    """Whether the blocks' sub-modules `attrs` have identical types, shapes and conv settings."""
    def sig(m):
        out = []
        for a in attrs:
            sub = m.get_submodule(a)
            if isinstance(sub, nn.Conv2d):
                out.append((type(sub), tuple(sub.weight.shape), sub.stride, sub.padding, sub.dilation, sub.groups,
                            sub.padding_mode, sub.bias is not None))
            elif isinstance(sub, nn.BatchNorm2d):
                out.append((type(sub), sub.num_features, sub.eps, sub.momentum, sub.affine,
                            sub.track_running_stats, sub.training))
            else:
                out.append((type(sub),))
        return tuple(out)
    first = sig(mods[0])
    return all(sig(m) == first for m in mods[1:])


def grouped_conv(convs: Sequence[nn.Conv2d], x: torch.Tensor, memo: StackMemo, bias: bool = True,
                 groups_in: int | None = None) -> torch.Tensor:
    """Each conv on its own channel group of x: b (G ci) h w -> b (G co) h w, one convolution.

    groups_in: the number of input groups when several convs read the same input group (e.g. every task's
    first conv reading its level: G = L·T convs, groups_in = L); default one input group per conv."""
    key = tuple(id(c) for c in convs)
    w = memo.stacked(("w",) + key, lambda: torch.cat([c.weight for c in convs]))
    b = memo.stacked(("b",) + key, lambda: torch.cat([c.bias for c in convs])) \
        if bias and convs[0].bias is not None else None
    c0 = convs[0]
    return F.conv2d(x, w, b, c0.stride, c0.padding, c0.dilation, groups_in or len(convs))


def grouped_batch_norm(norms: Sequence[nn.BatchNorm2d], x: torch.Tensor, memo: StackMemo) -> torch.Tensor:
    """Every BatchNorm on its own channels of x (b (G c) h w) as one batch_norm over the stack.

    Training mode: batch statistics per channel (the same maths as G separate norms) and the running
    statistics of the stack written back into each norm's own buffers (one foreach copy); eval: the
    concatenated running statistics."""
    key = tuple(id(n) for n in norms)
    n0 = norms[0]
    w = memo.stacked(("bn_w",) + key, lambda: torch.cat([n.weight for n in norms])) if n0.affine else None
    b = memo.stacked(("bn_b",) + key, lambda: torch.cat([n.bias for n in norms])) if n0.affine else None
    train = n0.training or n0.running_mean is None
    if n0.running_mean is None:
        return F.batch_norm(x, None, None, w, b, True, 0.0, n0.eps)
    if not train:
        rm = memo.stacked(("bn_rm",) + key, lambda: torch.cat([n.running_mean for n in norms]))
        rv = memo.stacked(("bn_rv",) + key, lambda: torch.cat([n.running_var for n in norms]))
        return F.batch_norm(x, rm, rv, w, b, False, 0.0, n0.eps)
    rm = torch.cat([n.running_mean for n in norms])
    rv = torch.cat([n.running_var for n in norms])
    y = F.batch_norm(x, rm, rv, w, b, True, n0.momentum, n0.eps)
    with torch.no_grad():
        sizes = [n.num_features for n in norms]
        torch._foreach_copy_([n.running_mean for n in norms], list(rm.split(sizes)))
        torch._foreach_copy_([n.running_var for n in norms], list(rv.split(sizes)))
        torch._foreach_add_([n.num_batches_tracked for n in norms], 1)
    return y


def grouped_conv_bn_film(blocks: Sequence[nn.Module], x: torch.Tensor, table: "FilmTable",
                         groups_in: int | None = None) -> torch.Tensor:
    """conv_bn_film of G same-shape blocks, block g on channel group g of x: b (G ci) h w -> b (G co) h w."""
    memo = table.params
    a = grouped_conv([b.conv_1 for b in blocks], x, memo, bias=not table.folded, groups_in=groups_in)
    if not table.folded:
        a = grouped_batch_norm([b.norm for b in blocks], a, memo)
    ca, cb = table.group_coeffs(blocks)
    return torch.addcmul(cb.to(a.dtype), a, ca.to(a.dtype))


def grouped_cond_mlp(blocks: Sequence["CondConvMLP"], x: torch.Tensor, table: "FilmTable") -> torch.Tensor:
    """CondConvMLP.forward of G same-shape blocks on the channel groups of x (residual when they are)."""
    y = grouped_conv([b.conv_2 for b in blocks], F.gelu(grouped_conv_bn_film(blocks, x, table)), table.params)
    return x + y if blocks[0].residual else y


def groupable(blocks: Sequence[nn.Module], table) -> bool:
    """Whether a list of CondConv / CondConvMLP blocks can run as one grouped op with this FiLM table."""
    if not isinstance(table, FilmTable) or len(blocks) < 1 or any(type(b) is not type(blocks[0]) for b in blocks):
        return False
    attrs = ("conv_1", "norm") + (("conv_2",) if isinstance(blocks[0], CondConvMLP) else ())
    return (all(type(b.norm) is nn.BatchNorm2d and b.norm.momentum is not None for b in blocks)
            and same_shapes(blocks, *attrs))


# --------------------------------------------------------------------------------------------------
# Exact rewrites used by the fast path (same numbers as the plain forward up to float rounding)
# --------------------------------------------------------------------------------------------------
#
# Why: the decoder's biggest convolutions run right after a ×4 bilinear upsampling (the last
# refinement layer and every auxiliary head), i.e. on 16× more pixels than the information they
# carry. A k×k convolution is a sum of per-tap channel mixes W_k; a channel mix commutes with any
# spatial linear map, and bilinear weights sum to 1, so
#     conv3x3(up(x), W, b) = b + Σ_k shift_k( up( W_k x ) )        (zero padding = zero shift fill)
# : the channel mixing runs at the low resolution (16× fewer MACs) and only cheap per-channel
# upsampling, shifting and adding happen at the high resolution. Same for a 1×1 conv: it commutes
# with the upsampling. Intermediates are kept in float32 under autocast (the plain conv accumulates
# in float32 too), so bf16 loses nothing extra.


def bilinear_matrix(n_in: int, n_out: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The n_out×n_in matrix of 1-D bilinear resizing as F.interpolate computes it (align_corners=False,
    size given): src = max((dst + 0.5)·n_in/n_out - 0.5, 0), weights (1 - λ, λ) on floor(src) and the
    next index (clamped at the border)."""
    dst = torch.arange(n_out, dtype=torch.float64, device=device)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    lam = src - i0.to(torch.float64)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    m = torch.zeros(n_out, n_in, dtype=torch.float64, device=device)
    rows = torch.arange(n_out, device=device)
    m.index_put_((rows, i0), 1.0 - lam, accumulate=True)
    m.index_put_((rows, i1), lam, accumulate=True)
    return m.to(dtype)


def shifted_taps(m: torch.Tensor, taps: int = 3) -> torch.Tensor:
    """[M_0 | M_1 | M_2] with M_k[i] = M[i + k - 1] (zero rows outside): n_out × (taps·n_in).

    Resize-then-shift as one matrix: a 3-tap cross-correlation after the resize reads output row
    i + k - 1 for tap k, and the conv's zero padding is the zero row.
    """
    pad = F.pad(m, (0, 0, 1, 1))  # one zero row above and below
    n = m.shape[0]
    return torch.cat([pad[k:k + n] for k in range(taps)], dim=1)


def conv3x3_of_upsampled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         size: Sequence[int], memo: StackMemo | None = None) -> torch.Tensor:
    """Exactly `conv2d(bilinear_upsample(x, size), weight, bias, padding=1)` for a 3×3 kernel, computed
    with the channel mixing at the low resolution (see the note above). x: b ci h w -> b co H W.

    After the 9-tap 1×1 conv, resize + shift + tap sum along each axis is one small matmul with a
    fixed matrix ([U_0|U_1|U_2], bilinear_matrix / shifted_taps), run in float32. (F.interpolate was
    the first version: its NCHW CUDA kernel loops over the b·9C channels serially per output pixel
    and took 60% of a bf16 H100 inference.)
    memo: a per-call cache (StackMemo): the fixed matrices are built once per call, not once per conv.
    """
    b, _, h, w = x.shape
    co = weight.shape[0]
    big_h, big_w = int(size[0]), int(size[1])
    # all 9 taps as one 1×1 conv: weight co ci 3 3 -> (ky kx co) ci 1 1
    w9 = weight.permute(2, 3, 0, 1).reshape(9 * co, -1, 1, 1)
    z = F.conv2d(x, w9)  # b (ky kx co) h w
    out_dtype = z.dtype
    acc = torch.promote_types(z.dtype, torch.float32)  # bf16/fp16 -> fp32; fp32/fp64 unchanged
    with torch.autocast(x.device.type, enabled=False):
        def taps(n_in, n_out):
            make = lambda: shifted_taps(bilinear_matrix(n_in, n_out, acc, x.device))  # noqa: E731
            return make() if memo is None else memo.stacked(("bilinear", n_in, n_out, acc, x.device), make)
        uw = taps(w, big_w)  # W (kx w)
        uh = taps(h, big_h)  # H (ky h)
        z = z.to(acc).reshape(b, 3, 3, co, h, w).permute(0, 1, 3, 4, 2, 5).reshape(b * 3 * co * h, 3 * w)
        z = (z @ uw.t()).view(b, 3, co, h, big_w)  # along W, kx taps summed: b ky co h W
        z = z.permute(0, 2, 1, 3, 4).reshape(b * co, 3 * h, big_w)  # (b co) (ky h) W
        z = torch.matmul(uh, z).view(b, co, big_h, big_w)  # along H, ky taps summed
        if bias is not None:
            z = z + bias.to(acc).view(1, -1, 1, 1)
    return z.to(out_dtype)


def border_bias(weight: torch.Tensor, inner_bias: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """conv2d(const map `inner_bias` with zero padding, weight, padding=k//2): 1×co×H×W.

    Needed when two linear convolutions are composed into one: the inner bias is a constant map, but
    the outer conv's zero padding makes its contribution smaller on the border pixels.
    """
    k = weight.shape[-1]
    wb = torch.einsum("omyx,m->oyx", weight, inner_bias).unsqueeze(1)  # co 1 k k
    ones = torch.ones((1, 1, int(size[0]), int(size[1])), dtype=wb.dtype, device=wb.device)
    return F.conv2d(ones, wb, padding=k // 2)


def compose_1x1_into(outer: torch.Tensor, inner_1x1: torch.Tensor) -> torch.Tensor:
    """Weight of conv(outer) ∘ conv1×1(inner): outer co m k k, inner m ci 1 1 -> co ci k k."""
    return torch.einsum("omyx,mi->oiyx", outer, inner_1x1.flatten(1))


def foldable_into_head(block: nn.Module, head: nn.Conv2d) -> bool:
    """Whether `head(block(up(x)))` has the exact low-resolution form: block = 3×3 conv_1 -> ... -> 1×1
    conv_2 (+ skip), head = 3×3 conv with padding 1."""
    return (block.conv_1.kernel_size == (3, 3) and block.conv_2.kernel_size == (1, 1)
            and head.kernel_size == (3, 3) and head.padding == (1, 1))


def skip_plus_1x1_into_head(skip: torch.Tensor, g: torch.Tensor, conv_2: nn.Conv2d, head: nn.Conv2d,
                            size: Sequence[int] | None, memo: StackMemo | None = None) -> torch.Tensor:
    """`head(up(skip) + conv_2(g))`: the tail shared by every block that feeds a prediction head.

    skip: b c h w at the low resolution (up = bilinear to `size`, or none); g: the block's hidden
    activation, already at the head's resolution. head(up(skip)) runs at the low resolution
    (conv3x3_of_upsampled) and conv_2 (1×1) is folded into the 3×3 head: one C->K conv at the high
    resolution instead of C->C then C->K.
    """
    hw = tuple(size) if size is not None else tuple(skip.shape[-2:])
    base = conv3x3_of_upsampled(skip, head.weight, head.bias, hw, memo) if size is not None else head(skip)
    w = compose_1x1_into(head.weight, conv_2.weight)  # K C 3 3
    return base + F.conv2d(g, w, None, padding=1) + border_bias(head.weight, conv_2.bias, hw)


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

    def forward(self, x: torch.Tensor, temb: torch.Tensor | FilmTable) -> torch.Tensor:
        y = self.conv_2(F.gelu(conv_bn_film(self, x, temb)))
        return x + y if self.residual else y

    def forward_into_head(self, x: torch.Tensor, temb: torch.Tensor | FilmTable, head: nn.Conv2d,
                          size: Sequence[int] | None = None) -> torch.Tensor:
        """`head(self(up(x)))` (up = bilinear to `size`, or none) without its two largest costs.

        Same numbers as the plain composition (float rounding aside), but: conv_1 runs at the low
        resolution (conv3x3_of_upsampled), and conv_2 (1×1) is folded into the 3×3 `head` (linear after
        linear: one C->K conv instead of C->C then C->K at the high resolution). For a residual block
        head(up(x) + y) = head(up(x)) + head_nobias(y), and head(up(x)) is again computed at low resolution.
        """
        if not (self.residual and foldable_into_head(self, head)):
            x_in = upsample_bilinear(x, size) if size is not None else x
            return head(self(x_in, temb))
        g = F.gelu(conv_bn_film(self, x, temb, upsample_to=size))
        return skip_plus_1x1_into_head(x, g, self.conv_2, head, size,
                                       memo=temb.params if isinstance(temb, FilmTable) else None)


class CondConv(nn.Module):
    """Conv_withtime: `FiLM(BN(conv_1(x)))`, k×k conv, no activation."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, kernel_size: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_channels)
        self.time_mlp = time_mlp(time_dim, out_channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | FilmTable) -> torch.Tensor:
        return conv_bn_film(self, x, temb)


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

    def forward_into_head(self, x: torch.Tensor, head: nn.Conv2d, size: Sequence[int],
                          memo: StackMemo | None = None) -> torch.Tensor:
        """`head(self(up(x)))` with up = bilinear to `size` (the auxiliary head), computed exactly but
        with every conv that reads the upsampled 4C-channel map moved to the low resolution.

        conv_1 (3×3) via conv3x3_of_upsampled; conv_3 (1×1) commutes with the upsampling; conv_2 (1×1)
        is folded into the 3×3 head. Only BN, GELU and one C->K 3×3 conv run at the high resolution.
        """
        if not (foldable_into_head(self, head) and self.conv_3.kernel_size == (1, 1)):
            return head(self(upsample_bilinear(x, size)))
        g = F.gelu(self.norm(conv3x3_of_upsampled(x, self.conv_1.weight, self.conv_1.bias, tuple(size), memo)))
        skip = self.conv_3(x)  # b C h w: the 1×1 skip at low resolution, upsampled inside the next call
        return skip_plus_1x1_into_head(skip, g, self.conv_2, head, size, memo)


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

    def forward(self, levels: Sequence[torch.Tensor], z: torch.Tensor,
                feature_part: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """levels: L × (b c h w); z: b m h w -> L × (b c h w); feature channels come first.

        conv(cat(F_l, z)) = (W_F·F_l + bias) + W_z·z. The first term depends on the backbone only, so
        DDIM sampling computes it once (`feature_part`) and passes it back on every step; the z term
        of all levels is one 1×1 conv M -> L·C, run in float32 even under autocast: z carries the
        ±bit_scale signal on top of unit noise, which bf16 (8-bit mantissa) would mostly round away.
        """
        if feature_part is None:
            feature_part = self.feature_part(levels)
        c = feature_part[0].shape[1]
        wz = torch.cat([conv.weight[:, c:] for conv in self.conv_transforms], dim=0)  # (L c) m 1 1
        acc = torch.promote_types(z.dtype, torch.float32)
        with torch.autocast(z.device.type, enabled=False):
            nz = F.conv2d(z.to(acc), wz.to(acc))  # b (L c) h w
        return [f + n for f, n in zip(feature_part, nz.chunk(len(self.conv_transforms), dim=1))]

    def forward_stacked(self, feature_part: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """`forward` for the grouped decoder: feature_part stacked b (L c) h w (`feature_part_stacked`) ->
        b (L c) h w, the z term of every level added in one op."""
        wz = torch.cat([conv.weight[:, feature_part.shape[1] // len(self.conv_transforms):]
                        for conv in self.conv_transforms], dim=0)  # (L c) m 1 1
        acc = torch.promote_types(z.dtype, torch.float32)
        with torch.autocast(z.device.type, enabled=False):
            nz = F.conv2d(z.to(acc), wz.to(acc))  # b (L c) h w
        return feature_part + nz

    def feature_part_stacked(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """`feature_part` of every level as one grouped conv: b (L c) h w."""
        c, n = levels[0].shape[1], len(self.conv_transforms)
        w = torch.cat([conv.weight[:, :c] for conv in self.conv_transforms])  # (L c) c 1 1
        b = torch.cat([conv.bias for conv in self.conv_transforms])
        x = torch.cat(list(levels), dim=1)
        return F.conv2d(x, w, b, groups=n)

    def forward_concat(self, levels: Sequence[torch.Tensor], z: torch.Tensor) -> list[torch.Tensor]:
        """The original's formulation, conv1×1(cat(F_l, z)) per level (reference path of the head)."""
        return [conv(torch.cat([f, z], dim=1)) for conv, f in zip(self.conv_transforms, levels)]

    def feature_part(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """W_F·F_l + bias for every level (the part of the fusion that does not see the noisy map)."""
        c = levels[0].shape[1]
        return [F.conv2d(f, conv.weight[:, :c], conv.bias) for conv, f in zip(self.conv_transforms, levels)]


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
    """`fpn_encoder`: cross-task gating per level, then per-task softmax fusion of the levels (docs/method.md#decoder-core 2-4).

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

    def grouped_ok(self, table) -> bool:
        """Whether `forward_grouped` applies: a FiLM table, and the per-level / per-task blocks of the
        standard types with equal shapes (a subclass that swaps any of them gets the per-block forward)."""
        L = self.num_levels
        fpn = self.share_fpn.fpn_conv
        return (isinstance(table, FilmTable)
                and all(groupable([fpn[l][j] for l in range(L)], table) for j in range(2))
                and groupable(list(self.mask_task), table)
                and groupable([self.specific_head[l][k] for l in range(L) for k in self.tasks], table)
                and groupable([self.fpn_mask[k] for k in self.tasks], table)
                and self.fpn_mask[self.tasks[0]].conv_2.out_channels == L)

    def forward_grouped(self, fused: torch.Tensor, table: FilmTable, src: torch.Tensor) -> torch.Tensor:
        """`forward` with every level (shared FPN, gates, task mixing, specific heads) and every task
        (level fusion) in one op each. fused: b (L c) h w; src: the clean features b L 1 T c h w
        (`stack_clean`) -> b (T c) h w."""
        L, T = self.num_levels, len(self.tasks)
        fpn = self.share_fpn.fpn_conv
        s = grouped_cond_mlp([fpn[l][0] for l in range(L)], fused, table)
        s = grouped_cond_mlp([fpn[l][1] for l in range(L)], s, table)  # b (L c) h w
        g = grouped_conv_bn_film(list(self.mask_task), s, table)  # b (L T_target T_source) h w
        b, _, h, w = g.shape
        gates = torch.sigmoid(g).view(b, L, T, T, 1, h, w)
        mixed = (gates * src).sum(dim=3)  # b L T_target c h w
        c = mixed.shape[3]
        heads = [self.specific_head[l][k] for l in range(L) for k in self.tasks]
        v = grouped_conv_bn_film(heads, mixed.view(b, L * T * c, h, w), table)  # b (L T c) h w
        v = v.view(b, L, T, c, h, w).transpose(1, 2)  # b T L c h w
        masks = [self.fpn_mask[k] for k in self.tasks]
        m = grouped_cond_mlp(masks, v.reshape(b, T * L * c, h, w), table)  # b (T L) h w
        pi = torch.softmax(m.view(b, T, L, h, w), dim=2)
        return (pi.unsqueeze(3) * v).sum(dim=2).view(b, T * c, h, w)

    def forward(self, fused: Sequence[torch.Tensor], temb: torch.Tensor,
                clean: Sequence[dict]) -> dict[str, torch.Tensor]:
        """fused: L × (b c h w) noisy-conditioned features; clean: L × {task: b c h w} -> {task: b c h w}."""
        tasks, n = self.tasks, len(self.tasks)
        per_task = {k: [] for k in tasks}  # task -> L × (b c h w)
        for l in range(self.num_levels):
            s = self.share_fpn(fused[l], temb, l)
            g = self.mask_task[l](s, temb)  # b (T_target T_source) h w
            b, _, h, w = g.shape
            gates = torch.sigmoid(g).reshape(b, n, n, 1, h, w)  # b T_target T_source 1 h w
            src = torch.stack([clean[l][k] for k in tasks], dim=1).unsqueeze(1)  # b 1 T_source c h w
            # U_i = Σ_j sigmoid(G[:, i, j]) · P_j for all targets i: one broadcast multiply and one sum
            # (an einsum here becomes a per-pixel batched T×T by T×C matmul: 60% of a CPU inference)
            mixed = (gates * src).sum(dim=2)  # b T_target c h w
            for i, k in enumerate(tasks):
                per_task[k].append(self.specific_head[l][k](mixed[:, i], temb))
        out = {}
        for k in tasks:
            v = torch.stack(per_task[k], dim=1)  # b L c h w
            pi = torch.softmax(self.fpn_mask[k](v.flatten(1, 2), temb), dim=1)  # b L h w
            out[k] = (pi.unsqueeze(2) * v).sum(dim=1)
        return out
