"""The benchmark scripts run end to end on tiny sizes and report what they claim to report.

Numbers are not asserted as speed limits (DEVELOPERS.md): these tests check the bookkeeping (rows,
ratios, FLOP counts, the reference/fast agreement, Delta_m) on a model small enough for CI.
"""
import argparse
import json

import pytest

from benchmarks import learning, speed


def test_speed_rows_ratios_and_flops(tmp_path):
    out = tmp_path / "speed.json"
    assert speed.main(["--device", "cpu", "--configs", "demo_pascal", "--size", "64", "64", "--batch", "1",
                       "--variants", "ref-fp32,fp32,bf16,baseline-fp32", "--warmup", "0", "--repeats", "2",
                       "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"ref-fp32", "fp32", "bf16", "baseline-fp32"}
    assert not [r for r in rows.values() if "error" in r]
    assert data["machine"]["torch"] and data["env"].keys() >= {"MALLOC_MMAP_MAX_"}
    for r in rows.values():
        assert r["infer_s"]["n"] == 2 and r["infer_s"]["min"] <= r["infer_s"]["median"] <= r["infer_s"]["max"]
        assert r["train_s"]["n"] == 2 and r["infer_GFLOP_per_img"] > 0 and r["train_GFLOP_per_img"] > 0
        assert r["speedup_infer_vs_ref"] > 0
    assert rows["ref-fp32"]["speedup_infer_vs_ref"] == pytest.approx(1.0)
    # the fast path computes the reference's predictions with fewer FLOPs
    assert rows["fp32"]["pred_max_rel_dev_vs_ref"] < 1e-4
    assert rows["fp32"]["infer_GFLOP_per_img"] < rows["ref-fp32"]["infer_GFLOP_per_img"]
    # the baseline decodes once instead of 3 times: cheaper than the diffusion model on the same path
    assert rows["baseline-fp32"]["infer_GFLOP_per_img"] < rows["fp32"]["infer_GFLOP_per_img"]
    assert "| demo_pascal | fp32 | 1 |" in speed.markdown(data["rows"])


def test_delta_m_signs():
    ref = {"semseg": 50.0, "normals": 20.0}
    assert learning.delta_m(dict(ref), ref, "PASCALContext") == 0.0
    # +10% mIoU (higher is better) and -10% normals error (lower is better): both gains
    assert learning.delta_m({"semseg": 55.0, "normals": 18.0}, ref, "PASCALContext") == pytest.approx(10.0)
    assert learning.delta_m({"semseg": 45.0, "normals": 22.0}, ref, "PASCALContext") == pytest.approx(-10.0)


def test_learning_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "learning.json"
    assert learning.main(["--datasets", "pascal", "--seeds", "0", "--iters", "2", "--n_train", "4", "--n_val", "2",
                          "--image_size", "32", "32",
                          "--data_root", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--tag", "t",
                          "--json", str(out), "--variant", "steps1:timesteps=1", "--opts", "crop_size=[32,32]", "trBatch=2", "valBatch=2",
                          "nworkers=0", "eval_workers=0", "edge_eval.workers=0", "warmup_iters=0", "edge_eval.full_thresholds=3",
                          "edge_eval.estimate_thresholds=3"]) == 0
    data = json.loads(out.read_text())
    assert data["args"]["iters"] == 2 and data["args"]["variant"] == ["TaskDiffusion[steps1]:timesteps=1"]
    assert "torch" in data["machine"]
    report = data["results"]["pascal"]
    assert set(report) == {"baseline", "TaskDiffusion", "TaskDiffusion[steps1]"}
    assert report["TaskDiffusion[steps1]"]["opts"] == ["timesteps=1"]
    for m in report.values():
        (h,) = m["per_seed"]
        assert set(h) == {"semseg", "human_parts", "sal", "normals", "edge"}
        assert all(isinstance(v, float) for v in h.values())
    assert report["baseline"]["delta_m"] == [pytest.approx(0.0)]  # the reference is the baseline's mean
    assert (tmp_path / "runs" / "learn_pascal_TaskDiffusion_s0_t" / "checkpoints").is_dir()
    # an inference-only variant re-evaluates the default checkpoint instead of training
    steps1 = tmp_path / "runs" / "learn_pascal_TaskDiffusion_steps1_s0_t"
    assert not (steps1 / "checkpoints").exists() and list(steps1.glob("infer_*/metrics/metrics_infer_iter*.json"))
    assert "| **TaskDiffusion[steps1]** | mean |" in capsys.readouterr().out


def test_variant_parsing():
    arm = learning.parse_variant("bit0.1:bit_scales.all=0.1 timesteps=5")
    assert arm.name == "TaskDiffusion[bit0.1]" and arm.opts == ("bit_scales.all=0.1", "timesteps=5")
    assert not arm.inference_only and learning.parse_variant("s:timesteps=2 randsteps=2").inference_only
    assert learning.parse_variant("bf16:amp_cpu=true").inference_only
    for bad in ("nocolon", ":timesteps=1", "x:", "x:timesteps"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME:KEY=VALUE"):
            learning.parse_variant(bad)


def test_speed_regional_compile_variant_runs_on_a_copy(tmp_path):
    """bf16-compile-regions (traced with the 'eager' backend here) predicts what the eager bf16 variant
    predicts, and compiling it in place does not touch the model the other variants share."""
    out = tmp_path / "speed.json"
    assert speed.main(["--device", "cpu", "--configs", "demo_pascal", "--size", "32", "32", "--batch", "1",
                       "--variants", "ref-fp32,bf16,bf16-compile-regions", "--compile_backend", "eager",
                       "--warmup", "0", "--repeats", "1", "--skip_train", "--skip_flops", "--json", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert not [r for r in rows.values() if "error" in r]
    assert rows["bf16-compile-regions"]["compile"] == "regions" and rows["bf16"]["compile"] is False
    dev = rows["bf16"]["pred_max_rel_dev_vs_ref"]
    assert abs(rows["bf16-compile-regions"]["pred_max_rel_dev_vs_ref"] - dev) <= 1e-3 + 0.5 * dev
    import torch

    cpu = torch.device("cpu")
    _, model, crit = speed.build("demo_pascal", "TaskDiffusion", cpu, size=(32, 32))
    r = speed.Runner(speed.VARIANTS["bf16-compile-regions"], model, crit, None, None, None, cpu, None,
                     {"backend": "eager"})
    assert r.model is not model and "decode" in vars(r.model.heads) and "decode" not in vars(model.heads)
