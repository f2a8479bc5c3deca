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


def run_two_ranks(tiny_data, tmp_path, hook_source: str, *opts: str):
    """A 2-rank torchrun training through scripts/torchrun.py with `hook_source` as every process's
    sitecustomize; returns (exit status, stdout + stderr, run folder)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(hook_source)
    env = env_for_subprocess()
    env["PYTHONPATH"] = str(hook) + os.pathsep + env["PYTHONPATH"]
    out = tmp_path / "run"
    cmd = [sys.executable, "scripts/torchrun.py", "--standalone", "--nproc_per_node=2", "main.py",
           "--config_exp", CONFIG, "--run_mode", "train", "--data_root", tiny_data, "--output_dir", str(out),
           "--opts", *BASE_OPTS, *opts]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr, out


def test_two_ranks_end_together_with_the_one_line(tiny_data, tmp_path):
    status, text, out = run_two_ranks(tiny_data, tmp_path, HOOK, "max_iter=4", "val_interval=1000", "ckpt_interval=2")
    assert status == 75, text[-3000:]
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    last = out / "checkpoints" / "last.pth"
    assert len(errors) == 1 and errors[0].endswith(
        f"error: cannot write {last}: No space left on device; last.pth still holds iteration 2; free space and run "
        f"the same command to resume"), text[-3000:]
    assert "Traceback" not in text and "ChildFailedError" not in text, text[-3000:]
    assert torch.load(last, weights_only=True)["iteration"] == 2


# Rank 0's metrics JSON of the first evaluation meets a full disk (a write only rank 0 makes, after the
# checkpoint): both ranks must still end together with the one line, not rank 1 in a collective.
METRICS_HOOK = '''
import os
if os.environ.get("RANK") == "0":
    import errno, json
    _real = json.dump
    def _dump(obj, fp, *a, **k):
        if "metrics_iter" in str(getattr(fp, "name", "")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real(obj, fp, *a, **k)
    json.dump = _dump
'''


def test_two_ranks_end_together_when_the_metrics_json_fails(tiny_data, tmp_path):
    status, text, out = run_two_ranks(tiny_data, tmp_path, METRICS_HOOK, "max_iter=4", "val_interval=2")
    assert status == 75, text[-3000:]
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "error: cannot write " in errors[0] and "metrics_iter000002.json" in errors[0] \
        and "last.pth still holds iteration 2" in errors[0], text[-3000:]
    assert "Traceback" not in text and "ChildFailedError" not in text, text[-3000:]
    assert torch.load(out / "checkpoints" / "last.pth", weights_only=True)["iteration"] == 2
    assert not list((out / "metrics").glob("*.tmp*")) and not (out / "metrics" / "metrics_iter000002.json").exists()


def test_a_failing_train_log_stops_with_one_warning_not_an_exception():
    """metrics/train_log.jsonl is rank 0's alone: a full disk there must not end rank 0 mid-iteration."""
    import errno
    import types

    from engine.trainer import Trainer

    class FullFile:
        name = "run/metrics/train_log.jsonl"
        closed = False

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            self.closed = True

    warnings = []
    fake = types.SimpleNamespace(log=types.SimpleNamespace(warning=warnings.append))
    f = FullFile()
    assert Trainer._append_train_log(fake, f, {"iteration": 3, "loss/total": 1.0}) is None
    assert f.closed and len(warnings) == 1 and "No space left on device" in warnings[0] \
        and "train_log.jsonl" in warnings[0], warnings
