"""Per-family accumulators on small hand-computed cases (docs/method.md#metrics): perfect, empty / all-ignore, partial."""
import math

import numpy as np
import pytest
import torch

from evaluation import DepthMeter, EdgeProxyMeter, NormalsMeter, SaliencyMeter, SegmentationMeter
from evaluation.postprocess import (crop_offsets, crop_to_original, depth_values, edge_scores, edge_uint8,
                                    normals_scores, saliency_scores, segmentation_labels)


def _lab(rows):
    return torch.tensor(rows, dtype=torch.float32)[None, None]  # 1×1×H×W


# ---------------------------------------------------------------- segmentation

def test_segmentation_perfect_and_absent_class():
    gt = _lab([[0, 1, 2], [2, 1, 0]])
    m = SegmentationMeter(3, ("a", "b", "c"))
    m.update(gt[:, 0].long(), gt)
    r = m.compute()
    assert r["mIoU"] == pytest.approx(100.0) and r["pixel_acc"] == pytest.approx(100.0)
    assert r["per_class"] == {"a": 100.0, "b": 100.0, "c": 100.0}
    m4 = SegmentationMeter(4)  # class 3 absent from GT and prediction: IoU 0, still averaged (as the original)
    m4.update(gt[:, 0].long(), gt)
    assert m4.compute()["mIoU"] == pytest.approx(75.0)


def test_segmentation_partial_overlap_hand_computed():
    gt = _lab([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 0, 0]]])
    m = SegmentationMeter(2)
    m.update(pred, gt)
    # valid: 7 pixels. class 0: TP 3, FP 1 (gt1 predicted 0), FN 1 -> 3/5; class 1: TP 2, FP 1, FN 1 -> 2/4
    r = m.compute()
    assert r["per_class"]["0"] == pytest.approx(60.0)
    assert r["per_class"]["1"] == pytest.approx(50.0)
    assert r["mIoU"] == pytest.approx(55.0)
    assert r["pixel_acc"] == pytest.approx(100 * 5 / 7)


def test_segmentation_all_ignore_and_bad_labels():
    m = SegmentationMeter(3)
    m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 1, 2, 2), 255.0))
    r = m.compute()
    assert r["mIoU"] == 0.0 and r["pixel_acc"] == 0.0
    with pytest.raises(ValueError, match="0..2"):
        m.update(torch.zeros(1, 1, 1, dtype=torch.long), _lab([[7]]))


def test_segmentation_pools_over_batches_not_images():
    # image 1: one pixel of class 1 predicted right; image 2: 3 pixels of class 1 all wrong.
    m = SegmentationMeter(2)
    m.update(torch.tensor([[[1, 0]]]), _lab([[1, 0]]))
    m.update(torch.tensor([[[0, 0, 0]]]), _lab([[1, 1, 1]]))
    # pooled class 1: TP 1, FN 3 -> 0.25; class 0: TP 1, FP 3 -> 0.25 (a per-image mean would differ)
    assert m.compute()["mIoU"] == pytest.approx(25.0)


# ---------------------------------------------------------------- saliency

def test_saliency_perfect():
    gt = _lab([[1, 0], [0, 1]])
    m = SaliencyMeter()
    m.update(gt[:, 0] * 255.0, gt)
    r = m.compute()
    assert r["maxF"] == pytest.approx(100.0) and r["mIoU"] == pytest.approx(100.0)


def test_saliency_partial_hand_computed():
    gt = _lab([[1, 1, 0, 0, 255]])
    p = torch.tensor([[[0.92, 0.32, 0.62, 0.12, 0.99]]]) * 255.0
    m = SaliencyMeter()
    m.update(p, gt)
    r = m.compute()
    # thresholds 0.65..0.90: only 0.92 predicted: P = 1, R = 1/2, F = 1.3·.5/(.3 + .5) = 0.8125 (the max)
    assert r["maxF"] == pytest.approx(81.25)
    # at 0.5: pred [1, 0, 1, 0] vs gt [1, 1, 0, 0]: IoU_fg = 1/3, IoU_bg = 1/3
    assert r["mIoU"] == pytest.approx(100 / 3)


def test_saliency_all_ignore_and_no_positive_prediction():
    m = SaliencyMeter()
    m.update(torch.full((1, 2, 2), 200.0), torch.full((1, 1, 2, 2), 255.0))
    assert m.compute() == {"maxF": 0.0, "mIoU": 0.0}
    m = SaliencyMeter()
    m.update(torch.zeros(1, 1, 2), _lab([[1, 0]]))  # predicts nothing salient: P = 0/0 -> F = 0
    r = m.compute()
    assert r["maxF"] == 0.0 and r["mIoU"] == pytest.approx(25.0)  # IoU_bg = 1/2, IoU_fg = 0


def test_saliency_threshold_count():
    assert len(SaliencyMeter().thresholds) == 19


# ---------------------------------------------------------------- normals

def _normals_case():
    angles = [10.0, 20.0, 40.0, 90.0]
    pred = torch.zeros(1, 3, 1, 5)
    gt = torch.zeros(1, 3, 1, 5)
    for i, a in enumerate(angles):
        t = math.radians(a)
        pred[0, :, 0, i] = torch.tensor([math.cos(t), math.sin(t), 0.0]) * 3.0  # unnormalised on purpose
        gt[0, :, 0, i] = torch.tensor([1.0, 0.0, 0.0])
    gt[0, :, 0, 4] = 255.0
    pred[0, :, 0, 4] = torch.tensor([0.0, 0.0, 1.0])
    return pred, gt, angles


