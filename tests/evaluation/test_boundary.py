"""Boundary ODS/OIS/AP (docs/method.md#boundary-metric): NMS, matching tolerance, shifted / thickened edges, backends, sharding."""
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import thin

from evaluation.boundary import (BoundaryMeter, best_counts, edge_nms, edge_orientation, edge_thresholds,
                                 evaluate_image, match_counts, nms_edges, pr_summary, pyedgeeval_available,
                                 thin_binary)

H, W = 96, 128
DIAG = math.hypot(H, W)  # 160
R = 2.5  # tolerance in pixels used by most tests
MAX_DIST = R / DIAG


def gt_map(shift=(0, 0)):
    """A rectangle outline and a diagonal, 1 px wide, at least 12 px from the border."""
    g = np.zeros((H, W), dtype=np.uint8)
    y0, y1, x0, x1 = 15 + shift[0], 75 + shift[0], 20 + shift[1], 100 + shift[1]
    g[y0, x0:x1 + 1] = 1
    g[y1, x0:x1 + 1] = 1
    g[y0:y1 + 1, x0] = 1
    g[y0:y1 + 1, x1] = 1
    for i in range(40):
        g[30 + i + shift[0], 40 + i + shift[1]] = 1
    return g


def soft_prediction(g, sigma=1.0):
    """A blurred ridge peaking on the lines of g, as uint8 0..255."""
    s = ndimage.gaussian_filter(g.astype(np.float64), sigma)
    return np.round(255 * s / s.max()).astype(np.uint8)


def scores(pred, gt, n_thresholds=101, max_dist=MAX_DIST, backend="scipy"):
    th = edge_thresholds(n_thresholds)
    c = evaluate_image(pred, gt, th, max_dist, backend)
    return pr_summary(c, best_counts(c), th), c


def test_thresholds_are_seisms_list():
    th = edge_thresholds(101)
    expected = np.array([0.001] + [k / 100 for k in range(1, 100)] + [0.999])
    np.testing.assert_allclose(th, expected, rtol=0, atol=1e-12)
    assert len(edge_thresholds(11)) == 11 and edge_thresholds(11)[0] == 0.001


def test_nms_keeps_the_ridge_and_fades_the_border():
    y, x = np.mgrid[0:40, 0:50]
    # ridge peaking near row 20, slowly rising along x. (On an exactly symmetric ridge ∂S/∂y and so Oxy
    # are exactly 0 at the crest, and the structured-edge formula gives orientation 0 there: a quirk of
    # the original, kept.)
    e = (np.exp(-((y - 20.2) ** 2) / 4.0) * (0.5 + 0.01 * x)).astype(np.float32)
    o = edge_orientation(e)
    assert abs(float(o[20, 25]) - math.pi / 2) < 1e-3  # normal points along y
    out = edge_nms(e, o)
    col = out[:, 25]
    assert col[20] == e[20, 25] and np.count_nonzero(col) == 1
    assert out[20, 0] == 0.0 and out[20, 2] == pytest.approx(0.4 * e[20, 2], rel=1e-6)  # ×d/5 near the border
    assert out[20, 49] == 0.0


def test_sparse_thinning_equals_skimage_thin():
    rng = np.random.default_rng(0)
    maps = [rng.random((40, 50)) < p for p in (0.1, 0.4, 0.7)]
    maps += [ndimage.binary_dilation(rng.random((40, 50)) < 0.03, iterations=k) for k in (1, 3)]
    maps += [nms_edges(soft_prediction(gt_map(), sigma=2.0).astype(np.float32) / 255) > t for t in (0.05, 0.3)]
    maps += [np.ones((5, 7), bool), np.zeros((3, 3), bool)]
    for b in maps:
        assert np.array_equal(thin_binary(b), thin(b))


def _thick_pattern():
    """Bands 3-7 px wide plus a filled blob: thinning must change it a lot."""
    b = ndimage.binary_dilation(gt_map() > 0, iterations=2)
    b[80:90, 5:30] = True
    return b


