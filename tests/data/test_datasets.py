"""The dataset registry (data/datasets.py) and the readers' plug-in label loaders (data/base.py)."""
import numpy as np
import pytest

from data import DatasetError, build_dataset
from data import tasks as task_table
from data.base import MultiTaskDataset
from data.common import DATASET_FOLDERS, missing_root_message, resolve_dataset_dir
from data.datasets import (DATASET_NAMES, DatasetSpec, dataset_names, dataset_spec, register_dataset,
                           unregister_dataset)
from data.nyud import NYUD
from data.pascal_context import PASCALContext
from data.tasks import Task, register_task, unregister_task


def test_builtin_datasets_carry_their_facts():
    assert dataset_names()[:2] == ("PASCALContext", "NYUD")
    pascal, nyud = dataset_spec("PASCALContext"), dataset_spec("NYUD")
    assert (pascal.folder, pascal.crop_size, pascal.edge_w, pascal.edge_max_dist) == \
        ("PASCALContext", (512, 512), 0.95, 0.0075)
    assert (nyud.folder, nyud.crop_size, nyud.edge_w, nyud.edge_max_dist) == ("NYUDv2", (448, 576), 0.90, 0.011)
    assert dict(pascal.split_sizes) == {"train": 4998, "val": 5105}
    assert dict(nyud.split_sizes) == {"train": 795, "val": 654}
    assert pascal.synthetic == "pascal" and nyud.synthetic == "nyud"
    # the older table-style names are live read-only views of the registry
    assert dict(DATASET_FOLDERS) == {"PASCALContext": "PASCALContext", "NYUD": "NYUDv2", "Cityscapes": "cityscapes"}
    assert task_table.DEFAULT_SCALE["NYUD"] == (448, 576)
    assert task_table.DEFAULT_EDGE_W["PASCALContext"] == 0.95
    assert task_table.EDGE_MAX_DIST["NYUD"] == 0.011
    with pytest.raises(TypeError):
        task_table.DEFAULT_EDGE_W["NYUD"] = 0.5


def test_unknown_dataset_lists_the_known_ones(cfg_factory, fresh_root):
    with pytest.raises(DatasetError, match=r"unknown dataset 'Nope'; known datasets: PASCALContext, NYUD") as err:
        dataset_spec("Nope")
    assert "\n" not in str(err.value)
    # build_dataset no longer sends unknown names to the NYUD reader
    with pytest.raises(DatasetError, match="known datasets: PASCALContext, NYUD"):
        build_dataset(cfg_factory("Nope", fresh_root, tasks=["semseg"]), "train")
    with pytest.raises(DatasetError, match="unknown dataset 'Nope'"):
        resolve_dataset_dir("Nope", fresh_root)


def test_register_replace_and_unregister():
    spec = DatasetSpec("Toy", "toy_folder", "data.nyud:NYUD", (64, 96), split_sizes={"val": 3})
    try:
        assert register_dataset(spec) is spec
        assert register_dataset(spec) is spec  # the same object again is fine
        assert "Toy" in DATASET_NAMES and dataset_names()[-1] == "Toy"
        assert DATASET_FOLDERS["Toy"] == "toy_folder" and task_table.DEFAULT_SCALE["Toy"] == (64, 96)
        other = DatasetSpec("Toy", "elsewhere", "data.nyud:NYUD", (32, 32))
        with pytest.raises(ValueError, match="already registered.*replace=True"):
            register_dataset(other)
        register_dataset(other, replace=True)
        assert dataset_spec("Toy").folder == "elsewhere"
    finally:
        unregister_dataset("Toy")
    assert "Toy" not in DATASET_NAMES and "Toy" not in DATASET_FOLDERS


