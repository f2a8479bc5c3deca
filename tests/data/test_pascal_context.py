"""PASCAL-Context reader: every modality decoded as docs/method.md#pascal-context-labels says, checked against the generator's truth."""
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io as sio
from scipy.ndimage import convolve
from skimage.morphology import thin

from data.pascal_context import (
    HUMAN_PART_GROUPS,
    NORMALS_VALID_IDS,
    PASCALContext,
    human_parts_from_anno,
    part_index_entry,
)
from data.datasets.pascal_context import _anno_struct
from data.synthetic import render_scene, sample_index

SEED = 3


def _truth(sid):
    return render_scene("pascal", SEED, sample_index("pascal", sid))


def _edges_reference(label_map):
    """Spec docs/method.md#pascal-context-boundaries written independently: Laplacian kernel with reflect-101 borders, ≠ 0, thinning."""
    k = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    lap = convolve(label_map.astype(np.float64), k, mode="mirror")  # scipy 'mirror' = reflect-101
    return thin(lap != 0)


@pytest.fixture(scope="module")
def train_set(synth_root, tmp_path_factory):
    return PASCALContext(synth_root, "train", cache_dir=tmp_path_factory.mktemp("pcache"))


@pytest.fixture(scope="module")
def scanned_root(synth_root, tmp_path_factory):
    """A copy of the synthetic PASCAL set without ImageSets/Parts: the reader must scan the .mat files."""
    root = tmp_path_factory.mktemp("no_parts_index")
    shutil.copytree(synth_root / "PASCALContext", root / "PASCALContext",
                    ignore=lambda folder, names: ["Parts"] if Path(folder).name == "ImageSets" else [])
    assert not (root / "PASCALContext" / "ImageSets" / "Parts").exists()
    return root


def _count_mat_reads(monkeypatch):
    """Record (folder, id) of every .mat file the reader opens from now on."""
    import data.pascal_context as pc

    reads, real = [], pc.load_mat

    def counting(path, sid, key=None):
        reads.append((Path(path).parent.name, sid))
        return real(path, sid, key)

    monkeypatch.setattr(pc, "load_mat", counting)
    return reads


def _count_scans(monkeypatch):
    """Count the reader's part-index scans (one per dataset that builds its index from the .mat files)."""
    scans, real = [], PASCALContext._build_part_index

    def counting(self):
        scans.append(self.split)
        return real(self)

    monkeypatch.setattr(PASCALContext, "_build_part_index", counting)
    return scans


def test_sample_structure(train_set):
    s = train_set[0]
    assert list(s) == ["image", "semseg", "human_parts", "sal", "normals", "edge", "meta"]
    h, w = s["meta"]["img_size"]
    assert s["image"].shape == (h, w, 3) and s["image"].dtype == np.float32
    for t in ("semseg", "human_parts", "sal", "edge"):
        assert s[t].shape == (h, w, 1) and s[t].dtype == np.float32, t
    assert s["normals"].shape == (h, w, 3) and s["normals"].dtype == np.float32
    assert s["meta"]["img_name"] == train_set.ids[0]


def test_every_modality_matches_the_generator(train_set):
    sizes, folders = set(), set()
    for i in range(len(train_set)):
        s = train_set[i]
        sid = s["meta"]["img_name"]
        g = _truth(sid)
        sizes.add(s["meta"]["img_size"])
        folders.add(g["semseg_folder"])
        assert s["meta"]["img_size"] == g["image"].shape[:2]
        # JPEG is lossy (and the synthetic images are noisy): close, not equal; R/B swapped would be ~60
        assert np.abs(s["image"] - g["image"].astype(np.float32)).mean() < 8.0
        np.testing.assert_array_equal(s["semseg"][..., 0], g["semseg"])
        np.testing.assert_array_equal(s["human_parts"][..., 0], g["human_parts"])
        np.testing.assert_array_equal(s["sal"][..., 0], g["sal"])
        # normals: 2v/255 − 1 where the LabelMap class is normals-valid, zero elsewhere
        valid = np.isin(g["label_map"], NORMALS_VALID_IDS)
        decoded = 2.0 * g["normals_png"].astype(np.float32) / 255.0 - 1.0
        np.testing.assert_allclose(s["normals"][valid], decoded[valid], atol=1e-6)
        assert np.all(s["normals"][~valid] == 0)
        norms = np.linalg.norm(s["normals"][valid], axis=-1)
        assert np.all(np.abs(norms - 1) < 0.02)
        np.testing.assert_array_equal(s["edge"][..., 0].astype(bool), _edges_reference(g["label_map"]))
    assert len(sizes) > 1, "the synthetic set should have several image sizes"
    assert folders == {"VOC12", "pascal-context"}, "both semseg folders must be exercised"


