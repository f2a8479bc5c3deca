"""infer.py: a folder of images of different sizes -> every per-task file at the original size plus an
overview; per-image seeded sampling (batch size does not matter); split:val also writes metrics.json."""
import json

import numpy as np
import pytest
from PIL import Image

import infer
from tests.engine.conftest import BASE_OPTS, CONFIG

SIZES = {"wide": (30, 40), "big": (100, 64), "thin": (17, 48)}  # "big" is larger than the 48×48 network size
TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / (f"{name}.jpg" if name == "thin" else f"{name}.png"))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _infer(ckpt, inp, out, *extra, data=None):
    argv = ["--config_exp", CONFIG, "--trained_model", ckpt, "--input", str(inp), "--output", str(out),
            "--device", "cpu", *extra]
    if data:
        argv += ["--data_root", data]
    return infer.main(argv + ["--opts", *BASE_OPTS])


def test_folder_of_images(checkpoint, images, tmp_path):
    assert _infer(checkpoint, images, tmp_path / "a", "--batch_size", "2", "--seed", "7") == 0
    for name, (h, w) in SIZES.items():
        for t in TASKS:
            im = Image.open(tmp_path / "a" / t / f"{name}.png")
            assert im.size == (w, h), (t, name)
            assert im.mode == {"semseg": "P", "human_parts": "P", "normals": "RGB"}.get(t, "L")
        assert (tmp_path / "a" / "overview" / f"{name}.png").is_file()
    assert not (tmp_path / "a" / "metrics.json").exists()
    # the same seed with another batch size gives the same predictions (noise is drawn per image)
    assert _infer(checkpoint, images, tmp_path / "b", "--batch_size", "1", "--seed", "7") == 0
    for name in SIZES:
        for t in TASKS:
            a = np.asarray(Image.open(tmp_path / "a" / t / f"{name}.png"))
            b = np.asarray(Image.open(tmp_path / "b" / t / f"{name}.png"))
            assert np.array_equal(a, b), (t, name)


def test_single_image_and_bad_input(checkpoint, images, tmp_path, capsys):
    assert _infer(checkpoint, images / "wide.png", tmp_path / "one") == 0
    assert sorted(p.name for p in (tmp_path / "one" / "semseg").iterdir()) == ["wide.png"]
    assert _infer(checkpoint, tmp_path / "missing", tmp_path / "x") == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_split_val_writes_metrics(checkpoint, tiny_data, tmp_path):
    assert _infer(checkpoint, "split:val", tmp_path / "v", "--batch_size", "3", data=tiny_data) == 0
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["num_images"] == 4 and set(m["results"]) == set(TASKS) and "odsF" in m["results"]["edge"]
    assert len(list((tmp_path / "v" / "overview").glob("*.png"))) == 4
    assert all(len(list((tmp_path / "v" / t).glob("*.png"))) == 4 for t in TASKS)


def test_depth_writer(tmp_path):
    from data.tasks import task_infos

    depth = task_infos("NYUD", ["depth"])["depth"]
    paths = depth.write(str(tmp_path), "0001", np.array([[0.5, 2.25], [10.0, 0.0]], np.float32))
    import cv2

    mm = cv2.imread(paths[0], cv2.IMREAD_UNCHANGED)
    assert mm.dtype == np.uint16 and mm.tolist() == [[500, 2250], [10000, 0]]
    assert np.asarray(Image.open(tmp_path / "depth_color" / "0001.png")).shape == (2, 2, 3)


def test_export_edges_for_seism_matches_infer(checkpoint, tiny_data, tmp_path, capsys):
    """The SEISM exporter (shared CLI with infer.py) writes one PNG per val image, the same bytes as
    infer.py's edge output for split:val with the same seed, and fails cleanly on a bad checkpoint."""
    from tools.export_edges_for_seism import main as export_main

    common = ["--config_exp", CONFIG, "--device", "cpu", "--data_root", tiny_data, "--seed", "3"]
    assert export_main(common + ["--trained_model", checkpoint, "--output", str(tmp_path / "x"),
                                 "--batch_size", "3", "--opts", *BASE_OPTS]) == 0
    pngs = sorted((tmp_path / "x" / "edge").glob("*.png"))
    assert len(pngs) == 4
    assert _infer(checkpoint, "split:val", tmp_path / "v", "--batch_size", "1", "--seed", "3", data=tiny_data) == 0
    for p in pngs:
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(tmp_path / "v" / "edge" / p.name))), p.name
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert export_main(common + ["--trained_model", str(bad), "--output", str(tmp_path / "y"),
                                 "--opts", *BASE_OPTS]) == 2
    assert "error:" in capsys.readouterr().err


