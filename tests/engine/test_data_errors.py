"""A corrupt file read lazily during training or evaluation: the trained iterations are saved first, then
one `error:` line names the file (console and log.txt), exit status 2, no traceback, with or without
DataLoader workers; `data_errors: skip` leaves such samples out, counts them and reports them."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, env_for_subprocess


def _ids(root: Path, split: str) -> list:
    return (root / "PASCALContext" / "ImageSets" / "Context" / f"{split}.txt").read_text().split()


@pytest.fixture(scope="module")
def broken_data(tiny_data, tmp_path_factory):
    """A copy of the tiny set with one corrupt val JPEG and one truncated train saliency PNG."""
    root = tmp_path_factory.mktemp("broken") / "data"
    shutil.copytree(tiny_data, root)
    val_jpg = root / "PASCALContext" / "JPEGImages" / f"{_ids(root, 'val')[1]}.jpg"
    val_jpg.write_bytes(b"this is not a JPEG")
    sal = root / "PASCALContext" / "sal_distill" / f"{_ids(root, 'train')[2]}.png"
    sal.write_bytes(sal.read_bytes()[:40])
    return str(root), val_jpg, sal


def _run(data, out, *opts):
    cmd = [sys.executable, "main.py", "--config_exp", CONFIG, "--run_mode", "train", "--data_root", data,
           "--output_dir", str(out), "--opts", *BASE_OPTS, *opts]
    return subprocess.run(cmd, cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)


def _error_lines(text: str) -> list:
    return [ln for ln in text.splitlines() if "error:" in ln]


def _iteration(out: Path) -> int:
    return torch.load(out / "checkpoints" / "last.pth", weights_only=True)["iteration"]


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_val_image_saves_the_trained_iterations_then_one_line(broken_data, tmp_path, workers):
    data, val_jpg, _ = broken_data
    out = tmp_path / "run"
    # without the saliency task the truncated train label is never read: only the val image fails
    r = _run(data, out, "max_iter=2", "val_interval=2", f"eval_workers={workers}", "task_dictionary.include_sal=false")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    errors = _error_lines(r.stdout + r.stderr)
    assert len(errors) == 1 and str(val_jpg) in errors[0] and "data_errors: skip" in errors[0], errors
    assert _iteration(out) == 2  # written before the evaluation that failed
    assert str(val_jpg) in (out / "log.txt").read_text()


def test_corrupt_val_image_skipped_and_reported(broken_data, tmp_path):
    data, val_jpg, _ = broken_data
    out = tmp_path / "run"
    r = _run(data, out, "max_iter=1", "val_interval=1", "data_errors=skip", "task_dictionary.include_sal=false")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 unreadable sample(s)" in r.stdout + r.stderr and str(val_jpg) in r.stdout + r.stderr
    import json

    payload = json.loads((out / "metrics" / "metrics_iter000001.json").read_text())
    assert payload["num_images"] == 3 and len(payload["skipped_samples"]) == 1


def test_corrupt_train_label_aborts_after_saving_or_is_skipped(broken_data, tmp_path):
    data, _, sal = broken_data
    # 8 train images, batch 2: every epoch (4 iterations) reads every image once, so 8 iterations must
    # meet the broken one; val disabled by a long interval (the final evaluation would fail on val)
    out = tmp_path / "abort"
    r = _run(data, out, "max_iter=8", "val_interval=1000", "nworkers=2", "ckpt_interval=1")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    errors = _error_lines(r.stdout + r.stderr)
    assert len(errors) == 1 and str(sal) in errors[0], errors
    done = _iteration(out)
    assert 0 <= done < 8
    assert f"checkpoint at iteration {done}" in r.stdout

    out = tmp_path / "skip"
    r = _run(data, out, "max_iter=4", "val_interval=1000", "nworkers=0", "data_errors=skip",
             "task_dictionary.include_edge=false")
    # the final evaluation meets the broken val image too: skipped as well
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "training left out 1 unreadable sample(s)" in r.stdout + r.stderr
    assert _iteration(out) == 4
