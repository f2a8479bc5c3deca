"""The one prediction path (engine/predict.py): the model's own starting noise equals the formula the
evaluation used before it moved into the model; evaluate(), infer.py on split:val and the SEISM exporter
write the same PNGs and metrics; a sink sees every readable image exactly once."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import infer
from engine.evaluator import evaluate
from engine.predict import predict_batch, run_predictions
from tests.engine.conftest import BASE_OPTS, CONFIG, tiny_cfg
from utils.checkpoint import build_state, save_checkpoint, unwrap_model
from utils.seed import name_seed

CPU = torch.device("cpu")
NAMES = ["2008_000002", "7", "été", "2008_000002_png"]


def old_eval_noise(model, images, names, seed):
    """The starting noise as engine/evaluator.eval_noise built it outside the model (kept as the reference)."""
    base = unwrap_model(model)
    head = getattr(base, "heads", None)
    m = getattr(head, "noisy_channels", None)
    if m is None:
        return None
    r = int(getattr(head, "randsteps", 1))
    patch = int(getattr(getattr(base, "backbone", None), "patch_size", 16))
    b, _, hh, ww = images.shape
    h, w = hh // patch, ww // patch
    z = torch.empty((r, b, m, h, w), dtype=torch.float32)
    for j, name in enumerate(names):
        g = torch.Generator()
        g.manual_seed(name_seed(seed, name))
        z[:, j] = torch.randn((r, m, h, w), generator=g)
    return z.reshape(r * b, m, h, w).to(images.device)


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    from models import build_model

    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    return save_checkpoint(build_state(build_model(tiny_cfg(tiny_data, out)), iteration=0), str(out))[0]


class Wrapped(torch.nn.Module):
    """Stands for DDP: the model under .module."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def _mlore_cfg():
    from easydict import EasyDict

    return EasyDict(model="TaskDiffusion_mlore", backbone="TaskDiffusion_vitT",
                    backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2, taps=[1, 2, 3]),
                    backbone_weights=None, drop_path_rate=0.0, final_embed_dim=16, timesteps=2, randsteps=2,
                    bit_scales={"all": 0.01}, module_layer=2, with_aux=True, rank_list=list(range(1, 16)), topk=3,
                    spatial_size=None, db_name="PASCALContext",
                    TASKS=dict(NAMES=["semseg", "sal", "normals"]), TRAIN=dict(SCALE=[32, 48]), ignore_index=255)


@pytest.mark.parametrize("kind", ["TaskDiffusion", "randsteps3", "mlore", "baseline"])
def test_initial_noise_equals_the_old_eval_noise(kind, tiny_data, tmp_path):
    from models import build_model

    torch.manual_seed(0)
    if kind == "mlore":
        from models.mlore import build_mlore_model

        model, size = build_mlore_model(_mlore_cfg()).eval(), (32, 48)
    else:
        opts = {"randsteps3": ["randsteps=3"], "baseline": ["model=baseline"]}.get(kind, [])
        model, size = build_model(tiny_cfg(tiny_data, tmp_path, *opts)).eval(), (48, 48)
    images = torch.randn(len(NAMES), 3, *size)
    for seed in (0, 3, 2**40):
        new, old = model.initial_noise(images, NAMES, seed), old_eval_noise(model, images, NAMES, seed)
        if kind == "baseline":
            assert new is None and old is None
            continue
        assert new.dtype == old.dtype and new.shape == old.shape and torch.equal(new, old), (kind, seed)
    # predict_batch samples from exactly that noise, asking the bare model inside a DDP-like wrapper
    got = predict_batch(Wrapped(model), images[:2], NAMES[:2], 3)
    noise = old_eval_noise(model, images[:2], NAMES[:2], 3)
    with torch.no_grad():
        want = (model(images[:2], noise=noise) if noise is not None else model(images[:2]))["pred"]
    assert set(got) == set(want) and all(torch.equal(got[t], want[t].float()) for t in want)


def _same_results(a: dict, b: dict) -> bool:
    def same(x, y):
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list):
            return isinstance(y, list) and len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        if isinstance(x, float) and math.isnan(x):
            return isinstance(y, float) and math.isnan(y)
        return x == y

    return same(a, b)


