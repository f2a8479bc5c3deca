"""Datasets, transforms and loaders for PASCAL-Context, NYUD-v2 and registered plug-in datasets (docs/method.md#datasets-and-labels, docs/method.md#data-pipeline).

Public API:
  build_dataset(cfg, split, transform=None)   the reader of cfg.db_name (its DatasetSpec, data/registry.py);
                                              transform=None → the default pipeline of the split,
                                              transform=False → raw samples
  build_transforms(cfg, split, seed=None)     train (random) or val pipeline at cfg.TRAIN/TEST.SCALE
  build_dataloader(cfg, split, ...)           DataLoader with per-worker/per-rank seeding
  collate_fn(samples)                         stacks tensors; meta → {img_name: list, img_size: list}
  DatasetError                                every data failure that a user can fix

Heavy imports (torch, OpenCV, scipy) happen inside the functions, so `import data.tasks` stays cheap.
"""
from __future__ import annotations

from utils.config import cfg_get

from .common import DatasetError

__all__ = ["DatasetError", "build_dataset", "build_transforms", "build_dataloader", "collate_fn",
           "worker_init_fn", "split_seed"]

TRAIN_SPLITS = ("train",)


def _db_name(cfg) -> str:
    """cfg.db_name (else train_db_name), which must be a registered dataset (DatasetError listing them)."""
    from .datasets import dataset_spec

    return dataset_spec(cfg_get(cfg, "db_name") or cfg_get(cfg, "train_db_name")).name


def _tasks(cfg, db_name) -> list:
    from .tasks import DATASETS, available_tasks

    if db_name not in DATASETS:
        raise DatasetError(f"dataset {db_name!r} has no tasks registered; register each with "
                           f"data.tasks.register_task(task, {db_name!r})")
    tasks_cfg = cfg_get(cfg, "TASKS", {})
    names = list(cfg_get(tasks_cfg, "NAMES", []) or [])
    if not names:
        raise DatasetError("cfg.TASKS.NAMES is empty: enable at least one task (task_dictionary.include_<task>)")
    have = available_tasks(db_name)
    bad = [t for t in names if t not in have]
    if bad:
        raise DatasetError(
            f"the config asks for task(s) {', '.join(map(repr, bad))} that {db_name} does not have; "
            f"{db_name} provides: {', '.join(have)}. Set task_dictionary.include_<task>: false for them."
        )
    return [t for t in have if t in names]


def _scale(cfg, split, db_name):
    from .datasets import dataset_spec

    section = cfg_get(cfg, "TRAIN" if split in TRAIN_SPLITS else "TEST", {})
    scale = cfg_get(section, "SCALE", dataset_spec(db_name).crop_size)
    if len(scale) != 2 or min(int(scale[0]), int(scale[1])) <= 0:
        where = "TRAIN" if split in TRAIN_SPLITS else "TEST"
        raise DatasetError(f"cfg.{where}.SCALE must be [H, W] with H, W > 0, got {scale!r}")
    return int(scale[0]), int(scale[1])


def _rank_world():
    """(rank, world_size) of the default process group, (0, 1) without one."""
    try:
        from utils.distributed import get_rank, get_world_size

        return int(get_rank()), int(get_world_size())
    except ImportError:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def split_seed(*parts) -> int:
    """A 63-bit seed mixed from integers (global seed, rank, ...): nearby inputs give unrelated seeds."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def build_transforms(cfg, split: str, seed=None):
    """The docs/method.md#data-pipeline pipeline for `split` ('train' → random augmentation at TRAIN.SCALE; else val at TEST.SCALE)."""
    from .transforms import train_transforms, val_transforms

    db_name = _db_name(cfg)
    tasks = _tasks(cfg, db_name)
    size = _scale(cfg, split, db_name)
    if split in TRAIN_SPLITS:
        return train_transforms(db_name, tasks, size, seed=seed if seed is not None else cfg_get(cfg, "seed", 0))
    return val_transforms(db_name, tasks, size)


def build_dataset(cfg, split: str, transform=None, cache_dir=None):
    """The reader of cfg.db_name for `split` at cfg.db_root, with the enabled tasks of cfg.TASKS.NAMES.

    The reader is the dataset's DatasetSpec.reader, built as reader(root, split, tasks, transform=...,
    **extra): root is the dataset folder <db_root>/<spec.folder> (checked here first), extra holds the
    config values named by spec.reader_config (the cache_dir argument overrides a "cache_dir" one).
    transform: None → build_transforms(cfg, split); False → none (raw numpy samples); else a callable.
    """
    from .common import resolve_dataset_dir
    from .datasets import dataset_spec
    from .tasks import resolve

    db_name = _db_name(cfg)
    tasks = _tasks(cfg, db_name)
    root = resolve_dataset_dir(db_name, cfg_get(cfg, "db_root"))  # fails early with the full help text
    if transform is None:
        transform = build_transforms(cfg, split)
    elif transform is False:
        transform = None
    spec = dataset_spec(db_name)
    given = {"cache_dir": cache_dir} if cache_dir else {}
    extra = {kw: given.get(kw, cfg_get(cfg, key)) for kw, key in spec.reader_config}
    reader = resolve(spec.reader)
    return reader(root, split, tasks, transform=transform, **{k: v for k, v in extra.items() if v is not None})