def test_thinning_does_not_depend_on_memory_order():
    x = _thick_pattern()
    ref = thin_binary(x)
    assert np.array_equal(ref, thin(x))
    assert ref.sum() < x.sum() / 3  # really thinned, not the input handed back
    fortran = np.asfortranarray(x)
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
    assert np.array_equal(thin_binary(fortran), ref)
    assert np.array_equal(thin_binary(np.asfortranarray(x.astype(np.uint8))), ref)
    # a transposed view is Fortran-ordered too; thinning is not transpose-symmetric, so compare with
    # the same image stored in C order
    xt = x.T
    expect_t = thin_binary(np.ascontiguousarray(xt))
    assert np.array_equal(expect_t, thin(np.ascontiguousarray(xt)))
    assert np.array_equal(thin_binary(xt), expect_t) and not np.array_equal(expect_t, xt)
    # other strided views (neither C nor Fortran contiguous)
    for view in (x[:, ::-1], x[::2, ::3], x.T[::-1]):
        assert np.array_equal(thin_binary(view), thin_binary(view.copy()))
    assert np.array_equal(x, _thick_pattern()), "the input must not be modified"


def test_fortran_ordered_maps_score_like_c_ordered_ones():
    """A GT straight from scipy.io.loadmat (Fortran order) or a transpose must be thinned all the same."""
    thick_gt = _thick_pattern().astype(np.uint8)
    thick_gt[0:4, :] = 255  # an ignored strip
    pred = soft_prediction(gt_map(shift=(1, 0)))
    th = edge_thresholds(11)
    ref = evaluate_image(pred, thick_gt, th, MAX_DIST)
    assert ref[0, 1] == thin((thick_gt > 0) & (thick_gt != 255)).sum() < (thick_gt == 1).sum()
    for p, g in ((pred, np.asfortranarray(thick_gt)), (np.asfortranarray(pred), np.asfortranarray(thick_gt)),
                 (np.asfortranarray(pred), thick_gt)):
        assert np.array_equal(evaluate_image(p, g, th, MAX_DIST), ref)
    ref_t = evaluate_image(np.ascontiguousarray(pred.T), np.ascontiguousarray(thick_gt.T), th, MAX_DIST)
    assert np.array_equal(evaluate_image(pred.T, thick_gt.T, th, MAX_DIST), ref_t)


def test_matching_does_not_depend_on_memory_order():
    rng = np.random.default_rng(1)
    pred = rng.random((30, 40)) < 0.1
    gt = rng.random((30, 40)) < 0.1
    md = 1.5 / math.hypot(30, 40)
    ref = match_counts(pred, gt, md, "scipy")
    assert ref[0] > 0
    assert match_counts(np.asfortranarray(pred), np.asfortranarray(gt), md, "scipy") == ref
    assert match_counts(pred.T, gt.T, md, "scipy") == match_counts(pred.T.copy(), gt.T.copy(), md, "scipy")


def test_nms_does_not_depend_on_memory_order():
    e = soft_prediction(gt_map(), sigma=2.0).astype(np.float32) / 255
    ref = nms_edges(e)
    assert np.array_equal(nms_edges(np.asfortranarray(e)), ref)
    assert np.array_equal(nms_edges(e.T), nms_edges(np.ascontiguousarray(e.T)))


def test_matching_is_maximum_not_greedy():
    pred = np.zeros((20, 20), bool)
    gt = np.zeros((20, 20), bool)
    pred[5, 5] = pred[5, 7] = True
    gt[5, 6] = gt[5, 4] = True  # nearest-first from (5,5) could take (5,6) and strand (5,7)
    md = 1.5 / math.hypot(20, 20)
    assert match_counts(pred, gt, md, "scipy") == (2, 2)
    far = np.zeros_like(gt)
    far[15, 15] = True
    assert match_counts(pred, far, md, "scipy") == (0, 0)


