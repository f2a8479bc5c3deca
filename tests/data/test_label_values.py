"""Bad label values are named when the sample is read (Task.check_label, called by the generic reader for
every dataset): NaN/Inf depth or normals and class ids outside the task's classes and ignore value raise
DatasetError naming the file and the sample, as an unreadable file does; valid labels pass unchanged."""
import numpy as np
import pytest
from PIL import Image

from data import DatasetError, build_dataset
from data.tasks import task_info


def test_check_label_rules():
    depth = task_info("NYUD", "depth")
    assert depth.check_label(np.array([[0.0, 1.5], [80.0, 3.0]], np.float32)) is None
    assert depth.check_label(np.array([[np.nan, 1.0], [np.inf, 2.0]], np.float32)) == "2 non-finite value(s) (NaN, +Inf)"
    normals = task_info("NYUD", "normals")
    assert "1 non-finite value(s) (-Inf)" == normals.check_label(np.array([[[0, 0, -np.inf]]], np.float32))
    seg = task_info("PASCALContext", "semseg")  # 21 classes, ignore 255
    assert seg.check_label(np.array([[0, 20, 255]], np.float32)) is None
    msg = seg.check_label(np.array([[0, 21, 254, 21, -1]], np.float32))
    assert msg == "4 pixel(s) with value(s) -1, 21, 254 outside its class ids 0..20 and the ignore value 255"
    assert "2.5" in seg.check_label(np.array([[2.5]], np.float32))  # not a class id at all
    assert task_info("PASCALContext", "sal").check_label(np.array([[0, 1, 255]], np.float32)) is None
    assert task_info("PASCALContext", "sal").check_label(np.array([[2]], np.float32)) is not None
    assert task_info("NYUD", "semseg").check_label(np.array([[39, 40]], np.float32)).startswith("1 pixel(s) with value(s) 40")


def _nyud(root, cfg_factory, split="train"):
    return build_dataset(cfg_factory("NYUD", root, tasks=["semseg", "depth"]), split)


def test_a_nan_depth_names_the_file_and_sample(fresh_root, cfg_factory):
    ds = _nyud(fresh_root, cfg_factory)
    sid = ds.ids[1]
    path = fresh_root / "NYUDv2" / "depth" / f"{sid}.npy"
    depth = np.load(path)
    depth.flat[7] = np.nan
    np.save(path, depth)
    ds[0]  # the other samples are fine
    with pytest.raises(DatasetError) as err:
        ds.load_sample(1)
    msg = str(err.value)
    assert f"bad depth label values in {path} (sample {sid!r}): 1 non-finite value(s) (NaN)" in msg, msg
    assert "data_errors=skip" in msg


def test_an_out_of_range_class_id_names_the_file(fresh_root, cfg_factory):
    ds = _nyud(fresh_root, cfg_factory)
    sid = ds.ids[0]
    path = fresh_root / "NYUDv2" / "segmentation" / f"{sid}.png"
    seg = np.array(Image.open(path))
    seg[0, :3] = 60  # NYUD stores id + 1: 60 -> class 59 of 40
    Image.fromarray(seg).save(path)
    with pytest.raises(DatasetError, match=rf"bad semseg label values in .*{sid}\.png \(sample '{sid}'\).*value\(s\) 59 "):
        ds.load_sample(0)


def test_a_plug_in_loader_is_checked_too(fresh_root, cfg_factory):
    ds = _nyud(fresh_root, cfg_factory)
    NYUDv2 = type(ds)  # the reader class, wherever its module lives
    NYUDv2.register_label("depth", lambda self, sid, hw: np.full(tuple(hw), np.inf, np.float32), replace=True)
    try:
        with pytest.raises(DatasetError, match=r"bad depth label values in \(sample .*non-finite"):
            ds.load_sample(0)
    finally:
        NYUDv2.unregister_label("depth")
