"""A tiny end-to-end `main.py --run_mode train`: checkpoints, TensorBoard events, metrics JSON,
predictions, log; a second identical command finds the run complete and does not train again."""
import json

import torch

import main as entry
from tests.engine.conftest import BASE_OPTS, CONFIG


def _run(data, out, *opts):
    argv = ["--config_exp", CONFIG, "--run_mode", "train", "--data_root", data, "--output_dir", str(out),
            "--opts", *BASE_OPTS, "max_iter=4", "val_interval=2", *opts]
    return entry.main(argv)


def test_train_writes_everything(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    out = tmp_path / "run"
    assert _run(tiny_data, out) == 0

    for name in ("config.yml", "log.txt", "checkpoints/last.pth", "checkpoints/best.pth",
                 "metrics/metrics_iter000002.json", "metrics/metrics_iter000004.json", "metrics/train_log.jsonl"):
        assert (out / name).is_file(), name
    ck = torch.load(out / "checkpoints" / "last.pth", weights_only=False)
    assert ck["iteration"] == 4 and ck["scheduler"]["last_epoch"] == 4
    assert not any(k.startswith("module.") for k in ck["model"])
    assert ck["config"]["max_iter"] == 4 and set(ck["rng"]["0"]) >= {"python", "numpy", "torch"}

    est = json.loads((out / "metrics" / "metrics_iter000002.json").read_text())
    final = json.loads((out / "metrics" / "metrics_iter000004.json").read_text())
    assert est["protocol"] == "estimate" and "odsF_est" in est["results"]["edge"]
    assert final["protocol"] == "full" and "odsF" in final["results"]["edge"] and final["num_images"] == 4
    assert set(final["headline"]) == {"semseg", "human_parts", "sal", "normals", "edge"}

    tasks = ["semseg", "human_parts", "sal", "normals", "edge"]
    for t in tasks:
        assert len(list((out / "predictions" / t).glob("*.png"))) == 4, t
    lines = [json.loads(x) for x in (out / "metrics" / "train_log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2, 3, 4] and all("loss/total" in x for x in lines)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("loss/total", "loss/main", "aux/semseg", "train/lr", "train/grad_norm", "speed/it_per_s",
                "speed/images_per_s", "val/semseg/mIoU", "val/edge/odsF", "val/edge/odsF_est", "val/delta_m",
                *[f"loss/{t}" for t in tasks]):
        assert tag in scalars, tag
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val/sal/maxF")] == [2, 4]
    lr = [e.value for e in acc.Scalars("train/lr")]
    assert lr[0] > lr[-1] > 0
    assert len(acc.Tags()["images"]) >= 2  # input / GT / prediction grids of fixed val images

    log = (out / "log.txt").read_text()
    assert "train 4/4" in log and "metrics at iteration 4" in log and "predictions:" in log

    # same command again: complete, nothing retrained, the final table printed from the JSON
    assert _run(tiny_data, out) == 0
    assert torch.load(out / "checkpoints" / "last.pth", weights_only=False)["iteration"] == 4
    log2 = (out / "log.txt").read_text()
    assert "already complete" in log2 and log2.count("train 1/4") == 1
