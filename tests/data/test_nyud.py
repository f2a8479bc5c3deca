"""NYUD-v2 reader: decoding of docs/method.md#nyud-v2-labels, checked against the generator's truth."""
import numpy as np
import pytest
from scipy.ndimage import convolve
from skimage.morphology import thin

from data.nyud import NYUD
from data.synthetic import render_scene, sample_index

SEED = 3


@pytest.fixture(scope="module")
def val_set(synth_root):
    return NYUD(synth_root, "val")


def test_every_modality_matches_the_generator(val_set):
    assert len(val_set) == 3 and val_set.ids == ["0005", "0006", "0007"]
    k = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    for i in range(len(val_set)):
        s = val_set[i]
        g = render_scene("nyud", SEED, sample_index("nyud", s["meta"]["img_name"]))
        assert list(s) == ["image", "semseg", "depth", "normals", "edge", "meta"]
        assert s["meta"]["img_size"] == (96, 128)
        np.testing.assert_array_equal(s["image"], g["image"].astype(np.float32))  # PNG: lossless
        # semseg: value − 1, unlabeled 0 → 255
        seg = s["semseg"][..., 0]
        assert seg.shape == (96, 128) and seg.dtype == np.float32
        stored = g["segmentation"]
        np.testing.assert_array_equal(seg[stored == 0], 255)
        np.testing.assert_array_equal(seg[stored > 0], stored[stored > 0].astype(np.float32) - 1)
        assert (stored == 0).any() and seg.max() == 255 and seg[seg < 255].max() <= 39
        # depth: metres, bit-exact, 0 where invalid
        np.testing.assert_array_equal(s["depth"][..., 0], g["depth"])
        assert (s["depth"] == 0).any() and 0.5 < s["depth"][s["depth"] > 0].min() and s["depth"].max() < 20
        # normals: 2v/255 − 1, unit length (quantisation aside), no masking
        np.testing.assert_allclose(s["normals"], 2.0 * g["normals_png"] / 255.0 - 1.0, atol=1e-6)
        assert np.all(np.abs(np.linalg.norm(s["normals"], axis=-1) - 1) < 0.02)
        np.testing.assert_allclose(s["normals"], g["normals"], atol=0.01)
        # edge: v/255 ∈ {0, 1}, the thinned Laplacian boundaries of the stored label map
        e = s["edge"][..., 0]
        assert set(np.unique(e).tolist()) == {0.0, 1.0}
        ref = thin(convolve(stored.astype(np.float64), k, mode="mirror") != 0)
        np.testing.assert_array_equal(e.astype(bool), ref)


def test_depth_agrees_with_normals_on_the_floor(val_set):
    """Geometry consistency: floor pixels (class 1) face up and lie on one plane y = −camera height."""
    s = val_set[0]
    h, w = s["meta"]["img_size"]
    f = 0.95 * w
    v, u = np.mgrid[0:h, 0:w] + 0.5
    n, z = s["normals"], s["depth"][..., 0]
    floor = (s["semseg"][..., 0] == 1) & (z > 0)
    assert np.all(n[floor][:, 1] > 0.99)
    y = -(v - h / 2) / f * z
    assert floor.sum() > 100
    assert np.ptp(y[floor]) < 0.05  # one height for every floor pixel


def test_subset_of_tasks(synth_root):
    ds = NYUD(synth_root, "train", tasks=["edge", "depth"])
    assert ds.tasks == ["depth", "edge"]
    assert set(ds[0]) == {"image", "depth", "edge", "meta"}