@pytest.mark.parametrize("kw, match", [
    (dict(folder="a/b"), "folder"),
    (dict(crop_size=(64,)), "crop_size"),
    (dict(crop_size=(0, 64)), "crop_size"),
    (dict(edge_w=1.5), "edge_w"),
    (dict(reader=None), "reader"),
])
def test_spec_rejects_bad_fields(kw, match):
    args = dict(name="Bad", folder="Bad", reader="x:Y", crop_size=(64, 64)) | kw
    with pytest.raises(ValueError, match=match):
        DatasetSpec(**args)


def test_missing_root_message_of_a_plugin_dataset(tmp_path):
    register_dataset(DatasetSpec("Toy", "ToyFolder", "x:Y", (64, 64), description="toy scenes for tests",
                                 download="Copy it from the lab share."))
    try:
        msg = missing_root_message("Toy", tmp_path / "ToyFolder")
        for part in (str(tmp_path / "ToyFolder"), "toy scenes for tests", "Copy it from the lab share.",
                     "CONTAINS ToyFolder/", "--data_root", "TASKDIFFUSION_DATA"):
            assert part in msg, part
        assert "data.synthetic" not in msg and "Expected layout" not in msg
        with pytest.raises(DatasetError, match="Toy dataset not found"):
            resolve_dataset_dir("Toy", tmp_path)
        (tmp_path / "ToyFolder").mkdir()
        assert resolve_dataset_dir("Toy", tmp_path) == tmp_path / "ToyFolder"
    finally:
        unregister_dataset("Toy")


@pytest.fixture
def foreground_task():
    """A plug-in task 'foreground' (any labelled object vs background) on PASCALContext, removed afterwards."""
    task = Task("foreground", "discrete", 2, 2, 255, ("background", "object"), metric="mIoU")
    register_task(task, "PASCALContext")

    def load(dataset, sid, hw):
        semseg = dataset.load_label("semseg", sid, hw)[:, :, 0]
        return np.where(semseg == 255, 255, semseg > 0).astype(np.float32)

    PASCALContext.register_label("foreground", load)
    yield load
    PASCALContext.unregister_label("foreground")
    unregister_task("foreground", "PASCALContext")


def test_plugin_label_loader_adds_a_task(synth_root, tmp_path, foreground_task):
    assert "foreground" in task_table.available_tasks("PASCALContext")
    ds = PASCALContext(synth_root, "val", tasks=["foreground", "semseg"], cache_dir=tmp_path)
    assert ds.tasks == ["semseg", "foreground"]  # canonical order: built-ins first
    s = ds.load_sample(0)
    sem, fg = s["semseg"][:, :, 0], s["foreground"]
    assert fg.shape == sem.shape + (1,) and fg.dtype == np.float32
    assert np.array_equal(fg[:, :, 0], np.where(sem == 255, 255, sem > 0))
    assert PASCALContext.label_loader("foreground") is foreground_task
    assert NYUD.label_loader("foreground") is None and MultiTaskDataset.label_loader("foreground") is None

    class Sub(PASCALContext):  # subclasses inherit the loader, and may override it for themselves only
        pass

    assert Sub.label_loader("foreground") is foreground_task
    Sub.register_label("foreground", lambda d, sid, hw: np.zeros(hw, np.float32))
    assert Sub.label_loader("foreground") is not foreground_task
    assert PASCALContext.label_loader("foreground") is foreground_task
    with pytest.raises(ValueError, match="already has a label loader"):
        PASCALContext.register_label("foreground", lambda d, sid, hw: None)


def test_plugin_label_loader_errors(synth_root, tmp_path, foreground_task):
    PASCALContext.register_label("foreground", lambda d, sid, hw: np.zeros((3, 3), np.float32), replace=True)
    ds = PASCALContext(synth_root, "val", tasks=["foreground"], cache_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"foreground label loader .* returned shape \(3, 3, 1\)"):
        ds.load_sample(0)
    PASCALContext.unregister_label("foreground")
    with pytest.raises(DatasetError, match=r"no label loader for task 'foreground'.*PASCALContext.register_label"):
        ds.load_sample(0)
