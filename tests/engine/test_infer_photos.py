"""infer.py on real photos: EXIF orientation applied before prediction (outputs and overview as viewers show
the photo), --recursive with the output tree mirroring the input tree, a summary counting the files skipped
as not images, --trained_model alone (the config stored in the checkpoint), a checkpoint of another
experiment in one short line, and a full disk in one `cannot write` line with status 75."""
import errno
import os

import numpy as np
import pytest
import torch
from PIL import Image

import infer
from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, tiny_cfg
from tests.engine.test_infer_errors import _one_error

TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]
NYUD_CONFIG = str(ROOT / "configs" / "demo" / "synthetic_nyud.yml")


@pytest.fixture(scope="module")
def run_checkpoint(tiny_data, tmp_path_factory):
    """A checkpoint that carries its config (as training writes them)."""
    from models import build_model
    from utils.checkpoint import build_state, save_checkpoint
    from utils.config import config_to_dict

    out = tmp_path_factory.mktemp("run")
    cfg = tiny_cfg(tiny_data, out)
    torch.manual_seed(0)
    return save_checkpoint(build_state(build_model(cfg), iteration=3, config=config_to_dict(cfg)), str(out))[0]


def _infer(ckpt, inp, out, *extra, config=CONFIG):
    argv = (["--config_exp", config] if config else []) + ["--trained_model", str(ckpt), "--input", str(inp),
                                                          "--output", str(out), "--device", "cpu", *extra]
    return infer.main(argv + (["--opts", *BASE_OPTS] if config else []))


def _pixels(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_exif_orientation_is_applied_before_prediction(run_checkpoint, tmp_path):
    """A phone photo: landscape pixels (30x40) with orientation 6 (rotate 90° clockwise to view) predicts
    exactly as the upright 40x30 picture a viewer shows."""
    raw = _pixels(30, 40)
    phone, upright = tmp_path / "phone", tmp_path / "upright"
    phone.mkdir()
    upright.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(raw).save(phone / "photo.jpg", exif=exif, quality=100)
    shown = np.asarray(Image.open(phone / "photo.jpg").convert("RGB"))  # the decoded pixels, before rotation
    Image.fromarray(np.rot90(shown, k=-1).copy()).save(upright / "photo.png")  # what a viewer shows
    assert _infer(run_checkpoint, phone, tmp_path / "a") == 0
    assert _infer(run_checkpoint, upright, tmp_path / "b") == 0
    for t in TASKS + ["overview"]:
        a = Image.open(tmp_path / "a" / t / "photo.png")
        b = Image.open(tmp_path / "b" / t / "photo.png")
        if t != "overview":
            assert a.size == (30, 40), t  # (width, height) as the viewer shows it
        assert np.array_equal(np.asarray(a), np.asarray(b)), t


def test_recursive_mirrors_the_tree_and_the_summary_counts_non_images(run_checkpoint, tmp_path, capsys):
    src = tmp_path / "photos"
    (src / "trip" / "day1").mkdir(parents=True)
    (src / "home").mkdir()
    Image.fromarray(_pixels(20, 24, 1)).save(src / "top.png")
    Image.fromarray(_pixels(20, 24, 2)).save(src / "trip" / "day1" / "a.jpg")
    Image.fromarray(_pixels(20, 24, 3)).save(src / "home" / "a.png")
    (src / "notes.txt").write_text("not an image")
    (src / "trip" / "list.csv").write_text("x")
    (src / ".DS_Store").write_bytes(b"\0")
    assert _infer(run_checkpoint, src, tmp_path / "o", "--recursive") == 0
    for t in TASKS + ["overview"]:
        got = sorted(str(p.relative_to(tmp_path / "o" / t)) for p in (tmp_path / "o" / t).rglob("*.png"))
        assert got == ["home/a.png", "top.png", "trip/day1/a.png"], (t, got)
    text = capsys.readouterr().out
    assert "inputs: 3 predicted, 0 unreadable, 2 skipped as not images (notes.txt, trip/list.csv)" in text, text
    assert _infer(run_checkpoint, src, tmp_path / "flat") == 0  # without --recursive: the top folder only
    assert sorted(p.name for p in (tmp_path / "flat" / "semseg").rglob("*.png")) == ["top.png"]
    assert "inputs: 1 predicted, 0 unreadable, 1 skipped as not images (notes.txt)" in capsys.readouterr().out


def test_a_folder_with_images_only_in_subfolders_suggests_recursive(run_checkpoint, tmp_path, capsys):
    (tmp_path / "p" / "sub").mkdir(parents=True)
    Image.fromarray(_pixels(8, 8)).save(tmp_path / "p" / "sub" / "x.png")
    assert _infer(run_checkpoint, tmp_path / "p", tmp_path / "o") == 2
    assert "add --recursive" in _one_error(2, capsys.readouterr().err)


def test_trained_model_alone_uses_the_stored_config(run_checkpoint, tmp_path):
    Image.fromarray(_pixels(30, 40)).save(tmp_path / "x.png")
    assert _infer(run_checkpoint, tmp_path / "x.png", tmp_path / "alone", config=None) == 0
    assert _infer(run_checkpoint, tmp_path / "x.png", tmp_path / "given") == 0
    for t in TASKS:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "alone" / t / "x.png")),
                              np.asarray(Image.open(tmp_path / "given" / t / "x.png"))), t