def test_normals_known_angles():
    pred, gt, angles = _normals_case()
    m = NormalsMeter()
    m.update(normals_scores(pred), gt)
    r = m.compute()
    assert r["mean"] == pytest.approx(np.mean(angles), abs=1e-3)
    assert r["rmse"] == pytest.approx(math.sqrt(np.mean(np.square(angles))), abs=1e-3)
    assert r["median"] == pytest.approx(20.0, abs=0.01)  # lower median of 4 values, 0.01° histogram
    assert (r["11.25"], r["22.5"], r["30"]) == (25.0, 50.0, 50.0)


def test_normals_perfect_opposite_and_all_ignore():
    g = torch.nn.functional.normalize(torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    m = NormalsMeter()
    m.update(normals_scores(g), g)
    r = m.compute()
    assert r["mean"] == pytest.approx(0.0, abs=0.02) and r["30"] == 100.0 and r["median"] <= 0.02
    m = NormalsMeter()
    m.update(normals_scores(-g), g)
    assert m.compute()["mean"] == pytest.approx(180.0, abs=0.05)
    m = NormalsMeter()
    m.update(normals_scores(g), torch.full_like(g, 255.0))
    assert all(math.isnan(v) for v in m.compute().values())


# ---------------------------------------------------------------- depth

def test_depth_hand_computed_and_validity_range():
    pred = torch.tensor([1.5, 2.0, 4.0, 3.0, 3.0]).reshape(1, 1, 1, 5)
    gt = torch.tensor([2.0, 2.0, 2.0, 0.0, 90.0]).reshape(1, 1, 1, 5)  # last two invalid (0 and >= 80)
    pred_c, gt_c = pred.clone(), gt.clone()
    m = DepthMeter()
    m.update(depth_values(pred), gt)
    r = m.compute()
    assert torch.equal(pred, pred_c) and torch.equal(gt, gt_c)  # never in place
    p, g = np.array([1.5, 2.0, 4.0]), np.array([2.0, 2.0, 2.0])
    assert r["rmse"] == pytest.approx(math.sqrt(np.mean((g - p) ** 2)))
    assert r["log_rmse"] == pytest.approx(math.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)))
    assert r["abs_rel"] == pytest.approx(np.mean(np.abs(g - p) / g))
    assert r["sq_rel"] == pytest.approx(np.mean((g - p) ** 2 / g))
    # ratios 1.333, 1, 2 -> < 1.25: 1/3; < 1.5625: 2/3; < 1.953: 2/3
    assert (r["delta1"], r["delta2"], r["delta3"]) == pytest.approx((100 / 3, 200 / 3, 200 / 3))


def test_depth_negative_prediction_clamped_and_empty():
    m = DepthMeter()
    m.update(depth_values(torch.tensor([-1.0]).reshape(1, 1, 1, 1)), torch.tensor([1.0]).reshape(1, 1, 1, 1))
    assert m.compute()["rmse"] == pytest.approx(1.0)  # clamp to 0 -> replaced by 1e-9
    m = DepthMeter()
    m.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert math.isnan(m.compute()["rmse"])


# ---------------------------------------------------------------- edge proxy and post-processing

def test_edge_proxy_is_bce_on_probabilities_as_logits():
    scores = torch.tensor([[[255.0, 0.0, 127.5, 30.0]]])
    gt = _lab([[1, 0, 0, 255]])
    m = EdgeProxyMeter(0.95)
    m.update(scores, gt)
    x = np.array([1.0, 0.0, 0.5])
    y = np.array([1.0, 0.0, 0.0])
    s = 1 / (1 + np.exp(-x))
    expected = np.mean(-(0.95 * y * np.log(s) + 0.05 * (1 - y) * np.log(1 - s)))
    assert m.compute()["loss"] == pytest.approx(expected, rel=1e-9)


def test_postprocess_shapes_and_values():
    logits = torch.tensor([[[[0.0]], [[2.0]], [[1.0]]]])  # 1×3×1×1
    assert segmentation_labels(logits).tolist() == [[[1]]]
    sal = saliency_scores(torch.tensor([[[[0.0]], [[math.log(3.0)]]]]))
    assert sal.item() == pytest.approx(0.75 * 255, rel=1e-6)
    assert edge_scores(torch.zeros(1, 1, 2, 2)).shape == (1, 2, 2)
    assert edge_scores(torch.zeros(1, 1, 1, 1)).item() == pytest.approx(127.5)
    n = normals_scores(torch.tensor([0.0, 0.0, -5.0]).reshape(1, 3, 1, 1))
    assert n.flatten().tolist() == pytest.approx([127.5, 127.5, 0.0])
    d = torch.tensor([-1.0, 2.0]).reshape(1, 1, 1, 2)
    assert depth_values(d).flatten().tolist() == [0.0, 2.0] and d[0, 0, 0, 0].item() == -1.0


def test_crop_of_centred_padding_and_uint8_truncation():
    assert crop_offsets((448, 576), torch.tensor([425, 560])) == (11, 8, 425, 560)
    x = torch.arange(6 * 7, dtype=torch.float32).reshape(6, 7)
    c = crop_to_original(x, (3, 4))
    assert c.shape == (3, 4) and c[0, 0].item() == x[1, 1].item()
    u = edge_uint8(torch.full((4, 4), 254.9), (2, 2))
    assert u.dtype == torch.uint8 and u.shape == (2, 2) and int(u[0, 0]) == 254
    with pytest.raises(ValueError, match="larger"):
        crop_offsets((4, 4), (5, 4))
