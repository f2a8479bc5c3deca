"""data.verify: cheap layout checks, --deep decoding, split sizes, and agreement with the readers."""
import shutil

import numpy as np
import pytest
from PIL import Image

from data import DatasetError
from data.common import resolve_dataset_dir
from data.pascal_context import PASCALContext
from data.synthetic import generate
from data.datasets.pascal_context import PascalChecks
from data.verify import main, verify_dataset

PASCAL_FILES = PascalChecks.files


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tiny db_root (PASCAL 4 train / 2 val, NYUD 3 train / 2 val, 32x32), copied by `root` per test."""
    root = tmp_path_factory.mktemp("pristine")
    generate("pascal", root, 4, 2, seed=2, size=(32, 32))
    generate("nyud", root, 3, 2, seed=2, size=(32, 32))
    return root


@pytest.fixture
def root(pristine, tmp_path):
    dst = tmp_path / "db"
    shutil.copytree(pristine, dst)
    return dst


def _run(capsys, *args):
    rc = main([*args, "--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_synthetic_set_passes_with_split_size_warnings(pristine, capsys):
    rc, out, _ = _run(capsys, "--dataset", "pascal", "--root", str(pristine), "--deep", "--workers", "1")
    assert rc == 0, out
    assert "4 ids, the real release has 4998" in out and "2 ids, the real release has 5105" in out
    assert "SYNTHETIC.json" in out and "0 error(s), 2 warning(s)" in out
    rc, out, _ = _run(capsys, "--dataset", "nyud", "--root", str(pristine / "NYUDv2"))  # the folder itself works
    assert rc == 0 and "the real release has 795" in out and "has 654" in out


def test_expect_release_makes_split_sizes_errors(pristine, capsys):
    rc, out, _ = _run(capsys, "--dataset", "nyud", "--root", str(pristine), "--expect-release")
    assert rc == 1 and "ERROR   split size: 2" in out and "FAILED" in out


def test_deep_catches_deleted_label_truncated_jpeg_and_wrong_size_label(root, capsys):
    d = root / "PASCALContext"
    (d / "sal_distill" / "2008_000001.png").unlink()
    jpg = d / "JPEGImages" / "2008_000002.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(d / "semseg" / "VOC12" / "2008_000000.png")
    rc, out, _ = _run(capsys, "--dataset", "pascal", "--root", str(root))  # cheap: only the deleted file
    assert rc == 1 and "sal_distill/2008_000001.png" in out and "2008_000002.jpg" not in out
    rc, out, _ = _run(capsys, "--dataset", "pascal", "--root", str(root), "--deep", "--workers", "2")
    assert rc == 1
    assert "missing file: 1" in out and "sal_distill/2008_000001.png: sal of train id '2008_000001'" in out
    assert "JPEGImages/2008_000002.jpg: OSError: image file is truncated" in out
    assert "semseg/VOC12/2008_000000.png: 16x32, the image is 32x32 (not a rescaled copy)" in out
    assert "3 error(s)" in out


def test_deep_checks_values_and_rescaled_labels(root):
    d = root / "NYUDv2"
    seg = np.array(Image.open(d / "segmentation" / "0001.png"))
    seg[0, 0] = 77
    Image.fromarray(seg).save(d / "segmentation" / "0001.png")
    np.save(d / "depth" / "0002.npy", np.full((32, 32), np.nan, np.float32))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "normals" / "0003.png")  # a half-size copy
    report = verify_dataset("NYUD", root, deep=True, workers=1, progress=False)
    found = {(p.level, p.kind, p.path) for p in report.problems}
    assert ("error", "value range", "segmentation/0001.png") in found
    assert ("error", "value range", "depth/0002.npy") in found
    assert ("warning", "label size", "normals/0003.png") in found  # the reader resizes it: readable
    assert len(report.errors) == 2 and report.decoded == 5


def test_missing_folder_is_one_problem_and_missing_split_file(root, capsys):
    shutil.rmtree(root / "PASCALContext" / "human_parts")
    (root / "PASCALContext" / "ImageSets" / "Context" / "val.txt").unlink()
    rc, out, _ = _run(capsys, "--dataset", "pascal", "--root", str(root))
    assert rc == 1
    assert "human_parts/: needed for human_parts" in out and "missing file" not in out
    assert "ImageSets/Context/val.txt: missing" in out


def test_missing_root_is_one_line_naming_the_download(tmp_path, capsys):
    rc, out, err = _run(capsys, "--dataset", "nyud", "--root", str(tmp_path / "none"))
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: dataset folder {tmp_path / 'none' / 'NYUDv2'}")
    assert f"python -m data.download --dataset nyud --root {tmp_path / 'none'}" in err


def test_reader_error_names_the_verify_and_download_commands(tmp_path):
    with pytest.raises(DatasetError) as err:
        resolve_dataset_dir("PASCALContext", tmp_path)
    msg = str(err.value)
    assert "python -m data.download --dataset pascal --root" in msg
    assert "python -m data.verify --dataset pascal --root" in msg


@pytest.mark.parametrize("kind", sorted(PASCAL_FILES))
def test_pascal_table_matches_the_reader(root, tmp_path, kind):
    """Deleting the file the table names for `kind` makes both the reader and verify complain about it."""
    folders, suffix = PASCAL_FILES[kind]
    sid = "2008_000003"
    rel = f"{folders[0]}/{sid}{suffix}"
    (root / "PASCALContext" / rel).unlink()
    tasks = {"image": ("semseg",), "labelmap": ("edge",)}.get(kind, (kind,))
    with pytest.raises(DatasetError) as err:
        PASCALContext(root, "train", tasks, cache_dir=tmp_path / "cache", disk_cache=False, progress=False)
    assert folders[0] in str(err.value) and sid in str(err.value)
    report = verify_dataset("PASCALContext", root, progress=False)
    assert [p.path for p in report.errors] == [rel]