def test_semseg_values_and_ignore(train_set):
    vals = set()
    for i in range(len(train_set)):
        vals |= set(np.unique(train_set[i]["semseg"]).tolist())
    assert 255 in vals and 15 in vals and 0 in vals
    assert all(v == 255 or 0 <= v <= 20 for v in vals)


def test_human_parts_and_part_index(train_set):
    # the generator puts a person in every third image and leaves some persons unannotated
    with_parts = [sid for sid in train_set.ids if _truth(sid)["has_human_parts"]]
    assert with_parts, "at least one image with human parts"
    for sid in train_set.ids:
        g = _truth(sid)
        idx = train_set.part_index[sid]
        assert len(idx) == len(g["objects"])
        for cls, rec in zip(idx, g["objects"]):
            assert cls == (rec["class_ind"] if rec["mask"].sum() > 0 else -1)
    s = train_set[train_set.ids.index(with_parts[0])]
    assert set(np.unique(s["human_parts"]).tolist()) <= set(range(7))
    assert len(np.unique(s["human_parts"])) >= 4  # head, torso, arms, legs on a person


def test_part_mapping_table_matches_spec():
    groups = {}
    for name, g in HUMAN_PART_GROUPS.items():
        groups.setdefault(g, set()).add(name)
    assert len(HUMAN_PART_GROUPS) == 24
    assert groups[1] == {"hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"}
    assert groups[2] == {"neck", "torso"}
    assert groups[3] == {"luarm", "ruarm"}
    assert groups[4] == {"llarm", "rlarm", "lhand", "rhand"}
    assert groups[5] == {"luleg", "ruleg"}
    assert groups[6] == {"llleg", "rlleg", "lfoot", "rfoot"}


def test_anno_parsing_rules(tmp_path):
    """Later persons overwrite earlier ones; non-persons and persons without parts are skipped."""
    h, w = 6, 8
    a = np.zeros((h, w), np.uint8)
    a[1:4, 1:4] = 1
    b = np.zeros((h, w), np.uint8)
    b[2:5, 2:6] = 1
    records = [
        {"class": "cat", "class_ind": 8, "mask": a, "parts": [("head", a)]},  # not a person: ignored
        {"class": "person", "class_ind": 15, "mask": a, "parts": [("torso", a), ("lhand", a & 0)]},
        {"class": "person", "class_ind": 15, "mask": b, "parts": []},  # no part annotation: skipped
        {"class": "person", "class_ind": 15, "mask": b, "parts": [("rfoot", b)]},
        {"class": "person", "class_ind": 15, "mask": np.zeros((h, w), np.uint8), "parts": []},
    ]
    path = tmp_path / "x.mat"
    sio.savemat(path, {"anno": _anno_struct("x.jpg", records)})
    anno = sio.loadmat(path)["anno"]
    assert part_index_entry(anno, path, "x") == [8, 15, 15, 15, -1]
    out = human_parts_from_anno(anno, path, "x")
    expect = np.zeros((h, w), np.uint8)
    expect[a.astype(bool)] = 2
    expect[b.astype(bool)] = 6
    np.testing.assert_array_equal(out, expect)
    # no qualifying person at all → None (the reader then returns an all-zero map)
    sio.savemat(path, {"anno": _anno_struct("x.jpg", records[:1] + records[2:3])})
    assert human_parts_from_anno(sio.loadmat(path)["anno"], path, "x") is None


def test_image_without_parts_is_all_zero(train_set):
    no_parts = [sid for sid in train_set.ids if not _truth(sid)["has_human_parts"]]
    assert no_parts
    s = train_set[train_set.ids.index(no_parts[0])]
    assert s["human_parts"].shape[:2] == s["meta"]["img_size"]
    assert np.all(s["human_parts"] == 0)


