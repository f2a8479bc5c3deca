"""N draws per image (docs/method.md#sample-ensembles): the backbone and the clean task features once per
image, per-member seeded noise, chunking, and N = 1 giving the single-sample prediction bit for bit."""
from __future__ import annotations

import pytest
import torch

from models.taskdiffusion import member_seed
from tests.models.test_taskdiffusion import tiny_model
from utils.seed import name_seed

NAMES = ["img_a", "img_b", "img_c"]


def _x(b=3, seed=0):
    return torch.randn(b, 3, 32, 48, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("randsteps", [1, 2])
def test_one_sample_is_the_single_sample_prediction_bit_for_bit(randsteps):
    model = tiny_model(randsteps=randsteps).eval()
    x = _x()
    with torch.no_grad():
        old = model(x, noise=model.initial_noise(x, NAMES, 7))["pred"]
        new = model(x, noise=model.noise_source(x, NAMES, 7, 1), samples=1, samples_chunk=1)
    assert "draws" not in new
    for t in old:
        assert torch.equal(old[t], new["pred"][t]), t


def test_member_zero_keeps_the_image_seed_and_others_differ():
    assert member_seed(3, "a", 0) == name_seed(3, "a")
    assert len({member_seed(3, "a", k) for k in range(4)}) == 4
    model = tiny_model(randsteps=2).eval()
    x = _x()
    z = model.initial_noise(x, NAMES, 3, samples=3)  # (n r b) m h w
    assert z.shape == (3 * 2 * 3, model.heads.noisy_channels, 2, 3)
    assert torch.equal(z[:6], model.initial_noise(x, NAMES, 3))
    src = model.noise_source(x, NAMES, 3, 3)
    assert torch.equal(torch.cat([src(0, 1), src(1, 3)]), z)
    # image b alone gets its own slices of every member
    alone = model.initial_noise(x[1:2], NAMES[1:2], 3, samples=3).view(3, 2, 1, *z.shape[1:])
    assert torch.equal(alone[:, :, 0], z.view(3, 2, 3, *z.shape[1:])[:, :, 1])


def test_each_member_is_a_single_sample_run_from_its_noise():
    model = tiny_model().eval()
    x = _x()
    with torch.no_grad():
        out = model(x, noise=model.noise_source(x, NAMES, 1, 4), samples=4, samples_chunk=3)
        z = model.initial_noise(x, NAMES, 1, samples=4).view(4, 3, -1, 2, 3)
        for k in (0, 3):
            one = model(x, noise=z[k])["pred"]
            for t, v in out["draws"].items():
                assert v.shape[:2] == (4, 3)
                torch.testing.assert_close(v[k], one[t], rtol=1e-5, atol=1e-5)
    for t, v in out["draws"].items():
        torch.testing.assert_close(out["pred"][t], v.mean(0))
        assert not torch.equal(v[0], v[1])  # different noise, different draws


def test_draws_do_not_depend_on_batch_or_chunk():
    model = tiny_model("NYUD").eval()
    x = _x()
    with torch.no_grad():
        ref = model(x, noise=model.noise_source(x, NAMES, 2, 4), samples=4)["draws"]
        for chunk in (1, 3):
            got = model(x, noise=model.noise_source(x, NAMES, 2, 4), samples=4, samples_chunk=chunk)["draws"]
            for t in ref:
                torch.testing.assert_close(got[t], ref[t], rtol=1e-5, atol=1e-6)
        one = model(x[2:], noise=model.noise_source(x[2:], NAMES[2:], 2, 4), samples=4, samples_chunk=2)["draws"]
        for t in ref:
            torch.testing.assert_close(one[t][:, 0], ref[t][:, 2], rtol=1e-5, atol=1e-6)


def test_backbone_and_clean_task_features_run_once_per_image():
    model = tiny_model(randsteps=2).eval()
    calls = {"backbone": 0, "clean": 0, "decode": 0}
    model.backbone.register_forward_hook(lambda *a: calls.__setitem__("backbone", calls["backbone"] + 1))
    head = model.heads
    real_clean, real_decode = head.clean_task_features, head.decode

    def clean(levels, **kw):
        calls["clean"] += 1
        assert levels[0].shape[0] == 3  # at batch B, not N·R·B
        return real_clean(levels, **kw)

    def decode(fused, *a, **kw):
        calls["decode"] += 1
        assert fused[0].shape[0] <= 2 * 2 * 3  # a chunk of 2 members × R × B
        return real_decode(fused, *a, **kw)

    head.clean_task_features, head.decode = clean, decode
    x = _x()
    with torch.no_grad():
        out = model(x, noise=model.noise_source(x, NAMES, 0, 5), samples=5, samples_chunk=2)
    assert calls["backbone"] == 1 and calls["clean"] == 1
    assert calls["decode"] == 3 * head.timesteps  # chunks of 2, 2, 1 members
    assert next(iter(out["draws"].values())).shape[:2] == (5, 3)


def test_bad_samples_value_is_refused():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="samples must be >= 1"):
        model(_x(1), samples=0)
