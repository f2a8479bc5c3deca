"""data.download and data.safe_tar against a loopback HTTP server: resume, integrity, hostile archives.

No network: a small http.server on 127.0.0.1 (port 0) serves a tarball made from the synthetic generator
and supports Range requests; options make it cut the connection, lie about the size or send HTML.
"""
import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from data import download as dl
from data.safe_tar import CorruptArchiveError, UnsafeArchiveError, safe_extract
from data.synthetic import generate
from data.verify import verify_dataset

# --------------------------------------------------------------------------------------------------
# a loopback server with Range support


class _Handler(BaseHTTPRequestHandler):
    """GET /<name> from server.files; honours `Range: bytes=a-`; behaviour switches live on the server."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append({"path": self.path, "range": self.headers.get("Range"),
                             "if_range": self.headers.get("If-Range")})
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "no such file")
            return
        announced = len(data) + srv.lie_extra
        rng = self.headers.get("Range")
        start = int(rng[len("bytes="):].split("-")[0]) if rng and srv.ranges else 0
        if rng and srv.ranges and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        if rng and srv.ranges:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(announced))
        self.send_header("Content-Type", srv.content_type)
        self.send_header("ETag", '"v1"')
        self.end_headers()
        if srv.cuts_left > 0:  # send the first bytes only, then drop the connection
            srv.cuts_left -= 1
            body = body[:srv.cut_after]
        self.wfile.write(body)
        self.wfile.flush()


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests = {}, []
    srv.lie_extra, srv.ranges, srv.cuts_left, srv.cut_after = 0, True, 0, 0
    srv.content_type = "application/gzip"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = lambda name: f"http://127.0.0.1:{srv.server_address[1]}/{name}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _fetcher(**kw):
    kw.setdefault("retries", 3)
    return dl.Fetcher(backoff=0.01, timeout=10, progress=False, log=lambda *a: None, **kw)


def _quiet(*args):
    pass


# --------------------------------------------------------------------------------------------------
# tarballs


@pytest.fixture(scope="module")
def pascal_tarball(tmp_path_factory) -> bytes:
    """PASCALContext.tar.gz bytes of a tiny synthetic set (4 train / 2 val, 32x32), as ATRC packs it."""
    src = tmp_path_factory.mktemp("synthetic")
    generate("pascal", src, 4, 2, seed=1, size=(32, 32))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "PASCALContext", arcname="PASCALContext")
    return buf.getvalue()


def _tar(path: Path, members) -> Path:
    """Write a tar of (TarInfo kwargs, data bytes or None) members."""
    with tarfile.open(path, "w") as tar:
        for info_kw, data in members:
            info = tarfile.TarInfo(info_kw.pop("name"))
            for k, v in info_kw.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    return {"name": name}, data


def _symlink(name, target):
    return {"name": name, "type": tarfile.SYMTYPE, "linkname": target}, None


def _hardlink(name, target):
    return {"name": name, "type": tarfile.LNKTYPE, "linkname": target}, None


# --------------------------------------------------------------------------------------------------
# download + install


def test_full_download_extract_verify(tmp_path, server, pascal_tarball, capsys):
    server.files["PASCALContext.tar.gz"] = pascal_tarball
    root = tmp_path / "db"
    digest = hashlib.sha256(pascal_tarball).hexdigest()
    rc = dl.main(["--dataset", "pascal", "--root", str(root), "--url", server.url("PASCALContext.tar.gz"),
                  "--sha256", digest, "--keep-archive"])
    assert rc == 0, capsys.readouterr().err
    assert (root / "PASCALContext.tar.gz").read_bytes() == pascal_tarball
    report = verify_dataset("PASCALContext", root, deep=True, workers=1, progress=False)
    assert report.errors == [] and report.counts == {"train": 4, "val": 2}
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [
        "PASCALContext", "PASCALContext.tar.gz"]  # no .part, no temporary extraction folder
    out = capsys.readouterr().out
    assert "installed" in out and "python -m data.verify --dataset pascal" in out
    # a second run needs no network and changes nothing
    n = len(server.requests)
    assert dl.main(["--dataset", "pascal", "--root", str(root), "--url", server.url("x")]) == 0
    assert len(server.requests) == n


def test_interrupted_download_resumes_byte_identical(tmp_path, server, pascal_tarball):
    server.files["f.tar.gz"] = pascal_tarball
    server.cuts_left, server.cut_after = 1, len(pascal_tarball) // 3
    dest = tmp_path / "f.tar.gz"
    _fetcher().fetch(server.url("f.tar.gz"), dest)
    assert dest.read_bytes() == pascal_tarball
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == f"bytes={len(pascal_tarball) // 3}-"
    assert server.requests[1]["if_range"] == '"v1"'
    assert not (tmp_path / "f.tar.gz.part").exists() and not (tmp_path / "f.tar.gz.part.json").exists()


def test_partial_file_of_an_earlier_run_is_continued(tmp_path, server, pascal_tarball):
    server.files["f.tar.gz"] = pascal_tarball
    server.cuts_left, server.cut_after = 1, 1000
    dest = tmp_path / "f.tar.gz"
    with pytest.raises(dl._MirrorFailed):  # no retries: the run "dies" with a partial file
        _fetcher(retries=0).fetch(server.url("f.tar.gz"), dest)
    assert (tmp_path / "f.tar.gz.part").stat().st_size == 1000 and not dest.exists()
    _fetcher().fetch(server.url("f.tar.gz"), dest)  # the next run
    assert dest.read_bytes() == pascal_tarball
    assert server.requests[-1]["range"] == "bytes=1000-"


def test_size_mismatch_is_detected(tmp_path, server, pascal_tarball):
    server.files["f.tar.gz"] = pascal_tarball
    server.lie_extra = 100  # Content-Length promises 100 bytes more than the file has
    with pytest.raises(dl.DownloadError, match="size mismatch") as err:
        dl.download("PASCALContext", tmp_path, urls=[server.url("f.tar.gz")], fetcher=_fetcher(), log=_quiet)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "PASCALContext.tar.gz").exists()
    assert not (tmp_path / "PASCALContext.tar.gz.part").exists()


def test_sha256_mismatch_is_detected(tmp_path, server, pascal_tarball, capsys):
    server.files["f.tar.gz"] = pascal_tarball
    rc = dl.main(["--dataset", "pascal", "--root", str(tmp_path), "--url", server.url("f.tar.gz"),
                  "--sha256", "0" * 64, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "sha256 mismatch" in err
    assert not (tmp_path / "PASCALContext").exists()
    assert not list(tmp_path.glob("PASCALContext.tar.gz*"))


def test_corrupted_tarball_installs_nothing(tmp_path, server, pascal_tarball, capsys):
    server.files["f.tar.gz"] = pascal_tarball[: len(pascal_tarball) // 2]  # a complete download of a bad file
    rc = dl.main(["--dataset", "pascal", "--root", str(tmp_path), "--url", server.url("f.tar.gz"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "corrupt archive" in err and err.count("\n") == 1
    assert not (tmp_path / "PASCALContext").exists()
    assert not list(tmp_path.glob(".PASCALContext.extract-*"))
    assert (tmp_path / "PASCALContext.tar.gz.corrupt").exists()  # set aside, so the next run downloads again
    assert not (tmp_path / "PASCALContext.tar.gz").exists()


def test_mirrors_404_and_html_pages_fall_through(tmp_path, server, pascal_tarball):
    server.files["good.tar.gz"] = pascal_tarball
    dest = dl.download("PASCALContext", tmp_path, urls=[server.url("missing.tar.gz"), server.url("good.tar.gz")],
                       fetcher=_fetcher(), log=_quiet)
    assert dest.read_bytes() == pascal_tarball
    dest.unlink()
    server.content_type = "text/html; charset=utf-8"
    with pytest.raises(dl.DownloadError, match="web page") as err:
        dl.download("PASCALContext", tmp_path, urls=[server.url("good.tar.gz")], fetcher=_fetcher(), log=_quiet)
    assert "HTTP 404" not in str(err.value)


def test_transient_failures_give_up_after_the_retries(tmp_path):
    import socket

    with socket.socket() as sock:  # a port that nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/nothing"
    with pytest.raises(dl.DownloadError, match="cannot download"):
        dl.download("NYUD", tmp_path, urls=[url], fetcher=_fetcher(retries=1), log=_quiet)


def test_interrupted_extraction_leaves_no_dataset(tmp_path, pascal_tarball, monkeypatch):
    archive = tmp_path / "PASCALContext.tar.gz"
    archive.write_bytes(pascal_tarball)
    root = tmp_path / "db"
    root.mkdir()
    import data.safe_tar as st

    real, calls = st._write_file, []

    def dies_halfway(*args, **kw):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(st, "_write_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        dl.get_dataset("PASCALContext", root, archive=archive, progress=False, log=_quiet)
    assert [p.name for p in root.iterdir()] in ([], [".PASCALContext.lock"])
    monkeypatch.setattr(st, "_write_file", real)
    (root / ".PASCALContext.extract-999999" / "PASCALContext").mkdir(parents=True)  # a SIGKILLed run
    dl.get_dataset("PASCALContext", root, archive=archive, progress=False, log=_quiet)
    assert (root / "PASCALContext" / "JPEGImages").is_dir()
    assert not list(root.glob(".PASCALContext.extract-*"))
    assert archive.exists()  # the user's own archive is never deleted


def test_force_replaces_and_flags_are_checked(tmp_path, pascal_tarball, capsys):
    archive = tmp_path / "p.tar.gz"
    archive.write_bytes(pascal_tarball)
    root = tmp_path / "db"
    (root / "PASCALContext").mkdir(parents=True)
    (root / "PASCALContext" / "old.txt").write_text("old")
    assert dl.main(["--dataset", "pascal", "--root", str(root), "--archive", str(archive), "--no-progress"]) == 0
    assert (root / "PASCALContext" / "old.txt").exists()  # kept without --force
    assert dl.main(["--dataset", "pascal", "--root", str(root), "--archive", str(archive), "--force",
                    "--no-progress"]) == 0
    assert not (root / "PASCALContext" / "old.txt").exists() and (root / "PASCALContext" / "JPEGImages").is_dir()
    capsys.readouterr()
    assert dl.main(["--dataset", "all", "--root", str(root), "--url", "http://127.0.0.1:9/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --url") and err.count("\n") == 1


def test_wrong_layout_is_not_installed(tmp_path, capsys):
    archive = _tar(tmp_path / "other.tar", [_file("PASCALContext/readme.txt", b"not a dataset")])
    rc = dl.main(["--dataset", "pascal", "--root", str(tmp_path / "db"), "--archive", str(archive), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not have the PASCALContext layout" in err and err.count("\n") == 1
    assert not (tmp_path / "db" / "PASCALContext").exists()


# --------------------------------------------------------------------------------------------------
# hostile archives


@pytest.fixture
def arena(tmp_path):
    """(dest, outside): an empty extraction folder and a sibling folder that must stay untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    dest = tmp_path / "dest"
    dest.mkdir()
    return dest, outside


