"""One live training per run folder (engine.run_folder.RunLock, taken by main.py): a second training into a
folder whose run is alive is refused before it writes anything, with one line naming the holder; a lock of a
killed process, or of another node that stopped refreshing it, is taken over with a warning; infer mode
needs no lock."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import main as main_mod
from engine.run_folder import LOCK_NAME, RunFolderError, RunLock
from tests.engine.conftest import ROOT, env_for_subprocess
from tests.engine.test_main_errors import _argv, _one_error, _snapshot

HOLD = ("import sys, time; from engine.run_folder import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)")


def _holder(folder):
    """A second process holding the lock of `folder` (it sleeps; kill it to simulate a crash)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, env=env_for_subprocess(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _write_lock(folder, host, pid, age):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "started": "2026-01-01 00:00:00", "token": "t0"}))
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_a_lock_held_by_another_process_refuses_then_a_killed_holder_is_taken_over(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunFolderError) as err:
            RunLock(str(tmp_path / "run")).acquire()
        msg = str(err.value)
        assert f"host {socket.gethostname()}, PID {proc.pid}, started 20" in msg and "--output_dir" in msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = RunLock(str(tmp_path / "run")).acquire()  # the holder died: its lock is stale at once
    assert len(lock.warnings) == 1 and f"process {proc.pid} on this host" in lock.warnings[0]
    assert "is gone" in lock.warnings[0]
    held = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_foreign_host_lock_is_live_while_refreshed_and_stale_after(tmp_path):
    _write_lock(tmp_path, "gpu-node-17", 4242, age=10)
    with pytest.raises(RunFolderError, match="host gpu-node-17, PID 4242"):
        RunLock(str(tmp_path)).acquire()
    _write_lock(tmp_path, "gpu-node-17", 4242, age=3600)  # the node died an hour ago (requeue elsewhere)
    lock = RunLock(str(tmp_path)).acquire()
    assert "gpu-node-17" in lock.warnings[0] and "has not refreshed it for 3600 s" in lock.warnings[0]
    lock.release()


def test_an_unparsable_lock_is_judged_by_its_age(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text("")  # a creator killed between create and write
    with pytest.raises(RunFolderError):
        RunLock(str(tmp_path)).acquire()
    os.utime(path, (time.time() - 3600,) * 2)
    RunLock(str(tmp_path)).acquire().release()


def test_the_heartbeat_refreshes_and_a_lost_lock_is_reported(tmp_path):
    lock = RunLock(str(tmp_path), heartbeat=0.05).acquire()
    path = tmp_path / LOCK_NAME
    os.utime(path, (time.time() - 100,) * 2)
    time.sleep(0.4)
    assert time.time() - path.stat().st_mtime < 5  # refreshed
    path.write_text(json.dumps({"host": "other", "pid": 1, "token": "theirs"}))  # taken over by another job
    time.sleep(0.4)
    assert any("was taken over" in w for w in lock.warnings)
    lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"  # never removes someone else's lock


def test_the_wait_option_waits_for_the_holder(tmp_path, monkeypatch):
    first = RunLock(str(tmp_path)).acquire()
    monkeypatch.setenv("TASKDIFFUSION_LOCK_WAIT", "0.3")
    t0 = time.monotonic()
    with pytest.raises(RunFolderError):
        RunLock(str(tmp_path), heartbeat=0.1).acquire()
    assert time.monotonic() - t0 >= 0.3
    first.release()
    RunLock(str(tmp_path)).acquire().release()


def test_main_refuses_a_second_training_before_writing_and_infer_needs_no_lock(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main_mod.main(_argv(tiny_data, out, "max_iter=2")) == 0
    assert not (out / LOCK_NAME).exists()  # released at the end
    proc = _holder(out)
    try:
        before = _snapshot(out)
        capsys.readouterr()
        line = _one_error(capsys, main_mod.main(_argv(tiny_data, out, "max_iter=4")))
        assert "is in use by a live training run" in line and f"PID {proc.pid}" in line, line
        assert _snapshot(out) == before  # nothing written, not even the log
        ckpt = out / "checkpoints" / "last.pth"
        assert main_mod.main(_argv(tiny_data, out, mode="infer", extra=("--trained_model", str(ckpt)))) == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_two_real_trainings_then_a_killed_one_is_taken_over(tiny_data, tmp_path, capsys):
    """Two main.py processes: the second is refused while the first trains; after a SIGKILL of the first,
    the same command takes the lock over (with a warning) and resumes to the end."""
    out = tmp_path / "run"
    argv = _argv(tiny_data, out, "max_iter=2")
    first = subprocess.Popen([sys.executable, "main.py", *_argv(tiny_data, out, "max_iter=100000")], cwd=ROOT,
                             env=env_for_subprocess(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if (out / LOCK_NAME).exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert first.poll() is None, "the first training ended early"
        capsys.readouterr()
        line = _one_error(capsys, main_mod.main(argv))
        assert f"PID {first.pid}" in line and socket.gethostname() in line, line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert main_mod.main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: took over the run-folder lock" in err and f"process {first.pid}" in err, err
    assert not (out / LOCK_NAME).exists()


def test_the_lock_of_an_earlier_torchrun_attempt_is_stale_at_once(tmp_path, monkeypatch):
    """torchrun --max-restarts: the restarted rank 0 (maybe on another node) takes over the lock of the
    killed attempt of the same job without waiting for its heartbeat to age."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = RunLock(str(tmp_path)).acquire()
    first._stop.set()  # attempt 0 was killed: its heartbeat stops, its file stays
    first.token = None
    data = json.loads((tmp_path / LOCK_NAME).read_text())
    data["host"] = "other-node"
    (tmp_path / LOCK_NAME).write_text(json.dumps(data))
    with pytest.raises(RunFolderError):  # same attempt number: a live holder
        RunLock(str(tmp_path)).acquire()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = RunLock(str(tmp_path)).acquire()
    assert "attempt 0 of this torchrun job" in second.warnings[0]
    second.release()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "another-job")  # another job's lock is never taken over early
    third = RunLock(str(tmp_path)).acquire()
    with pytest.raises(RunFolderError):
        RunLock(str(tmp_path)).acquire()
    third.release()