def test_amp_cpu_runs_inference_in_bf16(checkpoint, tiny_data, tmp_path):
    """amp_cpu=true switches CPU inference to bf16 autocast: close to fp32, not bit-identical."""
    outs = {}
    for name, extra in (("fp32", []), ("bf16", ["amp_cpu=true"])):
        argv = ["--config_exp", CONFIG, "--trained_model", checkpoint, "--input", "split:val", "--output",
                str(tmp_path / name), "--device", "cpu", "--data_root", tiny_data, "--seed", "1"]
        assert infer.main(argv + ["--opts", *BASE_OPTS, *extra]) == 0
        outs[name] = json.loads((tmp_path / name / "metrics.json").read_text())["results"]
    a, b = outs["fp32"]["normals"]["mean"], outs["bf16"]["normals"]["mean"]
    assert a != b and abs(a - b) < 0.05 * a, (a, b)


def test_samples_write_uncertainty_maps(checkpoint, images, tmp_path):
    """--samples 4: aggregated predictions, every task's uncertainty maps as float .npy (original size) and
    colour-mapped PNG with a colour bar, and an uncertainty row in the overview."""
    assert _infer(checkpoint, images, tmp_path / "e", "--samples", "4", "--batch_size", "2") == 0
    assert _infer(checkpoint, images, tmp_path / "one", "--batch_size", "2") == 0
    maps = {"semseg": ["entropy", "mutual_info"], "human_parts": ["entropy", "mutual_info"],
            "sal": ["entropy", "mutual_info"], "normals": ["angular_dev"], "edge": ["entropy"]}
    for name, (h, w) in SIZES.items():
        for t, keys in maps.items():
            assert Image.open(tmp_path / "e" / t / f"{name}.png").size == (w, h)
            for k in keys:
                arr = np.load(tmp_path / "e" / f"{t}_{k}" / f"{name}.npy")
                assert arr.shape == (h, w) and arr.dtype == np.float32 and np.isfinite(arr).all(), (t, k)
                assert arr.min() >= 0 and arr.max() > 0, (t, k)  # 4 differing draws: some spread
                png = Image.open(tmp_path / "e" / f"{t}_{k}" / f"{name}.png")
                assert png.size[0] == w and png.size[1] > h  # the colour bar is underneath
            if keys[0] == "entropy":
                assert arr.max() <= np.log(21) + 1e-5
        ov_e = Image.open(tmp_path / "e" / "overview" / f"{name}.png")
        ov_1 = Image.open(tmp_path / "one" / "overview" / f"{name}.png")
        assert ov_e.size[1] > ov_1.size[1]  # the uncertainty row
    assert not (tmp_path / "one" / "semseg_entropy").exists()
    # bad value: one line, exit 2
    assert _infer(checkpoint, images, tmp_path / "x", "--samples", "0") == 2


def test_split_val_with_samples_scores_the_uncertainty(checkpoint, tiny_data, tmp_path):
    """--samples 3 on split:val: every task's AUSE, random-order AUSE and Spearman in metrics.json and one
    sparsification plot per task; the batch size does not change any number."""
    for bs in ("3", "1"):
        assert _infer(checkpoint, "split:val", tmp_path / bs, "--samples", "3", "--batch_size", bs,
                      data=tiny_data) == 0
    a = json.loads((tmp_path / "3" / "metrics.json").read_text())
    b = json.loads((tmp_path / "1" / "metrics.json").read_text())
    for t in TASKS:
        r = a["results"][t]
        assert {"unc_ause", "unc_ause_random", "unc_spearman", "unc_curves"} <= set(r), t
        assert r["unc_ause_random"] >= 0 and len(r["unc_curves"]["oracle"]) == 100
        assert Image.open(tmp_path / "3" / "uncertainty" / f"{t}.png").size[0] > 100
        for k in ("unc_ause", "unc_ause_random", "unc_spearman", "unc_pixels"):
            assert b["results"][t][k] == pytest.approx(r[k], rel=1e-6, abs=1e-9, nan_ok=True), (t, k)
    assert a["results"]["edge"]["unc_threshold"] == pytest.approx(a["results"]["edge"]["ods_threshold"], abs=0.005)
