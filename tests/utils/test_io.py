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
