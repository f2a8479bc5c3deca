"""A training process killed with SIGKILL (no handler runs, a write may be cut anywhere) loses at most the
iterations since its last checkpoint: the same command again resumes from an intact last.pth, finishes,
and ends with the weights of a run that was never interrupted."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, env_for_subprocess

N, EVERY = 24, 4


def _cmd(data, out):
    return [sys.executable, "main.py", "--config_exp", CONFIG, "--run_mode", "train", "--data_root", data,
            "--output_dir", str(out), "--opts", *BASE_OPTS, f"max_iter={N}", "val_interval=1000",
            f"ckpt_interval={EVERY}", "drop_path_rate=0.1"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_then_same_command_resumes_to_the_uninterrupted_result(tiny_data, tmp_path):
    env = env_for_subprocess()
    full = tmp_path / "full"
    done = subprocess.run(_cmd(tiny_data, full), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    killed = tmp_path / "killed"
    ckpts = killed / "checkpoints"
    proc = subprocess.Popen(_cmd(tiny_data, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (ckpts / f"iter_{EVERY:06d}.pth").exists():  # first checkpoint on disk: kill mid-run
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    at_kill = torch.load(ckpts / "last.pth", weights_only=False)  # intact: atomic writes only
    assert EVERY <= at_kill["iteration"] < N, at_kill["iteration"]

    again = subprocess.run(_cmd(tiny_data, killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"resumed from {ckpts / 'last.pth'}: {at_kill['iteration']} of {N}" in again.stdout + again.stderr
    a = torch.load(full / "checkpoints" / "last.pth", weights_only=False)
    b = torch.load(ckpts / "last.pth", weights_only=False)
    assert a["iteration"] == b["iteration"] == N
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    # a write cut by the kill can leave only a hidden temporary file, never a truncated checkpoint
    assert all(n.startswith(".") or n.endswith(".pth") for n in os.listdir(ckpts))
