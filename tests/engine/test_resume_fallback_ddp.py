"""Two torchrun ranks resume from the same fallback checkpoint when last.pth is damaged: rank 0 chooses
(and sets the damaged file aside), every rank loads its choice, and the run finishes."""
import subprocess
import sys

import torch

from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, env_for_subprocess


def _train(data, out, max_iter):
    cmd = [sys.executable, "scripts/torchrun.py", "--standalone", "--nproc_per_node=2", "main.py",
           "--config_exp", CONFIG, "--run_mode", "train", "--data_root", data, "--output_dir", str(out),
           "--opts", *BASE_OPTS, f"max_iter={max_iter}", "val_interval=1000", "ckpt_interval=1"]
    return subprocess.run(cmd, cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)


def test_two_ranks_agree_on_the_fallback_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = _train(tiny_data, out, 2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    folder = out / "checkpoints"
    (folder / "last.pth").write_bytes((folder / "last.pth").read_bytes()[:300])
    second = _train(tiny_data, out, 3)
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-3000:]
    assert "unreadable checkpoint(s)" in text and "resuming from" in text and "at iteration 2" in text, text[-3000:]
    assert f"resumed from {folder / 'iter_000002.pth'}: 2 of 3 iterations done" in text, text[-3000:]
    assert torch.load(folder / "last.pth", weights_only=True)["iteration"] == 3
    assert len([p for p in folder.iterdir() if p.name.startswith("last.pth.unreadable-")]) == 1