def test_trained_model_alone_without_a_stored_config_says_what_to_pass(checkpoint, tmp_path, capsys):
    Image.fromarray(_pixels(8, 8)).save(tmp_path / "x.png")
    assert _infer(checkpoint, tmp_path / "x.png", tmp_path / "o", config=None) == 2
    line = _one_error(2, capsys.readouterr().err)
    assert "holds no config" in line and "--config_exp" in line, line


def test_a_checkpoint_of_another_experiment_is_one_short_line(run_checkpoint, tmp_path, capsys):
    Image.fromarray(_pixels(8, 8)).save(tmp_path / "x.png")
    argv = ["--config_exp", NYUD_CONFIG, "--trained_model", str(run_checkpoint), "--input", str(tmp_path / "x.png"),
            "--output", str(tmp_path / "o"), "--device", "cpu", "--opts", "crop_size=[48,48]"]
    assert infer.main(argv) == 2
    line = _one_error(2, capsys.readouterr().err)
    assert f"checkpoint {run_checkpoint} was trained for PASCALContext" in line and "not for the NYUD" in line, line
    assert "differ in db_name, tasks" in line and "missing key" not in line and len(line) < 600, line


def test_a_full_disk_while_writing_predictions(run_checkpoint, tmp_path, monkeypatch, capsys):
    import utils.visualization as vis

    Image.fromarray(_pixels(8, 8)).save(tmp_path / "x.png")
    real = vis.atomic_write

    def full(path, write, **kw):
        if os.sep + "sal" + os.sep in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write, **kw)

    monkeypatch.setattr(vis, "atomic_write", full)
    status = _infer(run_checkpoint, tmp_path / "x.png", tmp_path / "o")
    line = _one_error(status, capsys.readouterr().err, want_status=75)
    assert "cannot write" in line and "No space left on device" in line and "run the same command" in line, line


def test_a_full_disk_in_the_seism_export_is_one_line(checkpoint, tiny_data, tmp_path, monkeypatch, capsys):
    import utils.io as io_mod
    from tools.export_edges_for_seism import main as export_main

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", full)
    status = export_main(["--config_exp", CONFIG, "--device", "cpu", "--data_root", tiny_data, "--trained_model",
                          checkpoint, "--output", str(tmp_path / "x"), "--opts", *BASE_OPTS])
    line = _one_error(status, capsys.readouterr().err, want_status=75)
    assert f"cannot write {tmp_path / 'x' / 'edge'}" in line and "No space left on device" in line, line
