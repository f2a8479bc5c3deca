"""A task defined entirely in this file, with no library file changed: a binary 'foreground' task whose
labels the PASCAL reader derives from the synthetic semseg. Registered, it trains and evaluates end to end
through the engine (main.py): metrics JSON, TensorBoard scalars and pictures, prediction PNGs, checkpoint.
This is the worked example of docs/extending.md."""
import json

import numpy as np
import pytest

import main as main_mod
from data.pascal_context import PASCALContext
from data.tasks import Task, register_task, unregister_task
from evaluation.postprocess import segmentation_labels
from evaluation.segmentation import SegmentationMeter
from losses.task_losses import masked_cross_entropy
from tests.engine.conftest import BASE_OPTS, CONFIG

FOREGROUND = Task(
    "foreground", "discrete", num_classes=2, num_outputs=2, ignore_value=255,
    class_names=("background", "foreground"), metric="mIoU", sample_rule=("argmax",),
    loss=masked_cross_entropy, meter=SegmentationMeter.for_task, postprocess=segmentation_labels)


def foreground_label(dataset, sample_id, image_hw) -> np.ndarray:
    """1 where the semseg label is an object class, 0 on background, 255 where semseg is unlabelled."""
    semseg = dataset.load_label("semseg", sample_id, image_hw)
    return np.where(semseg == 255, 255.0, (semseg > 0).astype(np.float32)).astype(np.float32)


@pytest.fixture
def foreground_task():
    register_task(FOREGROUND, "PASCALContext")
    PASCALContext.register_label("foreground", foreground_label)
    yield FOREGROUND
    PASCALContext.unregister_label("foreground")
    unregister_task("foreground", "PASCALContext")


def test_a_task_defined_in_a_test_trains_and_evaluates_end_to_end(foreground_task, tiny_data, tmp_path):
    out = tmp_path / "run"
    argv = ["--config_exp", CONFIG, "--run_mode", "train", "--data_root", tiny_data, "--output_dir", str(out),
            "--opts", *BASE_OPTS, "max_iter=2", "val_interval=2", "task_dictionary.include_foreground=true",
            "task_dictionary.include_human_parts=false", "loss_kwargs.loss_weights.foreground=1.0"]
    assert main_mod.main(argv) == 0

    metrics = json.loads((out / "metrics" / "metrics_iter000002.json").read_text())
    fg = metrics["results"]["foreground"]
    assert set(fg["per_class"]) == {"background", "foreground"} and 0.0 <= fg["mIoU"] <= 100.0
    assert "foreground" in metrics["headline"]
    pngs = sorted((out / "predictions" / "foreground").glob("*.png"))
    assert len(pngs) == 4
    from PIL import Image

    assert set(np.unique(np.asarray(Image.open(pngs[0])))) <= {0, 1}  # label ids, palette PNG

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "loss/foreground" in events.Tags()["scalars"] and "val/foreground/mIoU" in events.Tags()["scalars"]
    assert any("val_images" in t for t in events.Tags()["images"])
    import torch

    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert any("foreground" in k for k in state)  # the decoder has the task's own embedding and heads


def test_a_user_defined_task_gets_ensemble_uncertainty_from_its_kind(foreground_task, tiny_data, tmp_path):
    """eval_samples: 3 with the test-defined task: its default aggregation and uncertainty come from its kind
    (discrete: mean probabilities, entropy + mutual information), scored and pictured like a built-in task."""
    out = tmp_path / "run"
    argv = ["--config_exp", CONFIG, "--run_mode", "train", "--data_root", tiny_data, "--output_dir", str(out),
            "--opts", *BASE_OPTS, "max_iter=1", "val_interval=1", "task_dictionary.include_foreground=true",
            "task_dictionary.include_human_parts=false", "loss_kwargs.loss_weights.foreground=1.0",
            "eval_samples=3", "samples_chunk=2", "eval_aggregation.foreground=vote"]
    assert main_mod.main(argv) == 0
    fg = json.loads((out / "metrics" / "metrics_iter000001.json").read_text())["results"]["foreground"]
    assert fg["unc_map"] == "entropy" and fg["unc_pixels"] > 0 and fg["unc_ause_random"] >= 0
    for key in ("entropy", "mutual_info"):
        arrays = sorted((out / "predictions" / f"foreground_{key}").glob("*.npy"))
        assert len(arrays) == 4 and np.load(arrays[0]).max() <= np.log(2) + 1e-6
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "val/foreground/unc_ause" in events.Tags()["scalars"]
    assert "val_uncertainty/foreground" in events.Tags()["images"]
