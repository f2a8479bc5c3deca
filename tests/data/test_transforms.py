"""Transform invariants of docs/method.md#data-pipeline (flip, crop, scaling, photometric draw order, padding, ignore regions)."""
import random

import numpy as np
import pytest
import torch

from data.nyud import NYUD
from data.pascal_context import PASCALContext
from data.transforms import (
    AddIgnoreRegions,
    Normalize,
    PadImage,
    PhotoMetricDistortion,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScaling,
    ToTensor,
    pad_values,
    train_transforms,
    val_transforms,
)


def _sample(h=10, w=12, seed=0):
    rng = np.random.default_rng(seed)
    n = rng.normal(size=(h, w, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[0, 0] = 0  # an unlabeled normal
    return {
        "image": rng.uniform(0, 255, (h, w, 3)).astype(np.float32),
        "semseg": rng.integers(0, 5, (h, w, 1)).astype(np.float32),
        "depth": rng.uniform(1, 5, (h, w, 1)).astype(np.float32) * (rng.random((h, w, 1)) > 0.2),
        "normals": n,
        "edge": (rng.random((h, w, 1)) > 0.8).astype(np.float32),
        "meta": {"img_name": "x", "img_size": (h, w)},
    }


class Recorder(random.Random):
    """A Random that logs each call (name, args) and can force coin outcomes."""

    def __init__(self, coins=None, seed=0):
        super().__init__(seed)
        self.log, self.coins = [], list(coins or [])

    def randint(self, a, b):
        self.log.append(("randint", a, b))
        if (a, b) == (0, 1) and self.coins:
            return self.coins.pop(0)
        return super().randint(a, b)

    def uniform(self, a, b):
        self.log.append(("uniform", a, b))
        return super().uniform(a, b)


def test_flip_negates_normals_x_and_mirrors_everything():
    s = _sample()
    orig = {k: v.copy() for k, v in s.items() if k != "meta"}
    out = RandomHorizontalFlip(p=1.0)(s)
    for k, v in orig.items():
        expect = v[:, ::-1].copy()
        if k == "normals":
            expect[..., 0] *= -1
        np.testing.assert_array_equal(out[k], expect)
    assert out["meta"] == {"img_name": "x", "img_size": (10, 12)}
    s2 = _sample()
    out2 = RandomHorizontalFlip(p=0.0)(s2)
    np.testing.assert_array_equal(out2["normals"], _sample()["normals"])


def test_random_scaling_sizes_interpolation_and_depth():
    class Fixed(random.Random):
        def uniform(self, a, b):
            assert (a, b) == (0.5, 2.0)
            return 1.5

    s = _sample(10, 12)
    depth, semseg = s["depth"].copy(), s["semseg"].copy()
    out = RandomScaling(rng=Fixed())(s)
    assert out["image"].shape == (15, 18, 3) and out["depth"].shape == (15, 18, 1)
    assert out["normals"].shape == (15, 18, 3) and out["semseg"].shape == (15, 18, 1)
    # nearest: label values stay from the original set; depth divided by the scale, zeros stay zero
    assert set(np.unique(out["semseg"])) <= set(np.unique(semseg))
    assert set(np.round(np.unique(out["depth"]) * 1.5, 4)) <= set(np.round(np.unique(depth), 4))
    assert (out["depth"] == 0).any()
    # a 0.37 scale truncates: int(10 * 0.37) = 3, int(12 * 0.37) = 4
    Fixed.uniform = lambda self, a, b: 0.37
    assert RandomScaling(rng=Fixed())(_sample(10, 12))["edge"].shape == (3, 4, 1)


def test_crop_sizes_and_same_window_for_all_keys():
    s = _sample(20, 30)
    img = s["image"].copy()
    s["semseg"][:] = np.arange(30)[None, :, None] % 3  # always balanced
    rng = Recorder()
    out = RandomCrop((8, 9), rng=rng)(s)
    assert [o[0] for o in rng.log] == ["randint", "randint"]
    assert rng.log[0][1:] == (0, 12) and rng.log[1][1:] == (0, 21)
    for k in ("image", "semseg", "depth", "normals", "edge"):
        assert out[k].shape[:2] == (8, 9), k
    # locate the crop in the original image: the same window for every key
    rng2 = Recorder()
    top, left = rng2.randint(0, 12), rng2.randint(0, 21)
    np.testing.assert_array_equal(out["image"], img[top:top + 8, left:left + 9])
    # smaller than the crop in a dimension: keep the whole extent there (padding comes later)
    small = RandomCrop((16, 16), rng=Recorder())(_sample(10, 20))
    assert small["image"].shape[:2] == (10, 16)
    # exactly the crop size: no crop, no random draw
    r = Recorder()
    assert RandomCrop((10, 12), rng=r)(_sample(10, 12))["image"].shape[:2] == (10, 12) and r.log == []


def test_crop_retry_semantics():
    # one class everywhere: every check fails → 10 checks + the 11th location used unchecked = 11 origins
    s = _sample(20, 20)
    s["semseg"][:] = 3
    rng = Recorder()
    RandomCrop((5, 5), rng=rng)(s)
    assert len(rng.log) == 22
    # scripted origins: the first three crops hold one class, the fourth is balanced → it is used
    class Scripted(random.Random):
        def __init__(self, values):
            super().__init__(0)
            self.values = list(values)

        def randint(self, a, b):
            return self.values.pop(0)

    s = _sample(40, 40)
    s["semseg"][:] = 1
    s["semseg"][30:, 30:] = np.arange(100).reshape(10, 10, 1) % 2
    img = s["image"].copy()
    rng = Scripted([0, 0, 5, 5, 10, 0, 31, 31, 0, 0])
    out = RandomCrop((8, 8), rng=rng)(s)
    assert rng.values == [0, 0]
    np.testing.assert_array_equal(out["image"], img[31:39, 31:39])
    # ignore (255) is excluded from the count: 255 + one class is not balanced
    s = _sample(10, 10)
    s["semseg"][:] = 255
    s["semseg"][:, :5] = 2
    rng = Recorder()
    RandomCrop((5, 5), rng=rng)(s)
    assert len(rng.log) == 22


def test_photometric_draw_order():
    img = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)
    # all coins 1: brightness, mode(contrast first), contrast, saturation, hue
    rng = Recorder(coins=[1, 1, 1, 1, 1])
    out = PhotoMetricDistortion(rng=rng)({"image": img.copy(), "meta": {}})
    assert rng.log == [("randint", 0, 1), ("uniform", -32, 32), ("randint", 0, 1), ("randint", 0, 1),
                       ("uniform", 0.5, 1.5), ("randint", 0, 1), ("uniform", 0.5, 1.5), ("randint", 0, 1),
                       ("randint", -18, 17)]
    assert out["image"].dtype == np.float32 and np.all(out["image"] == np.round(out["image"]))
    assert out["image"].min() >= 0 and out["image"].max() <= 255
    # brightness on, contrast last: brightness, mode 0, saturation off, hue off, contrast on
    rng = Recorder(coins=[1, 0, 0, 0, 1])
    PhotoMetricDistortion(rng=rng)({"image": img.copy(), "meta": {}})
    assert rng.log == [("randint", 0, 1), ("uniform", -32, 32), ("randint", 0, 1), ("randint", 0, 1),
                       ("randint", 0, 1), ("randint", 0, 1), ("uniform", 0.5, 1.5)]
    # all off: the image is only truncated to integers
    rng = Recorder(coins=[0, 0, 0, 0, 0])
    out = PhotoMetricDistortion(rng=rng)({"image": img.copy(), "meta": {}})
    np.testing.assert_array_equal(out["image"], img.astype(np.uint8).astype(np.float32))


def test_normalize():
    s = {"image": np.full((2, 2, 3), 255.0, np.float32), "meta": {}}
    out = Normalize()(s)["image"]
    np.testing.assert_allclose(out[0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-6)


def test_pad_values_come_from_the_task_table():
    assert pad_values("PASCALContext", ["semseg", "human_parts", "sal", "normals", "edge"]) == {
        "semseg": 255.0, "human_parts": 255.0, "sal": 255.0, "normals": 0.0, "edge": 255.0}
    assert pad_values("NYUD", ["semseg", "depth", "normals", "edge"]) == {
        "semseg": 255.0, "depth": 0.0, "normals": 0.0, "edge": 255.0}


def test_pad_centred_with_values_per_task_nyud_size():
    """Spec docs/method.md#validation-transforms: 425×560 → 448×576 is top 11, bottom 12, left 8, right 8."""
    s = _sample(425, 560)
    orig = {k: v.copy() for k, v in s.items() if k != "meta"}
    pad = PadImage((448, 576), pad_values("NYUD", ["semseg", "depth", "normals", "edge"]))
    assert PadImage.offsets((425, 560), (448, 576)) == (11, 8)
    out = AddIgnoreRegions()(pad(s))
    for k, v in orig.items():
        assert out[k].shape[:2] == (448, 576) and out[k].dtype == np.float32
    inner = (slice(11, 436), slice(8, 568))
    np.testing.assert_array_equal(out["image"][inner], orig["image"])
    np.testing.assert_array_equal(out["depth"][inner], orig["depth"])
    border = np.ones((448, 576), bool)
    border[inner] = False
    assert border[:11].all() and border[436:].all() and border[:, :8].all() and border[:, 568:].all()
    assert border.sum() == 448 * 576 - 425 * 560
    assert np.all(out["image"][border] == 0)
    assert np.all(out["depth"][border] == 0)
    assert np.all(out["semseg"][border] == 255)
    assert np.all(out["edge"][border] == 255)
    assert np.all(out["normals"][border] == 255)  # padded with 0, then turned into ignore
    assert np.all(out["normals"][11, 8] == 255)  # the unlabeled (zero) normal inside the image too


def test_pad_leaves_large_arrays_alone():
    s = _sample(12, 12)
    out = PadImage((10, 10))(s)
    assert out["image"].shape == (12, 12, 3)
    out = PadImage((10, 15))(_sample(12, 12))
    assert out["image"].shape == (12, 15, 3) and np.all(out["semseg"][:, :1] == 255)


def test_add_ignore_regions_human_parts():
    hp = np.zeros((4, 4, 1), np.float32)
    hp[0] = 255
    out = AddIgnoreRegions()({"human_parts": hp.copy(), "meta": {}})
    assert np.all(out["human_parts"] == 255)
    hp[2, 2] = 3
    out = AddIgnoreRegions()({"human_parts": hp.copy(), "meta": {}})
    np.testing.assert_array_equal(out["human_parts"], hp)


def test_to_tensor():
    out = ToTensor()(_sample(5, 7))
    assert out["image"].shape == (3, 5, 7) and out["image"].dtype == torch.float32
    assert out["depth"].shape == (1, 5, 7) and out["normals"].shape == (3, 5, 7)
    assert out["meta"]["img_size"] == (5, 7)


def test_train_pipeline_on_pascal(synth_root, tmp_path):
    ds = PASCALContext(synth_root, "train", cache_dir=tmp_path)
    tasks = ds.tasks
    t = train_transforms("PASCALContext", tasks, (96, 112), seed=5)
    a = [t(ds.load_sample(i)) for i in range(3)]
    t.reseed(5)
    b = [t(ds.load_sample(i)) for i in range(3)]
    t.reseed(6)
    c = [t(ds.load_sample(i)) for i in range(3)]
    for x, y in zip(a, b):
        for k in ("image",) + tuple(tasks):
            assert x[k].shape[-2:] == (96, 112), k
            assert torch.equal(x[k], y[k]), k
    assert any(not torch.equal(x["image"], z["image"]) for x, z in zip(a, c))
    for x in a:
        hp, n = x["human_parts"], x["normals"]
        assert set(torch.unique(x["semseg"]).tolist()) <= set(range(21)) | {255}
        assert set(torch.unique(hp).tolist()) <= set(range(7)) | {255}
        assert set(torch.unique(x["sal"]).tolist()) <= {0, 1, 255}
        assert set(torch.unique(x["edge"]).tolist()) <= {0, 1, 255}
        ign = (n == 255).all(0)
        assert torch.equal((n == 255).any(0), ign)  # ignore is all three channels or none
        assert torch.all((n[:, ~ign].norm(dim=0) - 1).abs() < 0.03)


def test_val_pipeline_on_nyud(synth_root):
    ds = NYUD(synth_root, "val")
    raw = ds.load_sample(0)
    out = val_transforms("NYUD", ds.tasks, (104, 136))(ds.load_sample(0))
    top, left = (104 - 96) // 2, (136 - 128) // 2
    d = out["depth"][0]
    np.testing.assert_array_equal(d[top:top + 96, left:left + 128].numpy(), raw["depth"][..., 0])
    assert torch.all(d[:top] == 0) and torch.all(out["semseg"][0, :top] == 255)
    np.testing.assert_allclose(out["normals"][:, top:top + 96, left:left + 128].numpy(),
                               raw["normals"].transpose(2, 0, 1))


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_depth_is_divided_by_the_scale(synth_root, scale):
    class Fixed(random.Random):
        def uniform(self, a, b):
            return scale

    raw = NYUD(synth_root, "val").load_sample(1)
    depth = raw["depth"].copy()
    out = RandomScaling(rng=Fixed())(raw)
    h, w = int(96 * scale), int(128 * scale)
    assert out["depth"].shape == (h, w, 1)
    # nearest resize picks source pixels: every output value is a source value / scale
    src = set(np.unique(depth).round(4))
    assert set((np.unique(out["depth"]) * scale).round(4)) <= src
