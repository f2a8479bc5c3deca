"""Storage failures (full disk, quota, I/O error, read-only filesystem) at every write site of utils.io:
StorageError names the file and the reason, no temporary file is left, the previous file is intact, and
pruning of periodic checkpoints happens only after the new one is on disk."""
import errno
import os
import shutil
import subprocess

import pytest
import torch

import utils.io as io_mod
from utils.checkpoint import build_state, free_space_warning, save_checkpoint
from utils.io import StorageError, atomic_write, storage_error

ERRNOS = [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS]


@pytest.mark.parametrize("code", ERRNOS)
def test_a_writer_failing_with_a_storage_errno_is_a_storage_error(tmp_path, code):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(StorageError) as err:
        atomic_write(str(target), write)
    assert err.value.errno == code and err.value.path == str(target)
    assert str(err.value) == f"cannot write {target}: {os.strerror(code)}"
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


def test_a_read_only_folder_fails_at_the_temporary_file(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".x.tmp"))

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", refuse)
    with pytest.raises(StorageError) as err:
        atomic_write(str(tmp_path / "config.yml"), lambda tmp: None)
    assert "cannot write" in str(err.value) and "config.yml" in str(err.value) and "Read-only" in str(err.value)


def test_a_failure_without_errno_on_a_full_filesystem_is_named_by_probing_it(tmp_path, monkeypatch):
    """torch.save to a path and cv2.imwrite lose the errno: the filesystem is asked instead."""
    class Full:
        f_bavail, f_frsize, f_flag = 0, 4096, 0

    monkeypatch.setattr(io_mod.os, "statvfs", lambda p: Full())

    def torch_like(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(StorageError) as err:
        atomic_write(str(tmp_path / "a.pth"), torch_like)
    assert err.value.errno == errno.ENOSPC
    Full.f_bavail = 10 ** 9  # plenty of space: the same error is a bug, and keeps its type
    with pytest.raises(RuntimeError, match="enforce fail"):
        atomic_write(str(tmp_path / "a.pth"), torch_like)


def test_other_errors_are_not_storage_errors(tmp_path):
    assert storage_error(OSError(errno.ENOENT, "No such file"), "x") is None
    assert storage_error(ValueError("bug"), "x") is None
    with pytest.raises(ZeroDivisionError):
        atomic_write(str(tmp_path / "a.txt"), lambda tmp: 1 / 0)


def test_storage_error_is_picklable_and_an_oserror():
    import pickle

    e = pickle.loads(pickle.dumps(StorageError("/r/last.pth", errno.ENOSPC)))
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC and e.path == "/r/last.pth"


def _fail_nth_save(monkeypatch, n, code=errno.ENOSPC):
    """torch.save raises OSError(code) from the n-th call on (1-based), as a full disk does mid-file."""
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] >= n:
            f.write(b"partial")
            raise OSError(code, os.strerror(code))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    return calls


def test_a_failed_periodic_write_keeps_the_old_copies_unpruned(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    for it in (2, 4):
        save_checkpoint(build_state(model, iteration=it), str(tmp_path), periodic=True, keep=2)
    _fail_nth_save(monkeypatch, 2)  # last.pth written, then the periodic copy fails
    with pytest.raises(StorageError) as err:
        save_checkpoint(build_state(model, iteration=6), str(tmp_path), periodic=True, keep=2)
    assert err.value.path.endswith("iter_000006.pth")
    folder = tmp_path / "checkpoints"
    assert sorted(os.listdir(folder)) == ["iter_000002.pth", "iter_000004.pth", "last.pth"]  # nothing pruned
    assert torch.load(folder / "last.pth", weights_only=True)["iteration"] == 6


def test_a_failed_last_write_keeps_the_previous_last(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(build_state(model, iteration=2), str(tmp_path))
    _fail_nth_save(monkeypatch, 1, errno.EDQUOT)
    with pytest.raises(StorageError, match="Disk quota exceeded"):
        save_checkpoint(build_state(model, iteration=4), str(tmp_path))
    folder = tmp_path / "checkpoints"
    assert os.listdir(folder) == ["last.pth"]
    assert torch.load(folder / "last.pth", weights_only=True)["iteration"] == 2


def test_free_space_warning_names_what_the_next_checkpoint_needs(tmp_path, monkeypatch):
    save_checkpoint(build_state(torch.nn.Linear(50, 50), iteration=2), str(tmp_path))
    size = os.path.getsize(tmp_path / "checkpoints" / "last.pth")
    monkeypatch.setattr(io_mod, "free_bytes", lambda p: 2 * size)
    assert free_space_warning(str(tmp_path), files=1) is None
    msg = free_space_warning(str(tmp_path), files=3)
    assert msg and "the next checkpoint needs" in msg and "3 file(s)" in msg and "free" in msg
    assert free_space_warning(str(tmp_path / "fresh"), files=1) is None  # nothing to measure yet
    assert free_space_warning(str(tmp_path / "fresh"), files=1, size=10 * size) is not None


def _can_mount_tmpfs(where) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_a_really_full_tmpfs(tmp_path):
    """On a real 192 KiB filesystem (only where this test may mount one: root on Linux): the checkpoint write
    fails as StorageError ENOSPC and the previous last.pth is intact."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not _can_mount_tmpfs(mnt):
        pytest.skip("mounting a tmpfs needs root; the injected failures above cover the same paths")
    try:
        save_checkpoint(build_state(torch.nn.Linear(4, 4), iteration=1), str(mnt))
        with pytest.raises(StorageError) as err:
            save_checkpoint(build_state(torch.nn.Linear(400, 400), iteration=2), str(mnt))
        assert err.value.errno == errno.ENOSPC
        folder = mnt / "checkpoints"
        assert os.listdir(folder) == ["last.pth"]
        assert torch.load(folder / "last.pth", weights_only=True)["iteration"] == 1
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
