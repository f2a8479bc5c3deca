"""Cityscapes: the official label table, depth from disparity per camera, the synthetic set in the exact layout,
verify checks, full-resolution scoring, and agreement with cityscapesscripts' official evaluator."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from data import DatasetError
from data.datasets import cityscapes as cs
from data.synthetic import generate, render_scene, sample_index
from data.verify import verify_dataset

SEED = 5


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cs")
    generate("cityscapes", root, 4, 3, seed=SEED, size=(64, 128))
    return root


def test_label_table_is_the_official_one():
    from cityscapesscripts.helpers.labels import labels

    assert cs.TRAIN_CLASSES == tuple(l.name for l in sorted((l for l in labels if 0 <= l.trainId < 19),
                                                            key=lambda l: l.trainId))
    assert cs.train_ids(np.array([10, 23, 7, 0, 1, 33, 34, 250])).tolist() == [255, 10, 0, 255, 255, 18, 255, 255]
    assert cs.label_ids(np.array([10, 0, 18, 255])).tolist() == [23, 7, 33, 0]  # sky is id 23, rail track is 10


def test_synthetic_layout_is_exact(cs_root):
    root = cs_root / "cityscapes"
    imgs = sorted(p.relative_to(root).as_posix() for p in (root / "leftImg8bit").rglob("*.png"))
    assert imgs[0] == "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert "leftImg8bit/val/frankfurt/frankfurt_000006_000019_leftImg8bit.png" in imgs  # val: the val cities
    for kind in ("gtFine", "disparity", "camera"):
        n = len(list((root / kind).rglob("*_*")))
        assert n == 7, kind
    sid = "bochum_000001_000019"
    p = Image.open(root / "disparity" / "train" / "bochum" / f"{sid}_disparity.png")
    assert p.mode in ("I;16", "I") and np.array(p).dtype in (np.uint16, np.int32)
    cam = json.loads((root / "camera" / "train" / "bochum" / f"{sid}_camera.json").read_text())
    assert 0.2 < cam["extrinsic"]["baseline"] < 0.23 and cam["intrinsic"]["fx"] == pytest.approx(2262.52 * 128 / 2048,
                                                                                                   rel=0.03)
    ids = np.array(Image.open(root / "gtFine" / "train" / "bochum" / f"{sid}_gtFine_labelIds.png"))
    assert {1, 2, 4} <= set(np.unique(ids).tolist())  # void ids of real frames: ego vehicle, border, static
    assert set(np.unique(ids).tolist()) <= set(cs.LABEL_IDS)


def test_reader_decodes_labels_and_metric_depth(cs_root):
    ds = cs.Cityscapes(cs_root, "train", ("semseg", "depth"))
    assert ds.ids == ["aachen_000000_000019", "aachen_000003_000019", "bochum_000001_000019", "bremen_000002_000019"]
    for i, sid in enumerate(ds.ids):
        s = ds[i]
        truth = render_scene("cityscapes", SEED, sample_index("cityscapes", sid), (64, 128), "train")
        np.testing.assert_array_equal(s["semseg"][:, :, 0], cs.train_ids(truth["labelIds"]))
        valid = truth["disparity_png"] > 1
        depth = s["depth"][:, :, 0]
        assert (depth[~valid] == 0).all() and (depth[valid] > 0).all()
        # quantisation of the 1/256 px disparity steps only
        d = truth["camera"]["extrinsic"]["baseline"] * truth["camera"]["intrinsic"]["fx"] / truth["depth"][valid]
        np.testing.assert_allclose(depth[valid], truth["depth"][valid], rtol=float((0.6 / 256 / d).max()) + 1e-6)
    edge = cs.Cityscapes(cs_root, "train", ("edge",))[0]["edge"][:, :, 0]  # the optional boundary task
    truth = render_scene("cityscapes", SEED, 0, (64, 128), "train")
    np.testing.assert_array_equal(edge, cs.edges_from_labelmap(truth["labelIds"].astype(np.int64)))
    assert 0 < edge.mean() < 0.3
    disp = cs.Cityscapes(cs_root, "train", ("depth",), depth_target="disparity")[0]["depth"][:, :, 0]
    p = np.array(Image.open(cs_root / "cityscapes/disparity/train/aachen/aachen_000000_000019_disparity.png"))
    np.testing.assert_array_equal(disp, np.where(p > 0, (p.astype(np.float64) - 1) / 256, 0).astype(np.float32))


def test_input_size_resizes_images_and_keeps_val_labels_at_full_resolution(cs_root):
    train = cs.Cityscapes(cs_root, "train", ("semseg", "depth"), input_size=(32, 64))[0]
    assert train["image"].shape == (32, 64, 3) and train["semseg"].shape == (32, 64, 1)
    assert "orig_size" not in train["meta"]
    val = cs.Cityscapes(cs_root, "val", ("semseg", "depth"), input_size=(32, 64))[0]
    assert val["image"].shape == (32, 64, 3) and val["semseg"].shape == (64, 128, 1) and val["depth"].shape == (64, 128, 1)
    assert val["meta"]["orig_size"] == (64, 128) and val["meta"]["img_size"] == (32, 64)
    small = cs.Cityscapes(cs_root, "val", ("semseg",), input_size=(32, 64), eval_resolution="input")[0]
    assert small["semseg"].shape == (32, 64, 1) and "orig_size" not in small["meta"]
    with pytest.raises(DatasetError, match="depth_target"):
        cs.Cityscapes(cs_root, "val", ("depth",), depth_target="inverse")


def test_evaluator_scores_at_label_resolution(cs_root):
    """Predictions at the input size are upsampled to the full-resolution labels before scoring."""
    from easydict import EasyDict

    import torch.nn.functional as F

    from data import build_dataloader
    from evaluation.multitask import MultiTaskEvaluator

    cfg = EasyDict(db_name="Cityscapes", db_root=str(cs_root), TASKS=EasyDict(NAMES=["semseg", "depth"]),
                   TRAIN=EasyDict(SCALE=[32, 64]), TEST=EasyDict(SCALE=[32, 64]), input_size=[32, 64],
                   valBatch=2, nworkers=0, seed=0)
    batch = next(iter(build_dataloader(cfg, "val", batch_size=2)))
    assert batch["image"].shape[-2:] == (32, 64) and batch["semseg"].shape[-2:] == (64, 128)
    g = torch.Generator().manual_seed(0)
    pred = {"semseg": torch.randn(2, 19, 32, 64, generator=g), "depth": torch.rand(2, 1, 32, 64, generator=g) * 50}
    ev = MultiTaskEvaluator("Cityscapes", ["semseg", "depth"], depth_min=0.0, depth_max=256.0)
    ev.update(pred, batch)
    got = ev.compute()
    ref = MultiTaskEvaluator("Cityscapes", ["semseg", "depth"], depth_min=0.0, depth_max=256.0)
    up = {t: F.interpolate(v, size=(64, 128), mode="bilinear", align_corners=False) for t, v in pred.items()}
    ref.update(up, {k: v for k, v in batch.items() if k != "meta"} | {"meta": {"img_name": batch["meta"]["img_name"],
                                                                             "img_size": [(64, 128)] * 2}})
    want = ref.compute()
    assert got["semseg"]["mIoU"] == pytest.approx(want["semseg"]["mIoU"], abs=1e-9)
    assert got["depth"]["rmse"] == pytest.approx(want["depth"]["rmse"], rel=1e-9)


def test_verify_finds_broken_files(cs_root, tmp_path, capsys):
    assert verify_dataset("Cityscapes", cs_root, deep=True, workers=1, progress=False).errors == []
    root = tmp_path / "db"
    shutil.copytree(cs_root, root)
    d = root / "cityscapes"
    (d / "camera/train/aachen/aachen_000003_000019_camera.json").write_text('{"extrinsic": {"baseline": 0}, "intrinsic": {"fx": 9}}')
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(d / "disparity/train/bochum/bochum_000001_000019_disparity.png")
    ids = np.array(Image.open(d / "gtFine/val/lindau/lindau_000004_000019_gtFine_labelIds.png"))
    ids[0, 0] = 99
    Image.fromarray(ids).save(d / "gtFine/val/lindau/lindau_000004_000019_gtFine_labelIds.png")
    (d / "disparity/val/munster/munster_000005_000019_disparity.png").unlink()
    report = verify_dataset("Cityscapes", root, deep=True, workers=1, progress=False)
    found = {(p.kind, re.search(r"[a-z]+_\d{6}_\d{6}", p.path).group(0)) for p in report.errors}
    assert found == {("unreadable", "aachen_000003_000019"), ("unreadable", "bochum_000001_000019"),
                     ("value range", "lindau_000004_000019"), ("missing file", "munster_000005_000019")}, found
    text = " ".join(p.detail for p in report.errors)
    assert "16-bit" in text and "baseline 0.0 and fx 9.0 must be positive" in text and "[99]" in text


def test_predictions_match_the_official_evaluator(tmp_path, monkeypatch):
    """mIoU and per-class IoU of this framework = cityscapesscripts' evalPixelLevelSemanticLabeling on the same
    labelId PNGs (GT in the official layout, predictions written by the semseg task's writer)."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    rng = np.random.default_rng(0)
    root = tmp_path / "cityscapes"
    sids = ["frankfurt_000000_000019", "lindau_000001_000019", "munster_000002_000019"]
    for sid in sids:
        city = cs.city_of(sid)
        for kind in ("leftImg8bit", "gtFine"):
            (root / kind / "val" / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((48, 96, 3), np.uint8)).save(root / "leftImg8bit/val" / city / f"{sid}_leftImg8bit.png")
        gt = rng.choice(cs.LABEL_IDS, size=(48, 96)).astype(np.uint8)  # every id, voids included
        Image.fromarray(gt).save(root / "gtFine/val" / city / f"{sid}_gtFine_labelIds.png")
    from evaluation.base import EvalContext
    from evaluation.segmentation import SegmentationMeter

    ds = cs.Cityscapes(tmp_path, "val", ("semseg",))
    meter = SegmentationMeter.for_task(cs.SEMSEG, EvalContext("Cityscapes"))
    preds, gts = [], []
    for i, sid in enumerate(ds.ids):
        gt = ds[i]["semseg"][:, :, 0]
        pred = np.where(rng.random(gt.shape) < 0.5, np.where(gt < 19, gt, 0), rng.integers(0, 19, gt.shape))
        meter.update(torch.as_tensor(pred)[None], torch.as_tensor(gt)[None, None])
        preds += cs.SEMSEG.write(str(tmp_path / "pred"), sid, pred.astype(np.int64))
        gts.append(str(root / "gtFine/val" / cs.city_of(sid) / f"{sid}_gtFine_labelIds.png"))
    ours = meter.compute()

    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = official.args
    monkeypatch.setattr(args, "evalInstLevelScore", False)
    monkeypatch.setattr(args, "JSONOutput", False)
    monkeypatch.setattr(args, "quiet", True)
    monkeypatch.setattr(args, "exportFile", str(tmp_path / "result.json"))
    result = official.evaluateImgLists(preds, gts, args)
    theirs = {name: 100.0 * v for name, v in result["classScores"].items() if not np.isnan(v)}
    assert set(theirs) == set(cs.TRAIN_CLASSES)
    for name in cs.TRAIN_CLASSES:
        assert ours["per_class"][name] == pytest.approx(theirs[name], abs=1e-6), name
    assert ours["mIoU"] == pytest.approx(100.0 * result["averageScoreClasses"], abs=1e-6)
    assert 25 < ours["mIoU"] < 50  # not vacuous: half the pixels agree (IoU about 1/3 per class)


@pytest.mark.parametrize("rel", ["configs/cityscapes/vitL.yml", "configs/cityscapes/swinL.yml",
                                 "configs/demo/synthetic_cityscapes.yml"])
def test_shipped_cityscapes_configs(rel):
    from engine.config import load_config

    cfg = load_config(rel)
    assert cfg.db_name == "Cityscapes" and cfg.TASKS.NAMES == ["semseg", "depth"]  # edge available, off
    assert cfg.TASKS.NUM_OUTPUT == {"semseg": 19, "depth": 1} and cfg.delta_m_reference is None
    assert cfg.depth_target == "metres" and cfg.eval_resolution == "label" and cfg.ignore_invalid_area_depth
    assert tuple(cfg.input_size) == tuple(cfg.TRAIN.SCALE) == tuple(cfg.TEST.SCALE)
    assert dict(cfg.loss_kwargs.loss_weights) == {"semseg": 1.0, "depth": 1.0, "load_balancing": 0.0003}
    if "demo" not in rel:
        assert cfg.TRAIN.SCALE == (512, 1024) and cfg.max_iter == 40000


def test_configs_and_reader_options():
    from engine.config import load_config
    from utils.config import ConfigError

    cfg = load_config("configs/cityscapes/vitL.yml")
    assert cfg.TRAIN.SCALE == (512, 1024) and cfg.input_size == [512, 1024] and cfg.eval_resolution == "label"
    assert (cfg.depth_min, cfg.depth_max) == (0.0, 256.0) and cfg.TASKS.NAMES == ["semseg", "depth"]
    assert load_config("configs/nyud/vitL.yml").depth_max == 80.0  # NYUD's range is unchanged
    with pytest.raises(ConfigError, match="input_size.*not read by the PASCALContext reader"):
        load_config("configs/demo/synthetic_pascal.yml", opts=["input_size=[64,64]"])
    with pytest.raises(ConfigError, match="depth_target"):
        load_config("configs/cityscapes/vitL.yml", opts=["depth_target=inverse"])