def _snapshot(tmp_path, dest):
    """Every path under tmp_path outside `dest` (with file contents), to prove nothing was written there."""
    out = {}
    for p in sorted(tmp_path.rglob("*")):
        if dest in p.parents or p == dest or p.suffix == ".tar":
            continue
        out[str(p)] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


HOSTILE = {
    "dotdot": lambda o: [_file("PASCALContext/ok.txt"), _file("../evil.txt")],
    "dotdot_deep": lambda o: [_file("PASCALContext/../../outside/evil.txt")],
    "absolute": lambda o: [_file(str(o / "abs_evil.txt"))],
    "symlink_escape": lambda o: [_symlink("PASCALContext/link", "../../outside"),
                                 _file("PASCALContext/link/evil.txt")],
    "symlink_absolute": lambda o: [_symlink("link", str(o)), _file("link/evil.txt")],
    "symlink_chain": lambda o: [_symlink("a", "b/.."), _symlink("b", "."), _file("a/outside/evil.txt")],
    "hardlink_escape": lambda o: [_hardlink("PASCALContext/hl", "../../outside/secret.txt")],
    "hardlink_absolute": lambda o: [_hardlink("hl", str(o / "secret.txt"))],
    "hardlink_through_symlink": lambda o: [_symlink("a", "b/.."), _symlink("b", "."),
                                           _hardlink("hl", "a/outside/secret.txt")],
    "char_device": lambda o: [({"name": "dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)],
    "fifo": lambda o: [({"name": "fifo", "type": tarfile.FIFOTYPE}, None)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused(tmp_path, arena, case):
    dest, outside = arena
    archive = _tar(tmp_path / f"{case}.tar", HOSTILE[case](outside))
    before = _snapshot(tmp_path, dest)
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, dest, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "unsafe member" in msg
    assert _snapshot(tmp_path, dest) == before  # nothing written, linked or changed outside dest
    for p in dest.rglob("*"):
        assert not (p.is_char_device() or p.is_block_device() or p.is_fifo())


def test_size_caps(tmp_path, arena):
    dest, _ = arena
    big = _tar(tmp_path / "big.tar", [_file("big.bin", b"\0" * 300_000)])
    with pytest.raises(UnsafeArchiveError, match="per-member cap"):
        safe_extract(big, dest, max_member_bytes=100_000, progress=False)
    many = _tar(tmp_path / "many.tar", [_file(f"f{i}.bin", b"\0" * 60_000) for i in range(4)])
    with pytest.raises(UnsafeArchiveError, match="total cap"):
        safe_extract(many, dest, max_total_bytes=200_000, progress=False)
    with pytest.raises(UnsafeArchiveError, match="more than 2 members"):
        safe_extract(many, dest, max_members=2, progress=False)


def test_safe_links_inside_the_root_are_kept(tmp_path, arena):
    dest, _ = arena
    archive = _tar(tmp_path / "links.tar", [_file("d/a.txt", b"hello"), _symlink("d/b.txt", "a.txt"),
                                            _hardlink("d/c.txt", "d/a.txt"), _symlink("e", "d")])
    stats = safe_extract(archive, dest, progress=False)
    assert (dest / "d" / "b.txt").read_bytes() == b"hello" and (dest / "d" / "c.txt").read_bytes() == b"hello"
    assert (dest / "e" / "a.txt").read_bytes() == b"hello" and stats.files == 1 and stats.links == 3


def test_hostile_archive_through_the_command(tmp_path, arena, capsys):
    _, outside = arena
    archive = _tar(tmp_path / "evil.tar", [_file("PASCALContext/x.txt"), _file("../../evil.txt")])
    root = tmp_path / "db"
    rc = dl.main(["--dataset", "pascal", "--root", str(root), "--archive", str(archive), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: unsafe member '../../evil.txt'") and err.count("\n") == 1
    assert not (tmp_path / "evil.txt").exists() and not (root / "PASCALContext").exists()
    assert not list(root.glob(".PASCALContext.extract-*"))


def test_garbage_is_a_corrupt_archive(tmp_path, arena):
    dest, _ = arena
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"<html>please log in</html>" * 40)
    with pytest.raises(CorruptArchiveError, match="corrupt archive"):
        safe_extract(bad, dest, progress=False)