def collate_fn(samples):
    """list of sample dicts → batch dict (docs/method.md#sample-dict-and-batches).

    Tensors (and numpy arrays) are stacked on a new batch dim; `meta` becomes
    {'img_name': list[str], 'img_size': list of int64 tensors [H0, W0]} (+ 'orig_size': list of (H, W) of the
    labels when a reader keeps them at another size than the image); keys containing 'idx' are dropped.
    """
    import numpy as np
    import torch

    batch = {}
    for key in samples[0]:
        if "idx" in key:
            continue
        values = [s[key] for s in samples]
        if key == "meta":
            batch["meta"] = {
                "img_name": [m["img_name"] for m in values],
                "img_size": [torch.as_tensor([int(m["img_size"][0]), int(m["img_size"][1])], dtype=torch.int64)
                             for m in values],
            }
            if any("orig_size" in m for m in values):  # labels kept at their own size (data/datasets/cityscapes.py)
                batch["meta"]["orig_size"] = [tuple(int(v) for v in m["orig_size"]) if "orig_size" in m else None
                                              for m in values]
        elif isinstance(values[0], (torch.Tensor, np.ndarray)):
            tensors = [torch.as_tensor(v) for v in values]
            shapes = {tuple(t.shape) for t in tensors}
            if len(shapes) > 1:
                names = [s.get("meta", {}).get("img_name", "?") for s in samples]
                raise DatasetError(
                    f"cannot batch {key!r}: the samples have different shapes {sorted(shapes)} (images {names}). "
                    f"Every sample must be padded to the same size: an image larger than TRAIN/TEST.SCALE "
                    f"is not cropped by the validation pipeline; raise the SCALE (crop_size) in the config."
                )
            batch[key] = torch.stack(tensors)
        else:
            batch[key] = values
    return batch


def worker_init_fn(worker_id: int) -> None:
    """Seed a DataLoader worker from torch's per-worker seed (base seed from the loader's generator + id),
    and leave stop signals to the main process (utils/signals.py).

    The loader's generator is seeded from (cfg.seed, rank), so every worker of every rank gets its own
    reproducible stream: Python `random` (the transforms), numpy and the dataset's pipeline.
    """
    import random

    import numpy as np
    import torch

    from utils.signals import ignore_stop_signals

    ignore_stop_signals()

    seed = torch.initial_seed() % (2**63)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    while dataset is not None and not hasattr(dataset, "reseed") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset  # Subset and friends
    if dataset is not None and hasattr(dataset, "reseed"):
        dataset.reseed(seed)


class ShardSampler:
    """Rank r of n gets indices r, r+n, ... in order, without padding: each val image is seen exactly once.

    (DistributedSampler pads with repeated samples, which would count some images twice in the metrics.)
    """

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def build_dataloader(cfg, split: str, distributed: bool = False, shuffle=None, batch_size=None, drop_last=None,
                     dataset=None, rank=None, world_size=None, num_workers=None, catch_errors: bool = False):
    """A DataLoader over build_dataset(cfg, split) (or `dataset`).

    train: shuffle and drop_last, batch cfg.trBatch; val: in order, batch cfg.valBatch. A
    DistributedSampler (train) or ShardSampler (val) is used when a process group is initialised or
    `distributed=True`; `rank`/`world_size` default to the process group's. Workers: cfg.nworkers
    (persistent when > 0); pin_memory only with CUDA. Seeding: the loader generator and the main-process
    pipeline are seeded from (cfg.seed, rank), workers via `worker_init_fn`; call
    `loader.sampler.set_epoch(e)` each epoch when distributed.
    catch_errors: unreadable samples do not raise; they are listed under batch['data_errors'] (see
    data/sample_errors.py), the same with or without workers.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    train = split in TRAIN_SPLITS
    shuffle = train if shuffle is None else shuffle
    drop_last = train if drop_last is None else drop_last
    batch_size = int(batch_size or cfg_get(cfg, "trBatch" if train else "valBatch", 1))
    workers = int(num_workers if num_workers is not None else cfg_get(cfg, "nworkers", 0))
    seed = int(cfg_get(cfg, "seed", 0))
    if dataset is None:
        dataset = build_dataset(cfg, split)

    use_dist = distributed or _dist_initialized()
    pg_rank, pg_world = _rank_world()
    rank = pg_rank if rank is None else int(rank)
    world_size = (pg_world if use_dist else 1) if world_size is None else int(world_size)
    if hasattr(dataset, "reseed"):  # num_workers == 0: the main process runs the pipeline
        dataset.reseed(split_seed(seed, rank, 1))
    generator = torch.Generator()
    generator.manual_seed(split_seed(seed, rank, 2))

    sampler = None
    if use_dist:
        if train or shuffle:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                         seed=seed, drop_last=drop_last)
        else:
            sampler = ShardSampler(len(dataset), rank, world_size)
        shuffle = False
    n = len(sampler) if sampler is not None else len(dataset)
    if drop_last and n < batch_size:
        raise DatasetError(
            f"split {split!r} has {n} sample(s) for this process but the batch size is {batch_size} with "
            f"drop_last: no batch would be produced; lower the batch size (trBatch/valBatch) or add data"
        )
    collate = collate_fn
    if catch_errors:
        from .sample_errors import CatchSampleErrors, collate_catching

        dataset, collate = CatchSampleErrors(dataset), collate_catching(collate_fn)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init_fn,
        generator=generator,
    )