def test_exact_prediction_scores_one():
    g = gt_map()
    r, _ = scores(g * 255, g)
    assert r["odsF"] == pytest.approx(100.0) and r["oisF"] == pytest.approx(100.0)


def test_shift_within_tolerance_scores_about_one():
    g = gt_map()
    r, _ = scores(soft_prediction(gt_map(shift=(1, 1))), g)
    assert r["odsF"] > 97.0


def test_shift_beyond_tolerance_scores_about_zero():
    g = gt_map()
    moved = soft_prediction(gt_map(shift=(4, -4)))  # every line moves >= 4 px > 2.5 px across itself
    r, _ = scores(moved, g)
    assert r["odsF"] < 10.0  # only pixels near line crossings match
    r2, _ = scores(moved, g, max_dist=6.0 / DIAG)  # a wider tolerance matches them
    assert r2["odsF"] > 95.0


def test_thick_predictions_are_thinned_back():
    g = gt_map()
    blurred, _ = scores(soft_prediction(g, sigma=2.5), g)
    assert blurred["odsF"] > 97.0
    plateau = (ndimage.binary_dilation(g, iterations=1) * 200).astype(np.uint8)  # flat 3 px band
    flat, _ = scores(plateau, g)
    assert flat["odsF"] > 90.0


def test_half_of_the_boundaries_gives_recall_one_half():
    g = gt_map()
    half = g.copy()
    half[:, W // 2:] = 0
    r, c = scores(half * 255, g)
    k = 50  # threshold 0.5
    recall = c[k, 0] / c[k, 1]
    precision = c[k, 2] / c[k, 3]
    assert 0.4 < recall < 0.6 and precision == pytest.approx(1.0)
    assert r["odsF"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))


def test_empty_prediction_and_empty_gt():
    g = gt_map()
    r, c = scores(np.zeros_like(g), g)
    assert r["odsF"] == 0.0 and c[:, 2].sum() == 0 and c[0, 1] == thin(g > 0).sum()  # GT is thinned too
    r, c = scores(soft_prediction(g), np.zeros_like(g))
    assert r["odsF"] == 0.0 and c[:, 1].sum() == 0 and c[0, 3] > 0


def test_ignored_gt_pixels_remove_predictions_there():
    g = gt_map()
    g_ign = g.copy()
    g_ign[:, :60][g[:, :60] == 0] = 255  # left part unlabelled
    extra = soft_prediction(g)
    extra[40:50, 25:35] = 255  # a false blob inside the ignored area
    r, _ = scores(extra, g_ign)
    assert r["odsF"] > 95.0


@pytest.mark.skipif(not pyedgeeval_available(), reason="pyEdgeEval (optional) is not installed: "
                    "`pip install pyEdgeEval` builds its C++ matcher; the SciPy fallback is used without it")
def test_scipy_fallback_agrees_with_pyedgeeval():
    g = gt_map()
    cases = [soft_prediction(gt_map(shift=(1, 0))), soft_prediction(g, sigma=2.0),
             np.clip(soft_prediction(g).astype(int) + np.random.default_rng(0).integers(0, 60, g.shape), 0, 255
                     ).astype(np.uint8)]
    for pred in cases:
        a, ca = scores(pred, g, n_thresholds=11, backend="scipy")
        b, cb = scores(pred, g, n_thresholds=11, backend="pyedgeeval")
        assert np.array_equal(ca[:, [1, 3]], cb[:, [1, 3]])  # same thinned maps
        # maximum matching >= the CSA's count, and close to it
        assert np.all(ca[:, 0] >= cb[:, 0]) and np.all(ca[:, 0] - cb[:, 0] <= 0.01 * ca[:, 1] + 2)
        assert abs(a["odsF"] - b["odsF"]) < 1.0


# ---------------------------------------------------------------- the accumulator

