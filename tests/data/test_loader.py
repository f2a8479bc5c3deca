"""build_dataset / build_dataloader / collate_fn: batch format of docs/method.md#sample-dict-and-batches, seeding per worker and rank."""
import numpy as np
import pytest
import torch

from data import DatasetError, build_dataloader, build_dataset, collate_fn


def _check_batch(batch, cfg, b, hw, tasks_channels):
    assert batch["image"].shape == (b, 3) + hw and batch["image"].dtype == torch.float32
    assert -2.2 < batch["image"].min() and batch["image"].max() < 2.7  # ImageNet-normalised
    for t, c in tasks_channels.items():
        assert batch[t].shape == (b, c) + hw and batch[t].dtype == torch.float32, t
    assert list(batch) == ["image"] + list(tasks_channels) + ["meta"]
    meta = batch["meta"]
    assert isinstance(meta["img_name"], list) and len(meta["img_name"]) == b
    assert all(isinstance(n, str) for n in meta["img_name"])
    assert len(meta["img_size"]) == b
    for s in meta["img_size"]:
        assert s.dtype == torch.int64 and s.shape == (2,)


def test_pascal_loader_two_workers(synth_root, cfg_factory, cache_dir):
    cfg = cfg_factory("PASCALContext", synth_root, nworkers=2)
    chans = {"semseg": 1, "human_parts": 1, "sal": 1, "normals": 3, "edge": 1}
    train = build_dataloader(cfg, "train")
    batches = list(train)
    assert len(batches) == 3  # 6 images, batch 2, drop_last
    for b in batches:
        _check_batch(b, cfg, 2, (96, 96), chans)
    val = build_dataloader(cfg, "val")
    names, sizes = [], []
    for b in val:
        _check_batch(b, cfg, 2, (128, 128), chans)
        names += b["meta"]["img_name"]
        sizes += [tuple(s.tolist()) for s in b["meta"]["img_size"]]
    assert names == ["2008_000006", "2008_000007", "2008_000008", "2008_000009"]  # val: in order
    assert (128, 120) in sizes and (120, 128) in sizes  # original sizes, before padding


def test_nyud_loader_two_workers(synth_root, cfg_factory):
    cfg = cfg_factory("NYUD", synth_root, train_scale=(64, 80), test_scale=(104, 136), nworkers=2, valBatch=3)
    chans = {"semseg": 1, "depth": 1, "normals": 3, "edge": 1}
    for b in build_dataloader(cfg, "train"):
        _check_batch(b, cfg, 2, (64, 80), chans)
    b = next(iter(build_dataloader(cfg, "val")))
    _check_batch(b, cfg, 3, (104, 136), chans)
    assert [s.tolist() for s in b["meta"]["img_size"]] == [[96, 128]] * 3
    assert torch.all(b["depth"][:, :, :4] == 0) and torch.all(b["semseg"][:, :, :4] == 255)


def _first_epoch(cfg, **kw):
    loader = build_dataloader(cfg, "train", **kw)
    return [(b["meta"]["img_name"], b["image"]) for b in loader]


def test_reproducible_for_a_seed_and_different_across_ranks(synth_root, cfg_factory, cache_dir):
    cfg = cfg_factory("PASCALContext", synth_root, tasks=["semseg", "sal"], nworkers=2)
    a = _first_epoch(cfg)
    b = _first_epoch(cfg)
    assert [x[0] for x in a] == [x[0] for x in b]
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    # another seed: another order or other augmentations
    cfg2 = cfg_factory("PASCALContext", synth_root, tasks=["semseg", "sal"], nworkers=2, seed=4)
    c = _first_epoch(cfg2)
    assert any(x[0] != y[0] or not torch.equal(x[1], y[1]) for x, y in zip(a, c))
    # same data order (no shuffle), rank 0 vs rank 1: the augmentations differ
    r0 = _first_epoch(cfg, shuffle=False, rank=0)
    r1 = _first_epoch(cfg, shuffle=False, rank=1)
    assert [x[0] for x in r0] == [x[0] for x in r1]
    assert not any(torch.equal(x[1], y[1]) for x, y in zip(r0, r1))


def test_main_process_pipeline_is_seeded_too(synth_root, cfg_factory, cache_dir):
    cfg = cfg_factory("PASCALContext", synth_root, tasks=["semseg"], nworkers=0)
    a, b = _first_epoch(cfg, rank=0), _first_epoch(cfg, rank=0)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    c = _first_epoch(cfg, shuffle=False, rank=1)
    d = _first_epoch(cfg, shuffle=False, rank=0)
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(c, d))


def test_distributed_samplers_partition_the_data(synth_root, cfg_factory, cache_dir):
    cfg = cfg_factory("PASCALContext", synth_root, tasks=["semseg"], trBatch=1, valBatch=1)
    val = [[n for b in build_dataloader(cfg, "val", distributed=True, rank=r, world_size=2)
            for n in b["meta"]["img_name"]] for r in (0, 1)]
    assert sorted(val[0] + val[1]) == ["2008_000006", "2008_000007", "2008_000008", "2008_000009"]
    assert not set(val[0]) & set(val[1])
    train = [[n for b in build_dataloader(cfg, "train", distributed=True, rank=r, world_size=2)
              for n in b["meta"]["img_name"]] for r in (0, 1)]
    assert len(train[0]) == len(train[1]) == 3 and not set(train[0]) & set(train[1])


def test_collate_drops_idx_keys_and_reports_shape_mismatch():
    s = [{"image": torch.zeros(3, 4, 4), "edgeidx": torch.zeros(1), "meta": {"img_name": f"a{i}", "img_size": (4, 4)}}
         for i in range(2)]
    batch = collate_fn(s)
    assert set(batch) == {"image", "meta"} and batch["image"].shape == (2, 3, 4, 4)
    assert batch["meta"]["img_size"][0].dtype == torch.int64
    s[1]["image"] = torch.zeros(3, 5, 4)
    with pytest.raises(DatasetError, match="SCALE"):
        collate_fn(s)
    # numpy samples (no transform) are stacked as tensors too
    npb = collate_fn([{"x": np.ones((2, 2), np.float32), "meta": {"img_name": "a", "img_size": (2, 2)}}])
    assert torch.is_tensor(npb["x"]) and npb["x"].shape == (1, 2, 2)


def test_build_dataset_raw_and_custom_transform(synth_root, cfg_factory):
    cfg = cfg_factory("NYUD", synth_root, tasks=["depth"])
    raw = build_dataset(cfg, "val", transform=False)[0]
    assert isinstance(raw["depth"], np.ndarray) and raw["depth"].shape == (96, 128, 1)
    custom = build_dataset(cfg, "val", transform=lambda s: {"n": s["meta"]["img_name"]})[0]
    assert custom == {"n": "0005"}
    default = build_dataset(cfg, "val")[0]
    assert default["depth"].shape == (1, 128, 128)
