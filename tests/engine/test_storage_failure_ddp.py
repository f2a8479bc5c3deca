"""A full disk at a checkpoint of a 2-rank torchrun job: rank 0's failed write is agreed by both ranks
(Trainer.save), the job ends with main.py's one `cannot write` line and status 75 through the launcher
(scripts/torchrun.py), no traceback, and last.pth keeps the previous iteration."""
import os
import subprocess
import sys

import torch

from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, env_for_subprocess

# Loaded by every Python process of the job (sitecustomize): rank 0's 3rd checkpoint file meets a full disk.
HOOK = '''
import os
if os.environ.get("RANK") == "0":
    import errno, torch
    _real, _n = torch.save, [0]
    def _save(obj, f, *a, **k):
        _n[0] += ".pth" in str(getattr(f, "name", ""))  # checkpoint files only (collectives pickle too)
        if _n[0] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real(obj, f, *a, **k)
    torch.save = _save
'''


def test_two_ranks_end_together_with_the_one_line(tiny_data, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    env = env_for_subprocess()
    env["PYTHONPATH"] = str(hook) + os.pathsep + env["PYTHONPATH"]
    out = tmp_path / "run"
    cmd = [sys.executable, "scripts/torchrun.py", "--standalone", "--nproc_per_node=2", "main.py",
           "--config_exp", CONFIG, "--run_mode", "train", "--data_root", tiny_data, "--output_dir", str(out),
           "--opts", *BASE_OPTS, "max_iter=4", "val_interval=1000", "ckpt_interval=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 75, text[-3000:]
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    last = out / "checkpoints" / "last.pth"
    assert len(errors) == 1 and errors[0].endswith(
        f"error: cannot write {last}: No space left on device; last.pth still holds iteration 2; free space and run "
        f"the same command to resume"), text[-3000:]
    assert "Traceback" not in text and "ChildFailedError" not in text, text[-3000:]
    assert torch.load(last, weights_only=True)["iteration"] == 2
