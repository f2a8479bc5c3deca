"""Diffusion pieces of the TaskDiffusion decoder: schedule, time embedding, bits, DDIM (docs/method.md#joint-denoising-decoder).

Everything here is stateless maths except the learned sinusoidal time embedding. The head
(`models/taskdiffusion.py`) wires these pieces together; keeping them apart makes each one
testable against the reference tables of docs/method.md#noise-schedule (schedule values, time pairs) on its own.

Randomness is always explicit: every draw takes an optional `torch.Generator`; with `None` the
global RNG is used, in exactly the layout and order the original drew (see the golden README,
"Randomness"), so runs seeded the same way reproduce the original's noise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Cosine log-SNR schedule constants (docs/method.md#noise-schedule). The numerator and denominator offsets differ in
# the original; the reference table in docs/method.md#noise-schedule pins this down.
_COS_SHIFT_NUM = 0.0002
_COS_SHIFT_DEN = 0.00025
_LOGSNR_CLAMP = 1e-5
_SIGMA_MIN = 1e-8


# --------------------------------------------------------------------------------------------------
# Noise schedule
# --------------------------------------------------------------------------------------------------


def logsnr_cosine(t: torch.Tensor) -> torch.Tensor:
    """Continuous-time cosine log-SNR, computed in float32: logsnr(t) = -ln(clamp(cos(.)^-2 - 1, 1e-5))."""
    t = t.float()
    c = torch.cos((t + _COS_SHIFT_NUM) / (1.0 + _COS_SHIFT_DEN) * (math.pi / 2))
    return -torch.log(torch.clamp(c.pow(-2) - 1.0, min=_LOGSNR_CLAMP))


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha = sqrt(sigmoid(logsnr)), sigma = sqrt(sigmoid(-logsnr))."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def right_pad_dims(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-sample B vector as B×1×...×1 so it broadcasts against `like`."""
    return x.view(x.shape[0], *([1] * (like.dim() - 1)))


def ddim_time_pairs(timesteps: int, time_difference: float = 1.0) -> list[tuple[float, float]]:
    """The original's DDIM (t_now, t_next) pairs: t_now = 1 - s/T, t_next = max(1 - (s+1+d)/T, 0).

    With T = 3, d = 1 this is (1, 1/3), (2/3, 0), (1/3, 0) (docs/method.md#ddim-sampling): irregular, and the last
    update is wasted, but that is what the released weights were evaluated with.
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    return [(1.0 - s / timesteps, max(1.0 - (s + 1 + time_difference) / timesteps, 0.0))
            for s in range(timesteps)]


def ddim_step(z: torch.Tensor, x0: torch.Tensor, logsnr_now: torch.Tensor,
              logsnr_next: torch.Tensor) -> torch.Tensor:
    """One DDIM update: eps = (z - a·x0)/max(s, 1e-8); z' = a'·x0 + s'·eps. z, x0: B×M×h×w."""
    a, s = alpha_sigma(right_pad_dims(logsnr_now, z))
    a2, s2 = alpha_sigma(right_pad_dims(logsnr_next, z))
    eps = (z - a * x0) / s.clamp(min=_SIGMA_MIN)
    return a2 * x0 + s2 * eps


def noise_latent(x0: torch.Tensor, logsnr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = alpha·x0 + sigma·noise (per-sample alpha/sigma from logsnr, shape B)."""
    a, s = alpha_sigma(right_pad_dims(logsnr, x0))
    return a * x0 + s * noise


# --------------------------------------------------------------------------------------------------
# Bits encoding
# --------------------------------------------------------------------------------------------------


def to_bits(x: torch.Tensor, bit_scale: float) -> torch.Tensor:
    """Squash a label embedding into (-bit_scale, bit_scale): (2·sigmoid(x) - 1)·bit_scale, in float32
    (the bits are a ±0.01 signal added to unit noise: low precision would round it away)."""
    return (torch.sigmoid(x.to(torch.promote_types(x.dtype, torch.float32))) * 2 - 1) * bit_scale


# --------------------------------------------------------------------------------------------------
# Time embedding
# --------------------------------------------------------------------------------------------------


class LearnedSinusoidalPosEmb(nn.Module):
    """[λ, sin(2π·λ·w), cos(2π·λ·w)] with learned frequencies w (`time_mlp.0.weights`, dim/2 values).

    λ: B (the log-SNR) -> B×(dim+1).
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"learned sinusoidal dim must be even, got {dim}")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1).to(self.weights.dtype)  # b 1
        freqs = x * self.weights.unsqueeze(0) * (2 * math.pi)  # b d/2
        return torch.cat([x, freqs.sin(), freqs.cos()], dim=-1)  # b (1 + d)


def build_time_mlp(dim: int, learned_sinusoidal_dim: int = 16) -> nn.Sequential:
    """`time_mlp`: sinusoidal features -> Linear(17->C) -> GELU -> Linear(C->C) (names .0/.1/.3)."""
    return nn.Sequential(
        LearnedSinusoidalPosEmb(learned_sinusoidal_dim),
        nn.Linear(learned_sinusoidal_dim + 1, dim),
        nn.GELU(),
        nn.Linear(dim, dim),
    )


# --------------------------------------------------------------------------------------------------
# Random draws (injectable; the defaults reproduce the original's draws on the global RNG)
# --------------------------------------------------------------------------------------------------


def _draw_device(device: torch.device, generator: torch.Generator | None) -> torch.device:
    """A generator lives on one device: draw there (then move), so a CPU generator works for CUDA models."""
    return generator.device if generator is not None else torch.device(device)


def draw_train_times(batch: int, device, generator: torch.Generator | None = None,
                     sample_range: tuple[float, float] = (0.0, 0.999)) -> torch.Tensor:
    """t ~ U(sample_range) per sample, as the original: zeros(B).uniform_(lo, hi)."""
    d = _draw_device(device, generator)
    t = torch.zeros(batch, device=d).uniform_(sample_range[0], sample_range[1], generator=generator)
    return t.to(device)


def draw_train_noise(shape, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, I) noise for the training latent, drawn in channels-last memory order.

    Why channels-last: the original calls `randn_like` on label bits that are channels-last in
    memory; on the CPU that draws one normal per element in NHWC order. Drawing the same way makes
    a run seeded like the original get the same noise (golden README, "Randomness").
    """
    d = _draw_device(device, generator)
    noise = torch.empty(tuple(shape), device=d, memory_format=torch.channels_last).normal_(generator=generator)
    return noise.to(device)


def draw_sample_noise(shape, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Initial DDIM noise: one `torch.randn((randsteps·B, M, h, w))`, as the original."""
    d = _draw_device(device, generator)
    return torch.randn(tuple(shape), generator=generator, device=d).to(device)


def check_noise(noise: torch.Tensor, shape, what: str) -> torch.Tensor:
    """Clear error for an injected noise tensor of the wrong shape."""
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"{what}: injected noise has shape {tuple(noise.shape)}, expected {tuple(shape)} "
                         f"(randsteps·B × noisy-map channels × H/s × W/s, s the decoder stride)")
    return noise


def upsample_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """The one resize used everywhere in the decoder: bilinear, align_corners=False, no antialias."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
