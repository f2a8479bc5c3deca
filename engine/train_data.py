"""The training data stream: an endless, resumable, per-rank sequence of batches.

Why not a plain DataLoader over a DistributedSampler: after a crash, the resumed run must see exactly the
batches (and augmentations) the uninterrupted run would have seen from the same iteration on. Three
things make that hold here:

* the stream position is a pure function of the number of consumed micro-batches j:
  epoch = j // batches_per_epoch, offset = j % batches_per_epoch (resume sets j = iteration · accum_steps);
* the epoch order is the DistributedSampler order (one permutation of all indices from
  (seed, epoch), identical on every rank, trimmed to a multiple of world_size, rank r takes r::world),
  and starting mid-epoch only slices that list, so no already-consumed image is loaded again;
* each sample's augmentation is seeded from (seed, rank, epoch, position in the rank's epoch list)
  instead of a worker's running random stream, so it does not depend on which worker loads it, on the
  number of workers, or on where the run was restarted.

Unreadable samples (a corrupt image or label file) reach the stream as records, not as worker
tracebacks (data/sample_errors.py): with `data_errors='abort'` the stream raises `SampleReadError` with
the reader's one-line message in the main process; with 'skip' the batch goes on without them (a batch
left empty is replaced by the next one) and `skipped` lists them for the end-of-run summary.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.sample_errors import ERRORS_KEY, SampleReadError, collate_catching, read_or_fail
from utils.seed import SAMPLE_STREAM, mix_seed

__all__ = ["SeededDataset", "EpochSampler", "TrainStream", "epoch_order"]


class SeededDataset(Dataset):
    """Wraps a dataset; item (index, seed) reseeds the augmentation (and random/numpy) before loading."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        random.seed(seed)
        np.random.seed(seed % (2**32))
        if hasattr(self.dataset, "reseed"):
            self.dataset.reseed(seed)
        return read_or_fail(self.dataset, index)


def epoch_order(length: int, seed: int, epoch: int, rank: int, world_size: int, shuffle: bool = True) -> list:
    """The indices rank `rank` sees in `epoch`: DistributedSampler(drop_last=True) semantics."""
    if shuffle:
        g = torch.Generator()
        g.manual_seed(int(seed) + int(epoch))  # as DistributedSampler: the same order on every rank
        perm = torch.randperm(length, generator=g).tolist()
    else:
        perm = list(range(length))
    usable = (length // world_size) * world_size
    return perm[:usable][rank::world_size]


class EpochSampler(Sampler):
    """Yields (index, sample_seed) for one epoch of one rank, starting at batch `start_batch`.

    `set_epoch(epoch, start_batch)` is called before every pass (the DataLoader re-iterates the sampler,
    also with persistent workers). Only whole batches are produced (drop_last).
    """

    def __init__(self, length: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.length, self.batch_size = int(length), int(batch_size)
        self.seed, self.rank, self.world_size, self.shuffle = int(seed), int(rank), int(world_size), shuffle
        self.per_rank = self.length // self.world_size
        self.batches_per_epoch = self.per_rank // self.batch_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self):
        order = epoch_order(self.length, self.seed, self.epoch, self.rank, self.world_size, self.shuffle)
        end = self.batches_per_epoch * self.batch_size
        for pos in range(self.start_batch * self.batch_size, end):
            yield order[pos], mix_seed(self.seed, SAMPLE_STREAM, self.rank, self.epoch, pos)

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0) * self.batch_size


class TrainStream:
    """Endless iterator of training batches for one rank, positioned at micro-batch `start_micro`."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, start_micro: int = 0, pin_memory: bool = False, collate_fn=None,
                 worker_init_fn=None, data_errors: str = "abort"):
        if collate_fn is None:
            from data import collate_fn
        if worker_init_fn is None:
            try:
                from data import worker_init_fn
            except ImportError:
                worker_init_fn = None
        self.sampler = EpochSampler(len(dataset), batch_size, seed, rank, world_size)
        if self.sampler.batches_per_epoch < 1:
            raise ValueError(
                f"the training split has {len(dataset)} image(s): {self.sampler.per_rank} per process for "
                f"{world_size} process(es), fewer than one batch of trBatch={batch_size}; lower trBatch, use "
                f"fewer processes, or add data")
        g = torch.Generator()
        g.manual_seed(mix_seed(seed, SAMPLE_STREAM, rank, -1))  # worker base seeds (unused by the pipeline)
        if data_errors not in ("abort", "skip"):
            raise ValueError(f"data_errors must be 'abort' or 'skip', got {data_errors!r}")
        self.data_errors = data_errors
        self.skipped: list = []  # FailedSample records left out under data_errors='skip'
        self.loader = DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=num_workers, collate_fn=collate_catching(collate_fn),
                                 pin_memory=pin_memory,
                                 drop_last=True, persistent_workers=num_workers > 0,
                                 worker_init_fn=worker_init_fn, generator=g)
        self.micro = int(start_micro)
        self._it = None

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self.micro // self.batches_per_epoch

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self.sampler.set_epoch(self.epoch, self.micro % self.batches_per_epoch)
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = None
            return next(self)
        failed = batch.pop(ERRORS_KEY, None)
        if failed:
            if self.data_errors == "abort":
                raise SampleReadError(f"{failed[0].message} (training sample {failed[0].index})")
            self.skipped.extend(failed)
            if "image" not in batch:  # every sample of the batch failed: take the next one in its place
                self.micro += 1
                return next(self)
        self.micro += 1
        return batch

    def seek(self, micro: int) -> None:
        """Position the stream at micro-batch `micro` (after a step skipped part of its micro-batches)."""
        if int(micro) != self.micro:
            self.micro = int(micro)
            self._it = None

    def close(self) -> None:
        """Stop the worker processes now (not at garbage collection): no worker outlives the run."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        loader, self.loader = self.loader, None
        it = getattr(loader, "_iterator", None)  # persistent workers live in the loader's own iterator
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
