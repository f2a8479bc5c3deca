"""infer.py failure handling: unreadable inputs are skipped and summarised (same message with and without
DataLoader workers), and a bad --output or --device fails first, as one `error:` line with exit status 2."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import infer
from engine import inference, pictures, predict
from engine.inference import InferenceError
from engine.pictures import OVERVIEW_MAX_SIDE
from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, env_for_subprocess

TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]
GOOD = {"a1": (30, 40), "a2": (17, 48), "d": (100, 64)}  # name -> (h, w)
BAD = {"b_corrupt.jpg": "cannot identify image file", "c_truncated.png": "image file is truncated"}


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Three good images and two bad ones; with batch size 2 the second batch holds only the bad files."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for name, (h, w) in GOOD.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "b_corrupt.jpg").write_bytes(rng.bytes(500))
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "full.png").unlink()
    (folder / "c_truncated.png").write_bytes(data[: len(data) // 2])
    return folder


def _argv(ckpt, inp, out, *extra, data=None):
    argv = ["--config_exp", CONFIG, "--trained_model", str(ckpt), "--input", str(inp), "--output", str(out),
            *extra]
    if "--device" not in extra:
        argv += ["--device", "cpu"]
    if data:
        argv += ["--data_root", str(data)]
    return argv + ["--opts", *BASE_OPTS]


def _cli(*argv):
    """Run infer.py in a fresh process: (exit status, stderr)."""
    proc = subprocess.run([sys.executable, "infer.py", *argv], cwd=ROOT, env=env_for_subprocess(),
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr


def _error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _one_error(status, stderr, want_status=2) -> str:
    """The single `error:` line of a clean failure (no traceback)."""
    assert status == want_status, stderr
    assert "Traceback" not in stderr, stderr
    lines = _error_lines(stderr)
    assert len(lines) == 1, stderr
    return lines[0]


def test_unreadable_images_skipped_and_summarised_with_and_without_workers(checkpoint, mixed_folder, tmp_path):
    errors = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        status, stderr = _cli(*_argv(checkpoint, mixed_folder, out, "--batch_size", "2", "--workers", workers))
        line = _one_error(status, stderr, want_status=infer.EXIT_UNREADABLE)
        errors[workers] = line
        assert line.startswith("error: 2 of 5 images could not be read: "), line
        for bad, reason in BAD.items():
            assert f"{bad} ({reason}" in line, line
        for name, (h, w) in GOOD.items():
            for t in TASKS:
                assert Image.open(out / t / f"{name}.png").size == (w, h), (workers, t, name)
            assert (out / "overview" / f"{name}.png").is_file()
        written = sorted(p.stem for p in (out / "overview").iterdir())
        assert written == sorted(GOOD), written
    assert errors["0"] == errors["2"]


def test_batch_of_only_bad_images_has_no_forward_pass(checkpoint, mixed_folder, tmp_path, capsys, monkeypatch):
    sizes = []
    real = predict.predict_batch

    def counting(model, images, names, seed, amp=False):
        sizes.append(len(names))
        return real(model, images, names, seed, amp=amp)

    monkeypatch.setattr(predict, "predict_batch", counting)
    assert infer.main(_argv(checkpoint, mixed_folder, tmp_path / "o", "--batch_size", "2")) == infer.EXIT_UNREADABLE
    assert sizes == [2, 1]  # batches [a1, a2], [b_corrupt, c_truncated] (skipped), [d]
    line = _one_error(infer.EXIT_UNREADABLE, capsys.readouterr().err, infer.EXIT_UNREADABLE)
    assert "b_corrupt.jpg" in line and "c_truncated.png" in line


def test_all_images_unreadable(checkpoint, mixed_folder, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(mixed_folder / "b_corrupt.jpg", folder)
    assert infer.main(_argv(checkpoint, folder, tmp_path / "o")) == infer.EXIT_UNREADABLE
    line = _one_error(infer.EXIT_UNREADABLE, capsys.readouterr().err, infer.EXIT_UNREADABLE)
    assert line.startswith("error: 1 of 1 images could not be read: b_corrupt.jpg (cannot identify image file)")


def test_split_val_with_an_unreadable_sample(checkpoint, tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    root = data / "PASCALContext"
    bad_id = (root / "ImageSets" / "Context" / "val.txt").read_text().split()[1]
    (root / "JPEGImages" / f"{bad_id}.jpg").write_bytes(b"\x00not a jpeg" * 20)
    status = infer.main(_argv(checkpoint, "split:val", tmp_path / "v", data=data))
    line = _one_error(status, capsys.readouterr().err, infer.EXIT_UNREADABLE)
    assert line.startswith(f"error: 1 of 4 samples could not be read: {bad_id} (cannot read "), line
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["num_images"] == 3 and [u["name"] for u in m["unreadable"]] == [bad_id]
    assert len(list((tmp_path / "v" / "overview").glob("*.png"))) == 3


def test_output_is_a_regular_file_fails_before_the_model(tmp_path):
    """A missing checkpoint too: the error is about --output, so it was checked before the model."""
    out = tmp_path / "taken"
    out.write_text("a file")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    line = _one_error(*_cli(*_argv(tmp_path / "missing.pth", img, out)))
    assert line == (f"error: output folder {out}: is an existing file, not a folder; pass --output a folder you "
                    f"can write to (it is created when missing)")


def test_output_inside_a_file_and_blocked_subfolder(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    (tmp_path / "f").write_text("a file")
    assert infer.main(_argv(tmp_path / "missing.pth", img, tmp_path / "f" / "sub")) == 2
    line = _one_error(2, capsys.readouterr().err)
    assert f"{tmp_path / 'f'} is a file, not a folder" in line
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "overview").write_text("a file")
    assert infer.main(_argv(tmp_path / "missing.pth", img, tmp_path / "o")) == 2
    assert "the overview/ folder must go" in _one_error(2, capsys.readouterr().err)


def test_bad_device_names(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert infer.main(_argv(tmp_path / "missing.pth", img, tmp_path / "o", "--device", "gpu")) == 2
    line = _one_error(2, capsys.readouterr().err)
    assert line.startswith("error: --device gpu: unknown device name; use one of cpu"), line
    if torch.cuda.is_available():
        assert inference.resolve_device("cuda").type == "cuda"
        with pytest.raises(InferenceError, match="CUDA device"):
            inference.resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        assert infer.main(_argv(tmp_path / "missing.pth", img, tmp_path / "o", "--device", "cuda")) == 2
        line = _one_error(2, capsys.readouterr().err)
        assert "no CUDA device is visible" in line and "use --device cpu" in line, line
    assert inference.resolve_device(" CPU ").type == "cpu"
    assert inference.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bad_workers_and_checkpoint_are_one_line(checkpoint, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert infer.main(_argv(checkpoint, img, tmp_path / "o", "--workers", "-1")) == 2
    assert "--workers -1" in _one_error(2, capsys.readouterr().err)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert infer.main(_argv(bad, img, tmp_path / "o")) == 2
    assert str(bad) in _one_error(2, capsys.readouterr().err)
    assert infer.main(_argv(checkpoint, tmp_path / "nothing", tmp_path / "o")) == 2
    assert "no such file or folder" in _one_error(2, capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert infer.main(_argv(checkpoint, tmp_path / "empty", tmp_path / "o")) == 2
    assert "holds no image files" in _one_error(2, capsys.readouterr().err)
    argv = _argv(checkpoint, img, tmp_path / "o")
    argv[argv.index(CONFIG)] = str(tmp_path / "missing.yml")
    assert infer.main(argv) == 2
    assert "config file not found" in _one_error(2, capsys.readouterr().err)
    # the missing-dataset help text is several lines long: it still comes as one error line
    assert infer.main(_argv(checkpoint, "split:val", tmp_path / "o", data=tmp_path / "nodata")) == 2
    line = _one_error(2, capsys.readouterr().err)
    assert "dataset not found" in line and " | " in line and "--data_root" in line


def test_large_image_overview_is_capped(checkpoint, tmp_path):
    h, w = 200, 3000
    ramp = np.linspace(0, 255, w, dtype=np.float32).astype(np.uint8)
    Image.fromarray(np.repeat(np.tile(ramp, (h, 1))[..., None], 3, axis=2)).save(tmp_path / "wide.png")
    assert infer.main(_argv(checkpoint, tmp_path / "wide.png", tmp_path / "o")) == 0
    ov = Image.open(tmp_path / "o" / "overview" / "wide.png")
    assert max(ov.size) <= OVERVIEW_MAX_SIDE and max(ov.size) > OVERVIEW_MAX_SIDE - 50, ov.size
    for t in TASKS:
        assert Image.open(tmp_path / "o" / t / "wide.png").size == (w, h), t


def test_overview_picture_cap_with_ground_truth():
    from data.tasks import task_infos

    infos = task_infos("PASCALContext", ["semseg", "normals"])
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (120, 400, 3), dtype=np.uint8)
    maps = {"semseg": rng.integers(0, 21, (120, 400)).astype(np.int64),
            "normals": rng.normal(size=(120, 400, 3)).astype(np.float32)}
    gts = {t: (v, np.ones((120, 400), bool)) for t, v in maps.items()}
    small = pictures.overview_picture(infos, img, maps, gts, max_side=500)
    assert max(small.shape[:2]) <= 500 and small.shape[1] > 450
    full = pictures.overview_picture(infos, img, maps, gts, max_side=OVERVIEW_MAX_SIDE)
    from utils.visualization import class_legend

    legend = class_legend(maps["semseg"], infos["semseg"].class_names, 400).shape[0]  # the label maps' legend
    assert full.shape[:2] == (2 * (14 + 120 + legend + 2) + 2, 3 * (400 + 2) + 2)  # unchanged below the cap


def test_failure_summary_names_at_most_a_few():
    failed = [(f"f{i}.jpg", "cannot identify image file") for i in range(25)]
    text = inference.failure_summary(failed, 30, "images", "fix them")
    assert text.startswith("25 of 30 images could not be read: f0.jpg (cannot identify image file), ")
    assert "f19.jpg" in text and "f20.jpg" not in text and "and 5 more" in text and text.endswith("; fix them")
    assert inference.one_line("no layout:\n  a/   b\n\nc") == "no layout: | a/ b | c"


def test_a_failed_write_is_one_line_about_the_output_folder(tmp_path):
    import errno

    from utils.io import StorageError

    class Full:
        def add(self, done):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "semseg" / "a.png"))

    with pytest.raises(StorageError) as err:  # a storage failure names the file (infer.py: exit 75)
        inference.GuardWrites([Full()], str(tmp_path)).add(None)
    assert str(err.value) == f"cannot write {tmp_path / 'semseg' / 'a.png'}: No space left on device"

    class Gone:
        def add(self, done):
            raise OSError(errno.ENOENT, "No such file or directory")

    with pytest.raises(InferenceError) as err:
        inference.GuardWrites([Gone()], str(tmp_path)).add(None)
    assert str(err.value) == (f"output folder {tmp_path}: writing the predictions failed (No such file or directory); "
                              f"free disk space or pass another --output")