def test_evaluate_infer_and_exporter_write_the_same(checkpoint, tiny_data, tmp_path):
    from data import build_dataloader
    from tools.export_edges_for_seism import main as export_main
    from engine.cli import load_trained_model

    cfg = tiny_cfg(tiny_data, tmp_path / "run")
    model = load_trained_model(cfg, checkpoint, CPU)
    loader = build_dataloader(cfg, "val", distributed=False, shuffle=False, catch_errors=True)
    res = evaluate(model, loader, cfg, CPU, full_edge=True, seed=5, pred_dir=str(tmp_path / "eval"), n_visuals=3,
                   progress=False)
    common = ["--config_exp", CONFIG, "--trained_model", checkpoint, "--device", "cpu", "--data_root", tiny_data,
              "--seed", "5"]
    assert infer.main(common + ["--input", "split:val", "--output", str(tmp_path / "infer"), "--batch_size", "2",
                                "--opts", *BASE_OPTS]) == 0
    assert export_main(common + ["--output", str(tmp_path / "seism"), "--batch_size", "3", "--opts", *BASE_OPTS]) == 0

    m = json.loads((tmp_path / "infer" / "metrics.json").read_text())
    assert m["num_images"] == res.num_images == 4
    assert _same_results(m["results"], res.results), (m["results"], res.results)
    val_ids = (Path(tiny_data) / "PASCALContext" / "ImageSets" / "Context" / "val.txt").read_text().split()
    assert [name for name, _ in res.visuals] == val_ids[:3]  # the first n images, for TensorBoard
    assert sorted(p.stem for p in (tmp_path / "infer" / "overview").iterdir()) == sorted(val_ids)

    written = sorted(p.relative_to(tmp_path / "eval") for p in (tmp_path / "eval").rglob("*.png"))
    assert len(written) == 4 * len(cfg.TASKS.NAMES)
    for rel in written:
        assert (tmp_path / "eval" / rel).read_bytes() == (tmp_path / "infer" / rel).read_bytes(), rel
    edges = sorted(p.name for p in (tmp_path / "seism" / "edge").iterdir())
    assert edges == sorted(rel.name for rel in written if rel.parent.name == "edge")
    for name in edges:
        assert (tmp_path / "seism" / "edge" / name).read_bytes() == (tmp_path / "eval" / "edge" / name).read_bytes()


class RecordingSink:
    def __init__(self):
        self.names, self.batches = [], 0

    def add(self, done):
        self.batches += 1
        assert len(done) == len(done.names) == done.pred["semseg"].shape[0]
        self.names.extend(done.names)


def test_a_sink_sees_every_readable_image_once(checkpoint, tiny_data, tmp_path):
    from data import build_dataloader
    from data.sample_errors import SampleReadError
    from data.tasks import task_infos
    from engine.cli import load_trained_model

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    root = data / "PASCALContext"
    ids = (root / "ImageSets" / "Context" / "val.txt").read_text().split()
    (root / "JPEGImages" / f"{ids[1]}.jpg").write_bytes(b"\x00not a jpeg" * 20)
    cfg = tiny_cfg(str(data), tmp_path / "run", "valBatch=3")
    model = load_trained_model(cfg, checkpoint, CPU)
    tasks = task_infos(cfg.db_name, cfg.TASKS.NAMES)
    loader = build_dataloader(cfg, "val", distributed=False, shuffle=False, catch_errors=True)

    first, second, seen = RecordingSink(), RecordingSink(), []
    run = run_predictions(model, loader, [first, second], tasks=tasks, device=CPU, seed=0, data_errors="skip",
                          on_unreadable=seen.extend)
    readable = [i for i in ids if i != ids[1]]
    assert first.names == second.names == readable and first.batches == 2
    assert run.count == 3 and [f.index for f in run.failed] == [1] and seen == run.failed

    model.train()
    with pytest.raises(SampleReadError, match="data_errors: skip"):
        run_predictions(model, loader, [RecordingSink()], tasks=tasks, device=CPU, seed=0, data_errors="abort")
    assert model.training  # predicted in eval mode, the caller's mode restored even after an error


class UncertaintyRecorder:
    def __init__(self):
        self.unc = []

    def add(self, done):
        self.unc.append({t: sorted(m) for t, m in done.uncertainty.items()})
        for j in range(len(done)):
            for t, maps in done.uncertainty_maps(j).items():
                for v in maps.values():
                    assert v.shape == tuple(int(s) for s in done.sizes[j]), t


@pytest.mark.parametrize("model_kind", ["TaskDiffusion", "baseline"])
def test_ensembles_through_the_prediction_path(checkpoint, tiny_data, tmp_path, model_kind, caplog):
    """samples=3: every batch carries each task's uncertainty maps at the original size; a deterministic
    model (the baseline) predicts once, says so, and has none."""
    from data import build_dataloader
    from data.tasks import task_infos
    from models import build_model

    cfg = tiny_cfg(tiny_data, tmp_path / "run", "valBatch=3", f"model={model_kind}")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tasks = task_infos(cfg.db_name, cfg.TASKS.NAMES)
    loader = build_dataloader(cfg, "val", distributed=False, shuffle=False)
    rec = UncertaintyRecorder()
    run_predictions(model, loader, [rec], tasks=tasks, device=CPU, seed=0, samples=3, samples_chunk=2)
    if model_kind == "baseline":
        assert all(not u for u in rec.unc) and "deterministic" in caplog.text
    else:
        assert rec.unc and all(u == {t: sorted(n for n, _ in tasks[t].uncertainty_maps) for t in tasks} for u in rec.unc)
