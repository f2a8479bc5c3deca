"""utils.io.atomic_write: the target appears complete or not at all."""
import os

import pytest

from utils.io import atomic_write


def test_writes_through_a_temporary_file_and_renames(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert not (tmp_path / "sub" / "a.json").exists()  # nothing under the final name yet
        with open(tmp, "w") as f:
            f.write("new")

    path = atomic_write(str(tmp_path / "sub" / "a.json"), write, fsync=True)
    assert open(path).read() == "new" and os.path.dirname(seen[0]) == str(tmp_path / "sub")
    assert os.path.basename(seen[0]).startswith(".") and seen[0].endswith(".json")  # keeps the extension
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.json"]


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "m.pth"
    target.write_text("old")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt  # e.g. Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), broken)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["m.pth"]


@pytest.fixture
def umask():
    """Set the process umask for one test and restore the previous one afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _write_text(tmp):
    with open(tmp, "w") as f:
        f.write("x")


@pytest.mark.skipif(os.name != "posix", reason="Unix permissions")
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_the_final_file_respects_the_umask(tmp_path, umask, mask, mode):
    from utils.io import current_umask

    umask(mask)
    assert current_umask() == mask and os.umask(mask) == mask  # reading it left it unchanged
    path = atomic_write(str(tmp_path / "metrics.json"), _write_text, fsync=True)
    assert os.stat(path).st_mode & 0o777 == mode
    reference = tmp_path / "plain.txt"  # what open() gives under the same umask
    reference.write_text("x")
    assert os.stat(reference).st_mode & 0o777 == mode


@pytest.mark.skipif(os.name != "posix", reason="Unix permissions")
def test_the_fallback_umask_read_restores_the_mask(monkeypatch, umask):
    """Without /proc (macOS, BSD) the umask is read by setting and restoring it."""
    import builtins

    from utils import io as io_mod

    real_open = builtins.open

    def no_proc(path, *a, **k):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    umask(0o027)
    monkeypatch.setattr(builtins, "open", no_proc)
    assert io_mod.current_umask() == 0o027
    assert os.umask(0o027) == 0o027


def test_temporary_names_are_recognised():
    from utils.io import is_atomic_temporary

    assert is_atomic_temporary(".last.pth.ab_12xyz.tmp.pth")
    assert is_atomic_temporary(".config.yml.abcdefgh.tmp.yml")
    assert is_atomic_temporary(".README.abcdefgh.tmp")  # no extension
    for name in ("last.pth", ".last.pth", ".last.pth.abcdefgh.tmp.json", ".last.pth.abc.tmp.pth",
                 "last.pth.abcdefgh.tmp.pth", ".last.pth.ABCDEFGH.tmp.pth"):
        assert not is_atomic_temporary(name), name
