"""A 2-process torchrun (gloo, CPU) run trains and evaluates every rank's shard; its final metrics equal a
1-process evaluation of the checkpoint it wrote, ensemble uncertainty scores included (eval_samples 2).
Also the clean shutdown (exit status 0 on both ranks)."""
import json
import math
import subprocess
import sys

import torch

import main as entry
from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, env_for_subprocess


REAL_VALUED_SUMS = {"normals/mean", "normals/rmse", "edge/loss"}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def test_torchrun_two_processes_match_single_process_eval(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "main.py",
           "--config_exp", CONFIG, "--run_mode", "train", "--data_root", tiny_data, "--output_dir", str(out),
           "--opts", *BASE_OPTS, "max_iter=2", "val_interval=2", "eval_samples=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    ddp = json.loads((out / "metrics" / "metrics_iter000002.json").read_text())
    assert ddp["world_size"] == 2 and ddp["num_images"] == 4 and ddp["protocol"] == "full"
    # both ranks wrote their shard of the predictions
    assert len(list((out / "predictions" / "semseg").glob("*.png"))) == 4

    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same device (CPU) as the DDP run
    single = tmp_path / "single"
    argv = ["--config_exp", CONFIG, "--run_mode", "infer", "--trained_model", str(out / "checkpoints" / "last.pth"),
            "--data_root", tiny_data, "--output_dir", str(single), "--opts", *BASE_OPTS, "eval_samples=2"]
    assert entry.main(argv) == 0
    one = json.loads((single / "infer_last" / "metrics" / "metrics_infer_iter000002.json").read_text())
    assert one["world_size"] == 1 and one["num_images"] == 4
    a, b = _flat(ddp["results"]), _flat(one["results"])
    assert a.keys() == b.keys() and len(a) > 20
    # an ensemble of 2 (eval_samples): its uncertainty scores too (AUSE from integer sums: exact over ranks)
    assert {"semseg/unc_ause", "depth/unc_ause", "normals/unc_spearman"} <= a.keys() or \
        {"semseg/unc_ause", "normals/unc_spearman"} <= a.keys(), sorted(a)
    for k in a:
        # per-batch float32 partial sums, or per-pixel float errors (the ensemble's normals: the accumulation is
        # exact, but the batch composition changes the last bits of the predictions themselves)
        if math.isnan(a[k]) or math.isnan(b[k]):  # undefined (a rank correlation of constant maps) on both
            assert math.isnan(a[k]) and math.isnan(b[k]), (k, a[k], b[k])
        elif k in REAL_VALUED_SUMS or k.startswith("normals/unc_"):
            assert math.isclose(a[k], b[k], rel_tol=1e-6), (k, a[k], b[k])
        else:  # counts (IoU, maxF, thresholds, boundary matches): exactly equal
            assert a[k] == b[k], (k, a[k], b[k])
