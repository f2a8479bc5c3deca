"""Cityscapes through main.py: trained on resized images, scored and written at the labels' full resolution."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

import main as entry
from tests.engine.conftest import BASE_OPTS, ROOT

CONFIG = str(ROOT / "configs" / "demo" / "synthetic_cityscapes.yml")


def test_cityscapes_trains_and_scores_at_label_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    subprocess.run([sys.executable, "-m", "data.synthetic", "--dataset", "cityscapes", "--out", str(tmp_path / "db"),
                    "--train", "4", "--val", "2", "--size", "48", "96"], cwd=ROOT, check=True, capture_output=True)
    out = tmp_path / "run"
    argv = ["--config_exp", CONFIG, "--run_mode", "train", "--data_root", str(tmp_path / "db"), "--output_dir",
            str(out), "--opts", *BASE_OPTS, "crop_size=[32,64]", "input_size=[32,64]", "max_iter=2", "val_interval=2"]
    assert entry.main(argv) == 0
    final = json.loads((out / "metrics" / "metrics_iter000002.json").read_text())
    res = final["results"]
    assert set(res) == {"semseg", "depth"} and final["num_images"] == 2
    assert list(res["semseg"]["per_class"])[:3] == ["road", "sidewalk", "building"] and len(res["semseg"]["per_class"]) == 19
    assert {"rmse", "abs_rel", "delta1"} <= set(res["depth"])
    pngs = sorted((out / "predictions" / "semseg").glob("*.png"))
    assert [p.name for p in pngs] == ["lindau_000004_000019.png", "munster_000005_000019.png"]
    labels = np.array(Image.open(pngs[0]))
    assert labels.shape == (48, 96)  # the label resolution, not the 32x64 input
    from data.datasets.cityscapes import LABEL_IDS, TRAIN_TO_ID

    assert set(np.unique(labels).tolist()) <= set(TRAIN_TO_ID.tolist()) <= set(LABEL_IDS)  # labelIds
    assert np.array(Image.open(out / "predictions" / "depth" / pngs[0].name)).dtype == np.uint16
