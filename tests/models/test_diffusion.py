"""Diffusion maths against docs/method.md: schedule table (#noise-schedule), DDIM time pairs (#ddim-sampling),
time embedding (#time-embedding)."""
from __future__ import annotations

import math

import pytest
import torch

from models.diffusion import (LearnedSinusoidalPosEmb, alpha_sigma, build_time_mlp, ddim_step, ddim_time_pairs,
                              draw_sample_noise, draw_train_noise, draw_train_times, logsnr_cosine, noise_latent,
                              to_bits)



# docs/method.md#noise-schedule table: t, logsnr, alpha, sigma
SCHEDULE = [
    (0.0, 11.51293, 0.999995, 0.0031623),
    (0.1, 3.68191, 0.987645, 0.156706),
    (0.25, 1.76153, 0.923797, 0.382883),
    (1 / 3, 1.09777, 0.865934, 0.500159),
    (0.5, -0.00047, 0.707024, 0.707190),
    (2 / 3, -1.09885, 0.499955, 0.866052),
    (0.75, -1.76286, 0.382665, 0.923887),
    (0.999, -12.81534, 0.0016489, 0.9999986),
    (1.0, -18.90747, 7.8396e-5, 1.0),
]


def test_schedule_matches_spec_table():
    t = torch.tensor([row[0] for row in SCHEDULE])
    lam = logsnr_cosine(t)
    a, s = alpha_sigma(lam)
    assert lam.dtype == torch.float32
    for col, got in ((1, lam), (2, a), (3, s)):
        ref = torch.tensor([row[col] for row in SCHEDULE])
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a ** 2 + s ** 2, torch.ones_like(a))


def test_schedule_clamp_caps_logsnr_near_zero():
    lam = logsnr_cosine(torch.tensor([0.0, 0.001, 0.0015]))
    torch.testing.assert_close(lam, torch.full((3,), math.log(1e5)))
    assert logsnr_cosine(torch.tensor([0.01])).item() < math.log(1e5)


def test_ddim_time_pairs_of_the_original():
    pairs = ddim_time_pairs(3, 1)
    ref = [(1.0, 1 / 3), (2 / 3, 0.0), (1 / 3, 0.0)]
    for (a, b), (c, d) in zip(pairs, ref):
        assert a == pytest.approx(c, abs=1e-12) and b == pytest.approx(d, abs=1e-12)
    assert [p[0] for p in ddim_time_pairs(4, 0)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert [p[1] for p in ddim_time_pairs(4, 0)] == pytest.approx([0.75, 0.5, 0.25, 0.0])
    with pytest.raises(ValueError):
        ddim_time_pairs(0)


def test_ddim_step_is_consistent_with_the_forward_process():
    """If x0 is exact and z = a·x0 + s·eps, one DDIM step gives a'·x0 + s'·eps (same eps)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 5, 3, 3, generator=g) * 0.02 - 0.01
    eps = torch.randn(2, 5, 3, 3, generator=g)
    lam, lam2 = logsnr_cosine(torch.tensor([0.9, 0.6])), logsnr_cosine(torch.tensor([0.4, 0.0]))
    z = noise_latent(x0, lam, eps)
    a2, s2 = alpha_sigma(lam2)
    ref = a2.view(2, 1, 1, 1) * x0 + s2.view(2, 1, 1, 1) * eps
    torch.testing.assert_close(ddim_step(z, x0, lam, lam2), ref)


def test_bits_range():
    x = torch.linspace(-50, 50, 101)
    b = to_bits(x, 0.01)
    assert b.abs().max() <= 0.01 and b[50] == 0
    torch.testing.assert_close(b, (2 * torch.sigmoid(x) - 1) * 0.01)


def test_time_embedding_values_and_names():
    emb = LearnedSinusoidalPosEmb(16)
    lam = torch.tensor([0.5, -2.0])
    out = emb(lam)
    w = emb.weights.detach()
    ang = 2 * math.pi * lam[:, None] * w
    ref = torch.cat([lam[:, None], torch.sin(ang), torch.cos(ang)], 1)
    torch.testing.assert_close(out, ref)
    mlp = build_time_mlp(24)
    shapes = {k: tuple(v.shape) for k, v in mlp.state_dict().items()}
    assert shapes == {"0.weights": (8,), "1.weight": (24, 17), "1.bias": (24,), "3.weight": (24, 24), "3.bias": (24,)}
    assert mlp(lam).shape == (2, 24)


def test_draws_follow_the_generator():
    shape = (2, 6, 3, 4)
    a = draw_train_noise(shape, "cpu", torch.Generator().manual_seed(5))
    b = draw_train_noise(shape, "cpu", torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(a, draw_train_noise(shape, "cpu", torch.Generator().manual_seed(6)))
    # the sampler's initial noise is one plain randn of the full shape
    ref = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(draw_sample_noise(shape, "cpu", torch.Generator().manual_seed(7)), ref)
    t = draw_train_times(1000, "cpu", torch.Generator().manual_seed(0))
    assert t.shape == (1000,) and 0 <= t.min() and t.max() < 0.999
    torch.manual_seed(3)
    ref_t = torch.zeros(4).uniform_(0, 0.999)
    torch.manual_seed(3)
    assert torch.equal(draw_train_times(4, "cpu"), ref_t)  # global RNG, like the original