def test_cache_lives_outside_the_dataset_and_matches_uncached(synth_root, tmp_path):
    before = sorted(p for p in (synth_root / "PASCALContext").rglob("*"))
    cache = tmp_path / "c"
    cached = PASCALContext(synth_root, "val", cache_dir=cache)
    first = [cached[i] for i in range(len(cached))]
    again = [cached[i] for i in range(len(cached))]  # served from the npz cache
    plain = PASCALContext(synth_root, "val", cache_dir=tmp_path / "unused", disk_cache=False)
    assert sorted(p for p in (synth_root / "PASCALContext").rglob("*")) == before, "dataset folder modified"
    # the synthetic set ships ImageSets/Parts like the real tarball: no part index is built or cached
    assert not list(cache.glob("PASCALContext-*/parts_index_val.json"))
    assert len(list(cache.glob("PASCALContext-*/labelmap/*.npz"))) == len(cached)
    for i, (x, y) in enumerate(zip(first, again)):
        z = plain[i]
        for t in ("edge", "normals", "human_parts"):
            np.testing.assert_array_equal(x[t], y[t])
            np.testing.assert_array_equal(x[t], z[t])


def test_stale_cache_is_recomputed(fresh_root, tmp_path):
    cache = tmp_path / "c"
    ds = PASCALContext(fresh_root, "train", tasks=["edge"], cache_dir=cache)
    edge0 = ds[0]["edge"]
    sid = ds.ids[0]
    mat = fresh_root / "PASCALContext" / "pascal-context" / "trainval" / f"{sid}.mat"
    lm = sio.loadmat(mat)["LabelMap"]
    lm[:, : lm.shape[1] // 2] = 440  # a new vertical boundary
    sio.savemat(mat, {"LabelMap": lm})
    st = os.stat(mat)
    os.utime(mat, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    edge1 = ds[0]["edge"]
    assert not np.array_equal(edge0, edge1)
    np.testing.assert_array_equal(edge1[..., 0].astype(bool), _edges_reference(lm))


def test_laplacian_matches_opencv_default():
    """The reader's OpenCV call is the 4-neighbour kernel with reflect-101 (docs/method.md#pascal-context-boundaries)."""
    rng = np.random.default_rng(0)
    lm = rng.integers(0, 4, (9, 11)).astype(np.float64)
    k = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    np.testing.assert_allclose(cv2.Laplacian(lm, cv2.CV_64F), convolve(lm, k, mode="mirror"))


def test_subset_of_tasks(synth_root, tmp_path):
    ds = PASCALContext(synth_root, "val", tasks=["sal", "semseg"], cache_dir=tmp_path)
    assert ds.tasks == ["semseg", "sal"]
    assert set(ds[0]) == {"image", "semseg", "sal", "meta"}


def test_part_index_is_built_once_by_concurrent_openers(scanned_root, tmp_path, monkeypatch):
    """Ranks opening the dataset at the same time: one builds the part index, the others wait for its
    file instead of reading every .mat file again (exclusive lock in the cache folder)."""
    import threading
    import time

    import data.pascal_context as pc

    calls, real = [], pc.part_index_entry

    def slow_entry(anno, path, sid):
        calls.append(sid)
        time.sleep(0.02)  # long enough for the openers to overlap
        return real(anno, path, sid)

    monkeypatch.setattr(pc, "part_index_entry", slow_entry)
    start = threading.Barrier(3)
    results = []

    def open_it():
        start.wait()
        results.append(PASCALContext(scanned_root, "train", tasks=["human_parts"], cache_dir=tmp_path).part_index)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and results[0] == results[1] == results[2]
    assert sorted(calls) == sorted(results[0])  # every image indexed exactly once, not three times


# ---------------------------------------------------------------- the shipped part index (ImageSets/Parts)

@pytest.mark.parametrize("split", ["train", "val"])
def test_shipped_part_index_replaces_the_scan(synth_root, scanned_root, tmp_path, split, monkeypatch):
    """With ImageSets/Parts/<split>.txt the reader opens no human_parts .mat to index the split, caches
    nothing, and gives exactly the index and labels of the scanning branch (which still works without)."""
    reads = _count_mat_reads(monkeypatch)
    scans = _count_scans(monkeypatch)
    scanned = PASCALContext(scanned_root, split, tasks=["human_parts"], cache_dir=tmp_path / "scan")
    assert scans == [split] and sorted(sid for folder, sid in reads if folder == "human_parts") == sorted(scanned.ids)
    assert list((tmp_path / "scan").glob(f"PASCALContext-*/parts_index_{split}.json"))

    reads.clear()
    shipped = PASCALContext(synth_root, split, tasks=["human_parts"], cache_dir=tmp_path / "shipped")
    assert scans == [split] and reads == [], "the shipped index should make the scan unnecessary"
    assert not list((tmp_path / "shipped").glob("PASCALContext-*/parts_index_*.json"))

    assert shipped.ids == scanned.ids
    assert shipped.part_index == scanned.part_index and list(shipped.part_index) == shipped.ids
    assert shipped.has_parts == scanned.has_parts and any(shipped.has_parts.values())
    for i in range(len(shipped)):
        a, b = shipped[i], scanned[i]
        g = _truth(a["meta"]["img_name"])
        assert a["meta"] == b["meta"]
        np.testing.assert_array_equal(a["human_parts"], b["human_parts"])
        np.testing.assert_array_equal(a["human_parts"][..., 0], g["human_parts"])


def _open_train(root, cache, **kw):
    return PASCALContext(root, "train", tasks=["human_parts"], cache_dir=cache, **kw)


def test_shipped_part_index_content_is_what_the_reader_uses(fresh_root, tmp_path, monkeypatch):
    """Proof that the file is read, not re-derived: an index claiming no objects at all is obeyed."""
    scans = _count_scans(monkeypatch)
    truth = _open_train(fresh_root, tmp_path / "a")
    assert scans == [] and any(truth.has_parts.values())
    parts = fresh_root / "PASCALContext" / "ImageSets" / "Parts" / "train.txt"
    parts.write_text(json.dumps({sid: [] for sid in truth.ids}))
    emptied = _open_train(fresh_root, tmp_path / "b")
    assert scans == [] and emptied.part_index == {sid: [] for sid in truth.ids}
    assert not any(emptied.has_parts.values())
    assert all(np.all(emptied[i]["human_parts"] == 0) for i in range(len(emptied)))


def test_shipped_part_index_covers_a_shortened_split(fresh_root, tmp_path, monkeypatch):
    """Extra ids in the shipped index (e.g. after trimming the split file) are fine: only the split's
    entries are kept, in split order."""
    scans = _count_scans(monkeypatch)
    full = _open_train(fresh_root, tmp_path / "a")
    split = fresh_root / "PASCALContext" / "ImageSets" / "Context" / "train.txt"
    split.write_text(full.ids[1] + "\n")
    short = _open_train(fresh_root, tmp_path / "b")
    assert scans == [] and short.part_index == {full.ids[1]: full.part_index[full.ids[1]]}


@pytest.mark.parametrize("case", ["missing", "lacks_an_id", "not_json", "ids_per_line", "a_list",
                                  "bad_values", "older_than_a_mat"])
def test_unusable_shipped_part_index_falls_back_to_the_scan(fresh_root, tmp_path, case, monkeypatch):
    scans = _count_scans(monkeypatch)
    expect = _open_train(fresh_root, tmp_path / "ref").part_index
    assert scans == []
    ds_dir = fresh_root / "PASCALContext"
    parts = ds_dir / "ImageSets" / "Parts" / "train.txt"
    ids = list(expect)
    if case == "missing":
        parts.unlink()
    elif case == "lacks_an_id":
        parts.write_text(json.dumps({ids[0]: expect[ids[0]]}))
    elif case == "not_json":
        parts.write_text("{ this is not JSON")
    elif case == "ids_per_line":
        parts.write_text("\n".join(ids) + "\n")
    elif case == "a_list":
        parts.write_text(json.dumps([[sid, expect[sid]] for sid in ids]))
    elif case == "bad_values":
        parts.write_text(json.dumps({sid: "15" for sid in ids}))
    else:  # an annotation edited after the index was written: the index may be stale
        mat = ds_dir / "human_parts" / f"{ids[0]}.mat"
        st = os.stat(mat)
        os.utime(mat, ns=(st.st_atime_ns, parts.stat().st_mtime_ns + 10**9))
    ds = _open_train(fresh_root, tmp_path / "scan")
    assert scans == ["train"] and ds.part_index == expect
