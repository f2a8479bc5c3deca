"""The synthetic generator: exact layouts, determinism, idempotence, consistent scenes, the CLI."""
import json

import numpy as np
import pytest

from data.pascal_context import HUMAN_PART_GROUPS, VOC_CONTEXT_IDS
from data.datasets.pascal_context import GROUND_NORMAL, MAT_HEADER
from data.synthetic import generate, image_size, main, render_scene


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_pascal_layout_is_exact(tmp_path):
    root = generate("pascal", tmp_path, 2, 1, seed=0)
    assert root == tmp_path / "PASCALContext"
    files = set(_tree(root))
    ids = ["2008_000000", "2008_000001", "2008_000002"]
    expect = {"ImageSets/Context/train.txt", "ImageSets/Context/val.txt", "ImageSets/Parts/train.txt",
              "ImageSets/Parts/val.txt", "SYNTHETIC.json"}
    for i in ids:
        expect |= {f"JPEGImages/{i}.jpg", f"pascal-context/trainval/{i}.mat", f"human_parts/{i}.mat",
                   f"normals_distill/{i}.png", f"sal_distill/{i}.png"}
    expect |= {"semseg/VOC12/2008_000000.png", "semseg/VOC12/2008_000001.png",
               "semseg/pascal-context/2008_000002.png"}
    assert files == expect
    assert (root / "ImageSets/Context/train.txt").read_text().split() == ids[:2]
    assert (root / "ImageSets/Context/val.txt").read_text().split() == ids[2:]


def test_pascal_part_index_files_describe_the_mat_files(tmp_path):
    """ImageSets/Parts/<split>.txt: the original's JSON layout, the split's ids in order, and for each
    object of the image's human_parts .mat its class index (−1 for an empty mask)."""
    import scipy.io as sio

    from data.pascal_context import part_index_entry

    root = generate("pascal", tmp_path, 7, 6, seed=1)
    seen = set()
    for split in ("train", "val"):
        ids = (root / "ImageSets/Context" / f"{split}.txt").read_text().split()
        path = root / "ImageSets/Parts" / f"{split}.txt"
        text = path.read_text()
        lines = text.splitlines()
        assert lines[0] == "{" and lines[-1] == "}" and text.endswith("}\n")
        assert [ln.split('"')[1] for ln in lines[1:-1]] == ids
        assert all(ln.startswith('\t"') for ln in lines[1:-1])
        index = json.loads(text)
        assert list(index) == ids
        for sid in ids:
            mat = root / "human_parts" / f"{sid}.mat"
            assert index[sid] == part_index_entry(sio.loadmat(mat)["anno"], mat, sid), sid
            seen |= set(index[sid])
            # written after the .mat files, so a reader may trust it as not stale
            assert path.stat().st_mtime_ns >= mat.stat().st_mtime_ns
    assert {15, -1} <= seen and len(seen) >= 4  # persons, an empty-mask object and other classes occur


def test_nyud_layout_is_exact(tmp_path):
    root = generate("nyud", tmp_path, 1, 1, seed=0)
    expect = {"gt_sets/train.txt", "gt_sets/val.txt", "SYNTHETIC.json"}
    for i in ("0001", "0002"):
        expect |= {f"images/{i}.png", f"segmentation/{i}.png", f"depth/{i}.npy", f"normals/{i}.png",
                   f"edge/{i}.png"}
    assert set(_tree(root)) == expect
    d = np.load(root / "depth" / "0001.npy")
    assert d.dtype == np.float32 and d.shape == (96, 128)


def test_deterministic_for_a_seed(tmp_path):
    a = generate("pascal", tmp_path / "a", 2, 1, seed=7)
    b = generate("pascal", tmp_path / "b", 2, 1, seed=7)
    c = generate("pascal", tmp_path / "c", 2, 1, seed=8)
    for rel in _tree(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "JPEGImages/2008_000000.jpg").read_bytes() != (c / "JPEGImages/2008_000000.jpg").read_bytes()
    # no wall-clock time in the .mat headers (scipy's default), so the bytes match across seconds too
    mats = [rel for rel in _tree(a) if str(rel).endswith(".mat")]
    assert mats and all((a / rel).read_bytes()[:116].rstrip() == MAT_HEADER for rel in mats)
    x, y = render_scene("nyud", 7, 3), render_scene("nyud", 7, 3)
    for k in ("image", "depth", "segmentation", "normals"):
        np.testing.assert_array_equal(x[k], y[k])