def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        g = gt_map(shift=(int(rng.integers(-3, 4)), int(rng.integers(-3, 4))))
        p = soft_prediction(gt_map(shift=(int(rng.integers(-2, 3)), 0)), sigma=float(rng.uniform(0.8, 2)))
        out.append((f"img_{i:03d}", p, g))
    return out


def test_sharded_meters_equal_single_meter_exactly():
    imgs = _images(6)
    kw = dict(max_dist=MAX_DIST, thresholds=11, workers=1, backend="scipy")
    whole = BoundaryMeter(**kw)
    whole.update([p for _, p, _ in imgs], [g for _, _, g in imgs], [n for n, _, _ in imgs])
    shards = [BoundaryMeter(**kw) for _ in range(3)]
    for k, (n, p, g) in enumerate(imgs):
        shards[k % 3].update([p], [g], [n])
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert np.array_equal(merged.totals, whole.totals) and np.array_equal(merged.ois, whole.ois)
    assert merged.compute() == whole.compute()
    assert whole.compute()["num_images"] == 6


def test_estimate_subset_does_not_depend_on_sharding_and_is_labelled():
    imgs = _images(8, seed=1)
    kw = dict(max_dist=MAX_DIST, thresholds=5, workers=1, backend="scipy", max_images=3, estimate=True)
    whole = BoundaryMeter(**kw)
    for n, p, g in imgs:
        whole.update([p], [g], [n])
    a, b = BoundaryMeter(**kw), BoundaryMeter(**kw)
    for k, (n, p, g) in enumerate(imgs):
        (a if k < 5 else b).update([p], [g], [n])
    ra, rw = a.merge(b).compute(), whole.compute()
    assert ra == rw and rw["num_images_est"] == 3 and "odsF" not in rw and "odsF_est" in rw


def test_image_list_filters_ids():
    imgs = _images(4, seed=2)
    m = BoundaryMeter(MAX_DIST, thresholds=5, workers=1, backend="scipy", image_list={"img_001", "img_003"})
    m.update([p for _, p, _ in imgs], [g for _, _, g in imgs], [n for n, _, _ in imgs])
    assert m.compute()["num_images"] == 2


def test_worker_pool_gives_the_inline_result():
    imgs = _images(3, seed=3)
    res = []
    for workers in (1, 2):
        m = BoundaryMeter(MAX_DIST, thresholds=5, workers=workers, backend="scipy", progress=False)
        m.update([p for _, p, _ in imgs], [g for _, _, g in imgs], [n for n, _, _ in imgs])
        res.append((m.compute(), m.totals.copy()))
    assert res[0][0] == res[1][0] and np.array_equal(res[0][1], res[1][1])


def test_meter_empty_and_errors():
    m = BoundaryMeter(MAX_DIST, thresholds=5, workers=1, backend="scipy")
    r = m.compute()
    assert r["num_images"] == 0 and math.isnan(r["odsF"])
    with pytest.raises(ValueError):
        BoundaryMeter(MAX_DIST, thresholds=[0.5, 0.2])
    with pytest.raises(ValueError, match="backend"):
        BoundaryMeter(MAX_DIST, backend="matlab")
    with pytest.raises(ValueError, match="shapes"):
        evaluate_image(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), [0.5], 0.01)


def test_nms_edges_accepts_uint8_scaled_maps():
    g = gt_map()
    out = nms_edges(soft_prediction(g).astype(np.float32) / 255)
    near = ndimage.binary_dilation(g > 0, iterations=1)
    assert out.dtype == np.float32 and out.max() <= 1.0
    assert not np.any((out > 0.2) & ~near)  # strong survivors lie on the ridge
    # Along the exactly constant horizontal lines Oxy = 0, the orientation formula gives 0 and NMS keeps
    # the band (as the original does); thinning then reduces every line to one pixel.
    assert thin(out > 0.2).sum() <= 1.1 * g.sum() < (soft_prediction(g) > 50).sum() / 2
