"""Zip archives through data.safe_tar (the Cityscapes releases are zips) and Cityscapes through data.download."""
import os
import stat
import zipfile

import pytest

from data import download as dl
from data.safe_tar import CorruptArchiveError, UnsafeArchiveError, safe_extract
from data.synthetic import generate
from data.verify import verify_dataset


def _zip(path, entries):
    """entries: (name, data bytes, unix mode or None)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 2, 3, 4, 6))
            if mode is not None:
                info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


@pytest.fixture
def arena(tmp_path):
    """(archive folder, extraction folder, a file outside the extraction folder that must survive)."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    return tmp_path, out, victim


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink_out", "device", "fifo"])
def test_hostile_zip_is_refused(arena, case):
    where, out, victim = arena
    entries = {
        "dotdot": [("ok.txt", b"x", None), ("../victim.txt", b"pwned", None)],
        "absolute": [(str(victim), b"pwned", None)],
        "symlink_out": [("link", b"../victim.txt", stat.S_IFLNK | 0o777), ("link", b"pwned", None)],
        "device": [("dev", b"", stat.S_IFCHR | 0o644)],
        "fifo": [("pipe", b"", stat.S_IFIFO | 0o644)],
    }[case]
    archive = _zip(where / f"{case}.zip", entries)
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, out, progress=False)
    assert victim.read_text() == "keep"


def test_zip_extracts_files_links_and_times(arena):
    where, out, _ = arena
    archive = _zip(where / "good.zip", [("a/", b"", stat.S_IFDIR | 0o755), ("a/b.txt", b"hello" * 100, 0o100644),
                                        ("a/run.sh", b"#!/bin/sh\n", 0o100755),
                                        ("a/c.txt", b"b.txt", stat.S_IFLNK | 0o777)])
    stats = safe_extract(archive, out, progress=False)
    assert (out / "a" / "b.txt").read_bytes() == b"hello" * 100 and os.path.islink(out / "a" / "c.txt")
    assert (out / "a" / "c.txt").read_bytes() == b"hello" * 100 and os.access(out / "a" / "run.sh", os.X_OK)
    assert stats.files == 2 and stats.links == 1
    import time

    assert time.localtime(os.stat(out / "a" / "b.txt").st_mtime)[:6] == (2020, 1, 2, 3, 4, 6)


def test_zip_caps_and_corruption(arena):
    where, out, _ = arena
    big = _zip(where / "big.zip", [("big.bin", b"\0" * 5000, None)])  # compresses to almost nothing
    with pytest.raises(UnsafeArchiveError, match="per-member cap"):
        safe_extract(big, out, max_member_bytes=4096, progress=False)
    with pytest.raises(UnsafeArchiveError, match="total cap"):
        safe_extract(big, out, max_total_bytes=4096, progress=False)
    many = _zip(where / "many.zip", [(f"f{i}", b"x", None) for i in range(5)])
    with pytest.raises(UnsafeArchiveError, match="more than 3 members"):
        safe_extract(many, out, max_members=3, progress=False)
    cut = where / "cut.zip"
    cut.write_bytes(big.read_bytes()[:-30])
    with pytest.raises(CorruptArchiveError, match="corrupt archive"):
        safe_extract(cut, out, progress=False)
    bad = where / "crc.zip"
    data = bytearray(_zip(where / "plain.zip", [("t.txt", b"abcdefgh" * 50, None)]).read_bytes())
    with zipfile.ZipFile(where / "plain.zip") as zf:
        info = zf.infolist()[0]
    off = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[off + 2] ^= 0xFF  # flip a byte of the compressed data
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError):
        safe_extract(bad, out, progress=False)


@pytest.fixture(scope="module")
def cityscapes_zips(tmp_path_factory):
    """The four official archives of a synthetic Cityscapes (each holds its top folder, a README, license.txt)."""
    where = tmp_path_factory.mktemp("cszip")
    folder = generate("cityscapes", where / "src", 3, 2, seed=1, size=(32, 64))
    zips = {}
    for part in ("leftImg8bit", "gtFine", "disparity", "camera"):
        path = where / f"{part}_trainvaltest.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("README", f"{part} readme")
            zf.writestr("license.txt", "license")
            for f in sorted((folder / part).rglob("*")):
                zf.write(f, f.relative_to(folder).as_posix())
        zips[part] = path
    return zips


def test_cityscapes_from_the_official_zips(tmp_path, cityscapes_zips, capsys):
    root = tmp_path / "db"
    args = ["--dataset", "cityscapes", "--root", str(root), "--no-progress"]
    rc = dl.main(args + [x for p in ("leftImg8bit", "gtFine", "disparity") for x in ("--archive", str(cityscapes_zips[p]))])
    out = capsys.readouterr()
    assert rc == 2 and not (root / "cityscapes").exists()  # no camera zip: the layout check refuses to install
    assert "not given (by file name): camera_trainvaltest.zip" in out.out and "camera/" in out.out
    rc = dl.main(args + [x for p in cityscapes_zips.values() for x in ("--archive", str(p))])
    assert rc == 0, capsys.readouterr()
    assert sorted(p.name for p in (root / "cityscapes").iterdir()) == ["README", "camera", "disparity", "gtFine",
                                                                       "leftImg8bit", "license.txt"]
    report = verify_dataset("Cityscapes", root, deep=True, workers=1, progress=False)
    assert report.errors == [] and report.counts == {"train": 3, "val": 2}
    assert [p.name for p in root.iterdir() if p.name.startswith(".") and "extract" in p.name] == []


def test_cityscapes_without_archives_points_at_the_login(tmp_path, capsys):
    rc = dl.main(["--dataset", "cityscapes", "--root", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "csDownload" in err and "cityscapes-dataset.com" in err and "--archive gtFine_trainvaltest.zip" in err
    rc = dl.main(["--dataset", "cityscapes", "--root", str(tmp_path), "--url", "http://127.0.0.1:9/x"])
    assert rc == 2 and "several archives" in capsys.readouterr().err
