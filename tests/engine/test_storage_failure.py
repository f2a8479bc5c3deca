"""main.py when the storage fails mid-run: one `error: cannot write <file>: <reason>; last.pth still holds
iteration N; free space and run the same command to resume` line, exit status 75, no traceback, no partial
file; the same command afterwards resumes from iteration N and finishes."""
import errno
import os

import torch

import main as main_mod
from engine.runner import EXIT_STORAGE
from tests.engine.test_main_errors import _argv, _one_error
from utils.io import is_atomic_temporary


def _no_temporaries(folder):
    return [p for p in folder.rglob("*") if is_atomic_temporary(p.name)] == []


def test_full_disk_at_a_checkpoint_is_one_line_and_the_run_resumes(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):  # the 3rd checkpoint file (last.pth at iteration 4) hits a full disk
        calls["n"] += 1
        if calls["n"] == 3:
            f.write(b"PK partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    argv = _argv(tiny_data, out, "max_iter=4", "ckpt_interval=2")
    line = _one_error(capsys, main_mod.main(argv), want=EXIT_STORAGE)
    last = out / "checkpoints" / "last.pth"
    assert line.endswith(f"error: cannot write {last}: No space left on device; last.pth still holds iteration 2; "
                         f"free space and run the same command to resume"), line
    assert _no_temporaries(out)
    assert torch.load(last, weights_only=True)["iteration"] == 2
    monkeypatch.setattr(torch, "save", real)  # space freed: the same command resumes
    assert main_mod.main(argv) == 0
    assert torch.load(last, weights_only=True)["iteration"] == 4
    assert "resumed from" in capsys.readouterr().out


def test_read_only_run_folder_at_config_yml_says_nothing_was_saved_yet(tiny_data, tmp_path, monkeypatch, capsys):
    import utils.io as io_mod

    real = io_mod.tempfile.mkstemp

    def mkstemp(*a, prefix="", **k):
        if prefix.startswith(".config.yml"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), k.get("dir"))
        return real(*a, prefix=prefix, **k)

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", mkstemp)
    out = tmp_path / "run"
    line = _one_error(capsys, main_mod.main(_argv(tiny_data, out, "max_iter=2")), want=EXIT_STORAGE)
    assert f"cannot write {out / 'config.yml'}: Read-only file system" in line, line
    assert "no checkpoint of this run was written yet" in line and line.endswith("run the same command to resume")


def test_full_disk_for_the_metrics_json(tiny_data, tmp_path, monkeypatch, capsys):
    import engine.evaluator as ev

    import json

    class FullDiskJson:  # the evaluator's json module, whose dump meets a full disk
        def __getattr__(self, name):
            return getattr(json, name)

        @staticmethod
        def dump(*a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ev, "json", FullDiskJson())
    out = tmp_path / "run"
    line = _one_error(capsys, main_mod.main(_argv(tiny_data, out, "max_iter=2")), want=EXIT_STORAGE)
    assert "cannot write" in line and "metrics" in line and ".json: No space left on device" in line, line
    assert "last.pth still holds iteration 2" in line, line
    assert _no_temporaries(out)


def test_a_bare_oserror_of_tensorboard_names_the_tb_folder(tmp_path):
    from engine.runner import storage_failure

    def tensorboard_like():
        code = compile("raise OSError(28, 'No space left on device')",
                       os.path.join("x", "site-packages", "tensorboard", "writer.py"), "exec")
        exec(code)

    try:
        tensorboard_like()
    except OSError as err:
        failed = storage_failure(err, str(tmp_path))
    assert failed is not None and failed.path == str(tmp_path / "tb") and failed.errno == errno.ENOSPC
    assert storage_failure(FileNotFoundError(2, "No such file"), str(tmp_path)) is None


def test_a_read_only_run_folder_fails_at_the_lock_before_anything_else(tiny_data, tmp_path, monkeypatch, capsys):
    import engine.run_folder as rf

    real = os.open

    def ro_open(path, flags, *a, **k):
        if str(path).endswith("run.lock") and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real(path, flags, *a, **k)

    monkeypatch.setattr(rf.os, "open", ro_open)
    out = tmp_path / "run"
    line = _one_error(capsys, main_mod.main(_argv(tiny_data, out, "max_iter=2")), want=EXIT_STORAGE)
    assert f"cannot write {out / 'run.lock'}: Read-only file system; nothing of the run was changed" in line, line