def test_idempotent_and_safe(tmp_path):
    root = generate("nyud", tmp_path, 1, 1, seed=0)
    mtime = (root / "images" / "0001.png").stat().st_mtime_ns
    assert generate("nyud", tmp_path, 1, 1, seed=0) == root
    assert (root / "images" / "0001.png").stat().st_mtime_ns == mtime  # nothing rewritten
    with pytest.raises(FileExistsError, match="other parameters"):
        generate("nyud", tmp_path, 1, 1, seed=1)
    generate("nyud", tmp_path, 2, 1, seed=1, overwrite=True)
    assert json.loads((root / "SYNTHETIC.json").read_text())["seed"] == 1
    assert len((root / "gt_sets" / "train.txt").read_text().split()) == 2
    real = tmp_path / "real"
    (real / "PASCALContext").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        generate("pascal", real, 1, 1, overwrite=True)


def test_cli(tmp_path, capsys):
    assert main(["--dataset", "pascal", "--out", str(tmp_path), "--train", "2", "--val", "1", "--seed", "2",
                 "--size", "64", "80"]) == 0
    assert "wrote 2 train + 1 val" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(tmp_path / "PASCALContext" / "JPEGImages" / "2008_000000.jpg").size == (80, 64)
    assert main(["--dataset", "pascal", "--out", str(tmp_path), "--train", "2", "--val", "1", "--seed", "2",
                 "--size", "64", "80"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["--dataset", "pascal", "--out", str(tmp_path), "--train", "3", "--val", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_pascal_sizes_vary():
    assert {image_size("pascal", i) for i in range(4)} == {(128, 128), (128, 120), (120, 128)}
    assert image_size("nyud", 5) == (96, 128)


def test_pascal_scenes_are_consistent_across_tasks():
    seen_classes, seen_groups = set(), set()
    for idx in range(12):
        s = render_scene("pascal", 1, idx)
        inst, semseg, lm = s["instances"], s["semseg"], s["label_map"]
        objects = inst > 0
        # semseg: objects carry their VOC class (or the void outline), background is 0
        assert np.all((semseg[objects] > 0))
        assert np.all(semseg[~objects] != 255) or s["semseg_folder"] == "VOC12"
        assert np.all(np.isin(semseg[~objects], [0, 255]))
        # the LabelMap uses the PASCAL-Context id of each VOC class
        cls = semseg[objects & (semseg != 255)]
        np.testing.assert_array_equal(lm[objects & (semseg != 255)], np.array(VOC_CONTEXT_IDS)[cls])
        seen_classes |= set(np.unique(cls).tolist())
        # saliency = the objects
        np.testing.assert_array_equal(s["sal"].astype(bool), objects)
        np.testing.assert_array_equal(s["sal_png"] > 127, objects)
        # human parts only on (visible) persons
        hp = s["human_parts"]
        person_pixels = np.zeros_like(objects)
        for k, rec in enumerate(s["objects"], start=1):
            if rec["class_ind"] == 15:
                person_pixels |= rec["mask"].astype(bool)
        assert np.all(person_pixels[hp > 0])
        seen_groups |= set(np.unique(hp).tolist())
        # normals: unit vectors; the visible ground faces up and toward the camera
        assert np.allclose(np.linalg.norm(s["normals"], axis=-1), 1, atol=1e-5)
        ground = np.isin(lm, [8, 9])
        np.testing.assert_allclose(s["normals"][ground], np.broadcast_to(GROUND_NORMAL, (ground.sum(), 3)), atol=1e-6)
        # every third image has a person, the next one none
        has_person = any(r["class_ind"] == 15 and r["mask"].any() for r in s["objects"])
        if idx % 3 == 1:
            assert not has_person
    assert 15 in seen_classes and len(seen_classes) >= 4
    assert seen_groups == set(range(7))
    assert set(HUMAN_PART_GROUPS.values()) == set(range(1, 7))


def test_nyud_scene_geometry():
    s = render_scene("nyud", 2, 0)
    d = s["depth"]
    assert (d == 0).any() and np.all(d[d > 0] > 0.3) and d.max() < 15
    assert np.allclose(np.linalg.norm(s["normals"], axis=-1), 1, atol=1e-5)
    seg = s["segmentation"]
    assert (seg == 0).any() and {1, 2, 22} <= set(np.unique(seg).tolist())
    # the floor faces up, the ceiling down (stored frame: y up)
    assert np.all(s["normals"][seg == 2][:, 1] > 0.99) and np.all(s["normals"][seg == 22][:, 1] < -0.99)
    assert set(np.unique(s["edge_png"]).tolist()) == {0, 255}
