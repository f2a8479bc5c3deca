"""MultiTaskEvaluator end to end on loader-like batches, sharded-vs-whole equality, build_evaluator, Δm."""
import math

import pytest
import torch
from easydict import EasyDict

from evaluation import MultiTaskEvaluator, build_evaluator, delta_m

PASCAL_TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]
NYUD_TASKS = ["semseg", "depth", "normals", "edge"]
CHANNELS = {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1, "depth": 1}


def make_batch(seed, tasks, b=2, hw=(32, 40), nyud=False):
    """A batch as the val loader gives it: centred padding filled with the ignore values, plus meta."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    sizes = [torch.tensor([h - 2 * (i + 1), w - 4 * i], dtype=torch.int64) for i in range(b)]
    valid = torch.zeros(b, 1, h, w, dtype=torch.bool)
    for i, (h0, w0) in enumerate(sizes.copy()):
        top, left = (h - int(h0)) // 2, (w - int(w0)) // 2
        valid[i, 0, top:top + int(h0), left:left + int(w0)] = True
    batch = {"meta": {"img_name": [f"{seed:03d}_{i}" for i in range(b)], "img_size": sizes}}
    n_sem = 40 if nyud else 21
    for t in tasks:
        if t in ("semseg", "human_parts"):
            k = n_sem if t == "semseg" else 7
            x = torch.randint(0, k, (b, 1, h, w), generator=g).float()
        elif t in ("sal", "edge"):
            x = (torch.rand(b, 1, h, w, generator=g) < 0.3).float()
        elif t == "normals":
            x = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
        else:  # depth
            x = torch.rand(b, 1, h, w, generator=g) * 9 + 0.5
        fill = 0.0 if t == "depth" else 255.0
        batch[t] = torch.where(valid.expand_as(x), x, torch.full_like(x, fill))
    pred = {t: torch.randn(b, n_sem if (t == "semseg" and nyud) else CHANNELS[t], h, w, generator=g) for t in tasks}
    return pred, batch


def _evaluator(db, tasks, **boundary):
    kw = dict(thresholds=5, workers=1, backend="scipy", progress=False)
    kw.update(boundary)
    return MultiTaskEvaluator(db, tasks, boundary=kw)


COUNT_KEYS = {"semseg": ["mIoU", "pixel_acc"], "human_parts": ["mIoU"], "sal": ["maxF", "mIoU"],
              "normals": ["11.25", "22.5", "30", "median"], "edge": ["odsF", "oisF", "AP", "num_images"],
              "depth": ["delta1", "delta2", "delta3"]}


@pytest.mark.parametrize("db,tasks", [("PASCALContext", PASCAL_TASKS), ("NYUD", NYUD_TASKS)])
def test_sharded_merge_equals_whole(db, tasks):
    batches = [make_batch(s, tasks, nyud=db == "NYUD") for s in range(6)]
    whole = _evaluator(db, tasks)
    for pred, batch in batches:
        whole.update(pred, batch)
    shards = [_evaluator(db, tasks) for _ in range(3)]
    for k, (pred, batch) in enumerate(batches):
        shards[k % 3].update(pred, batch)
    merged = shards[0].merge(shards[1]).merge(shards[2])
    rw, rm = whole.compute(), merged.compute()
    assert rw.keys() == rm.keys() == set(tasks)
    for t in tasks:
        assert rw[t].keys() == rm[t].keys()
        for k, v in rw[t].items():
            if k in COUNT_KEYS.get(t, []) or k == "per_class":
                assert rm[t][k] == v, (t, k)  # count-based: bit-identical
            else:
                assert rm[t][k] == pytest.approx(v, rel=1e-12, abs=1e-12), (t, k)  # float sums: rounding only
    assert rw["edge"]["num_images"] == 12


def test_results_layout_and_headline_keys():
    pred, batch = make_batch(0, PASCAL_TASKS)
    ev = _evaluator("PASCALContext", PASCAL_TASKS)
    ev.update(pred, batch)
    r = ev.compute()
    assert set(r["semseg"]) == {"mIoU", "pixel_acc", "per_class"}
    assert list(r["semseg"]["per_class"])[:2] == ["background", "aeroplane"]
    assert list(r["human_parts"]["per_class"]) == ["background", "head", "torso", "uarm", "larm", "uleg", "lleg"]
    assert {"maxF", "mIoU"} <= set(r["sal"]) and {"mean", "median", "rmse"} <= set(r["normals"])
    assert {"loss", "odsF", "oisF", "AP"} <= set(r["edge"])
    assert all(0 <= r[t][m] <= 100 for t, m in (("semseg", "mIoU"), ("sal", "maxF"), ("edge", "odsF")))


def test_perfect_predictions_give_perfect_scores():
    pred, batch = make_batch(1, ["semseg", "sal", "normals"])
    logits_sem = torch.nn.functional.one_hot(batch["semseg"][:, 0].long().clamp(max=20), 21).permute(0, 3, 1, 2)
    sal = batch["sal"][:, 0].clamp(max=1)
    perfect = {"semseg": logits_sem.float() * 10, "sal": torch.stack([1 - sal, sal], 1) * 20,
               "normals": torch.where(batch["normals"] == 255, torch.ones_like(batch["normals"]), batch["normals"])}
    ev = MultiTaskEvaluator("PASCALContext", ["semseg", "sal", "normals"])
    ev.update(perfect, batch)
    r = ev.compute()
    present = {int(c) for c in batch["semseg"].unique() if c != 255}
    assert r["semseg"]["mIoU"] == pytest.approx(100 * len(present) / 21)
    assert r["semseg"]["pixel_acc"] == pytest.approx(100.0)
    assert r["sal"]["maxF"] == pytest.approx(100.0)
    assert r["normals"]["mean"] == pytest.approx(0.0, abs=0.05)


def test_update_does_not_modify_inputs_and_checks_shapes():
    pred, batch = make_batch(2, NYUD_TASKS, nyud=True)
    before = {t: v.clone() for t, v in pred.items()}
    gt_before = batch["depth"].clone()
    ev = _evaluator("NYUD", NYUD_TASKS)
    ev.update(pred, batch)
    assert all(torch.equal(before[t], pred[t]) for t in pred) and torch.equal(gt_before, batch["depth"])
    snapshot = ev.meters["semseg"].sums["confusion"].clone()
    pred["depth"] = pred["depth"][..., :-1]
    with pytest.raises(ValueError, match="depth"):
        ev.update(pred, batch)
    with pytest.raises(KeyError, match="depth"):
        ev.update({"semseg": pred["semseg"]}, batch)
    assert torch.equal(ev.meters["semseg"].sums["confusion"], snapshot)  # a rejected batch changes nothing


def _cfg(tmp_path=None, **edge_eval):
    ee = {"full_thresholds": 7, "estimate_thresholds": 4, "estimate_max_images": 3, "image_list": None, "workers": 1}
    ee.update(edge_eval)
    return EasyDict(db_name="PASCALContext", TASKS={"NAMES": PASCAL_TASKS}, edge_w=0.95, ignore_index=255,
                    eval_workers=3, edge_eval=ee)


def test_build_evaluator_full_and_estimate(tmp_path):
    full = build_evaluator(_cfg(), full_edge=True)
    est = build_evaluator(_cfg(), full_edge=False)
    assert len(full.boundary.thresholds) == 7 and full.boundary.max_images is None
    assert len(est.boundary.thresholds) == 4 and est.boundary.max_images == 3
    for s in range(3):
        pred, batch = make_batch(s, PASCAL_TASKS)
        est.update(pred, batch)
    r = est.compute()["edge"]
    assert "odsF_est" in r and "odsF" not in r and r["num_images_est"] == 3
    assert build_evaluator(_cfg(), boundary=False).boundary is None
    # boundary processes come from edge_eval.workers, not from eval_workers (DataLoader workers)
    assert full.boundary.workers == 1 and build_evaluator(_cfg(workers=5)).boundary.workers == 5
    assert full.boundary.backend == "scipy" and build_evaluator(_cfg(), workers=2).boundary.workers == 2
    ids = tmp_path / "ids.txt"
    ids.write_text("# published list\n000_0\n001_1\n")
    listed = build_evaluator(_cfg(image_list=str(ids)))
    assert listed.boundary.image_list == {"000_0", "001_1"}
    with pytest.raises(FileNotFoundError, match="image_list"):
        build_evaluator(_cfg(image_list=str(tmp_path / "missing.txt")))


def test_delta_m_signs_and_estimate_fallback():
    ref = {"semseg": {"mIoU": 80.0}, "normals": {"mean": 15.0}, "edge": {"odsF": 70.0}}
    better = {"semseg": {"mIoU": 84.0}, "normals": {"mean": 14.25}, "edge": {"odsF_est": 70.0}}
    # +5 % (higher better), +5 % (lower better: 15 -> 14.25), 0 % -> mean 10/3
    tasks = ["semseg", "normals", "edge"]
    assert delta_m(better, ref, "PASCALContext", tasks) == pytest.approx(10 / 3)
    worse = {"semseg": {"mIoU": 76.0}, "normals": {"mean": 16.5}, "edge": {"odsF": 70.0}}
    assert delta_m(worse, ref, "PASCALContext", tasks) == pytest.approx((-5 - 10 + 0) / 3)
    assert delta_m(ref, ref, "PASCALContext", tasks) == 0.0
    nyud = delta_m({"depth": {"rmse": 0.45}}, {"depth": {"rmse": 0.5}}, "NYUD", ["depth"])
    assert nyud == pytest.approx(10.0)
    with pytest.raises(KeyError, match="mIoU"):
        delta_m({"semseg": {"pixel_acc": 1.0}}, ref, "PASCALContext", ["semseg"])
    with pytest.raises(KeyError, match="delta_m_reference"):
        delta_m(better, {}, "PASCALContext", ["semseg"])
    assert math.isfinite(MultiTaskEvaluator("PASCALContext", tasks).delta_m(better, ref))


def test_compute_delta_m_warns_on_a_reference_without_the_run_tasks():
    """A reference missing a task of the run gives None *and* a warning naming the problem."""
    import logging

    from engine.evaluator import compute_delta_m
    from utils.logger import LOGGER_NAME

    cfg = EasyDict(db_name="PASCALContext", TASKS={"NAMES": ["semseg", "normals"]})
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger(LOGGER_NAME)
    log.addHandler(handler)
    try:
        results = {"semseg": {"mIoU": 50.0}, "normals": {"mean": 20.0}}
        assert compute_delta_m(results, {"semseg": {"mIoU": 50.0}, "normals": {"mean": 20.0}}, cfg) == 0.0
        assert not records
        assert compute_delta_m(results, {"semseg": {"mIoU": 50.0}}, cfg) is None
    finally:
        log.removeHandler(handler)
    assert len(records) == 1 and "normals" in records[0].getMessage()
    assert "delta_m_reference" in records[0].getMessage()
