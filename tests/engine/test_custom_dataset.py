"""A dataset defined entirely in this file trains and evaluates end to end through main.py, with no
library file changed: a reader class, its DatasetSpec, the tasks it reuses, a plug-in label loader.

"ToyScenes" reads the images and semseg labels of the tiny synthetic PASCAL set from its own folder
(a symlink named ToyScenes); its edge labels come from a loader registered on the reader class.
"""
import json
import os

import numpy as np
import pytest
import torch
import yaml

import main as entry
from data.base import MultiTaskDataset
from data.common import as_hwc, read_rgb, read_single_channel, read_split, resolve_dataset_dir
from data.datasets import DatasetSpec, register_dataset, unregister_dataset
from data.tasks import register_task, task_info, unregister_task
from engine.config import ConfigError, load_config
from tests.engine.conftest import BASE_OPTS, CONFIG

NAME = "ToyScenes"
LOADED: list = []  # sample ids whose edge labels the plug-in loader produced


class ToyScenes(MultiTaskDataset):
    """Images and semseg labels in the PASCAL-Context file layout; other tasks via register_label."""

    db_name = NAME

    def __init__(self, root, split, tasks, transform=None):
        super().__init__(split, tasks, transform)
        self.root = resolve_dataset_dir(self.db_name, root)
        self.ids = read_split(self.root / "ImageSets" / "Context" / f"{split}.txt", self.db_name)

    def load_image(self, sid):
        return read_rgb(self.root / "JPEGImages" / f"{sid}.jpg", sid)

    def load_label(self, task, sid, hw):
        if task == "semseg":
            path = self.root / "semseg" / "VOC12" / f"{sid}.png"
            if not path.is_file():
                path = self.root / "semseg" / "pascal-context" / f"{sid}.png"
            return as_hwc(read_single_channel(path, sid))
        return super().load_label(task, sid, hw)


def semseg_boundaries(dataset, sid, hw):
    """Edge labels: pixels whose right or lower neighbour has another semseg class."""
    LOADED.append(sid)
    sem = dataset.load_label("semseg", sid, hw)[:, :, 0]
    edge = np.zeros(sem.shape, dtype=bool)
    edge[:, :-1] |= sem[:, :-1] != sem[:, 1:]
    edge[:-1, :] |= sem[:-1, :] != sem[1:, :]
    return edge.astype(np.float32)


@pytest.fixture
def toy_dataset():
    """Register ToyScenes (dataset, tasks, edge loader) for one test and remove every trace afterwards."""
    register_dataset(DatasetSpec(NAME, NAME, ToyScenes, crop_size=(48, 48), edge_w=0.9, edge_max_dist=0.01,
                                 description="toy scenes of the engine tests"))
    for task in ("semseg", "edge"):
        register_task(task_info("PASCALContext", task), NAME)
    ToyScenes.register_label("edge", semseg_boundaries)
    yield NAME
    ToyScenes.unregister_label("edge")
    for task in ("semseg", "edge"):
        unregister_task(task, NAME)
    unregister_dataset(NAME)


def _write_config(path, db_name):
    path.write_text(yaml.safe_dump({
        "_base_": CONFIG, "version_name": "toy", "train_db_name": db_name, "val_db_name": db_name,
        "task_dictionary": {"include_semseg": True, "include_edge": True, "include_human_parts": False,
                            "include_sal": False, "include_normals": False},
    }))
    return str(path)


def test_custom_dataset_trains_and_evaluates(tiny_data, tmp_path, monkeypatch, toy_dataset):
    monkeypatch.setenv("CI", "true")
    root = tmp_path / "db_root"
    root.mkdir()
    os.symlink(os.path.join(tiny_data, "PASCALContext"), root / NAME)
    cfg_path = _write_config(tmp_path / "toy.yml", NAME)
    out = tmp_path / "run"
    argv = ["--config_exp", cfg_path, "--run_mode", "train", "--data_root", str(root), "--output_dir", str(out),
            "--opts", *BASE_OPTS, "max_iter=2", "val_interval=2"]
    LOADED.clear()
    assert entry.main(argv) == 0
    assert LOADED  # the edge labels came from the registered loader (the loader runs in this process)

    for name in ("config.yml", "checkpoints/last.pth", "checkpoints/best.pth", "metrics/metrics_iter000002.json"):
        assert (out / name).is_file(), name
    final = json.loads((out / "metrics" / "metrics_iter000002.json").read_text())
    assert set(final["results"]) == {"semseg", "edge"} and final["num_images"] == 4
    assert "mIoU" in final["results"]["semseg"] and "odsF" in final["results"]["edge"]
    ck = torch.load(out / "checkpoints" / "last.pth", weights_only=False)
    assert ck["iteration"] == 2 and ck["config"]["db_name"] == NAME
    assert ck["config"]["TASKS"]["NAMES"] == ["semseg", "edge"] and ck["config"]["edge_w"] == 0.95  # the YAML's


def test_custom_dataset_config_defaults_come_from_its_spec(tmp_path, toy_dataset):
    cfg = load_config(_write_config(tmp_path / "toy.yml", NAME), opts=["crop_size=null"])
    assert cfg.db_name == NAME and tuple(cfg.TRAIN.SCALE) == (48, 48)


def test_unknown_dataset_in_config_is_one_line_listing_the_known_ones(tmp_path, toy_dataset):
    with pytest.raises(ConfigError) as err:
        load_config(_write_config(tmp_path / "nope.yml", "Nope"))
    msg = str(err.value)
    assert "\n" not in msg and "train_db_name" in msg and "'Nope'" in msg
    assert "PASCALContext, NYUD, Cityscapes, ToyScenes" in msg  # read from the registry at check time, plug-ins included


def test_registrations_are_gone_after_the_test():
    from data.datasets import dataset_names
    from data.tasks import TASK_ORDER, available_tasks

    assert NAME not in dataset_names() and ToyScenes.label_loader("edge") is None
    assert "edge" in TASK_ORDER and "edge" in available_tasks("PASCALContext")  # shared tasks untouched
