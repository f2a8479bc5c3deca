"""Unreadable samples as data, not as exceptions: the same one-line message with or without workers.

Why: a corrupt image or label file raises `DatasetError` inside the reader. In a DataLoader worker
process that exception is re-raised in the main process wrapped in a 60-100 line "Caught DatasetError
in DataLoader worker process 0 ... Original Traceback" message, and the training loop cannot tell a
bad file (the user's to fix) from a bug. Here the dataset wrapper turns the reader's `DatasetError`
into a small picklable `FailedSample` record, the collate function moves those records out of the
batch into `batch["data_errors"]`, and the consumer (training stream, evaluation loop, infer) decides
in the main process: stop with the message (after saving what was trained), or skip and count
(`data_errors: skip`). Only `DatasetError` is caught: any other exception is a bug and keeps its
traceback.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from .common import DatasetError

__all__ = ["FailedSample", "CatchSampleErrors", "collate_catching", "ERRORS_KEY", "SampleReadError",
           "describe_failures"]

ERRORS_KEY = "data_errors"  # batch key: list of FailedSample (absent when every sample was read)


class SampleReadError(DatasetError):
    """A sample could not be read and `data_errors` is 'abort' (raised in the main process)."""


@dataclass(frozen=True)
class FailedSample:
    """One sample that could not be read: its dataset index and the reader's one-line message."""

    index: int
    message: str


class CatchSampleErrors(Dataset):
    """Wraps a dataset: item i is the sample, or a `FailedSample` when the reader raised DatasetError.

    `dataset` is kept under that name so `worker_init_fn` finds the wrapped reader's `reseed`.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def reseed(self, seed: int) -> None:
        if hasattr(self.dataset, "reseed"):
            self.dataset.reseed(seed)

    def __getitem__(self, index):
        return read_or_fail(self.dataset, index)


def read_or_fail(dataset, index, key=None):
    """dataset[key if given else index], or a FailedSample naming `index` when the reader raised DatasetError."""
    try:
        return dataset[index if key is None else key]
    except DatasetError as err:
        return FailedSample(int(index), " ".join(str(err).split()))


class collate_catching:  # noqa: N801 - used like the function it replaces
    """A collate function that batches the readable samples with `collate_fn` and lists the failed ones
    under batch[ERRORS_KEY]. A batch of failed samples only is {ERRORS_KEY: [...]} (no 'image').

    A class, not a closure: DataLoader workers started with 'spawn' (macOS, Windows) pickle it."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, samples):
        good = [s for s in samples if not isinstance(s, FailedSample)]
        failed = [s for s in samples if isinstance(s, FailedSample)]
        batch = self.collate_fn(good) if good else {}
        if failed:
            batch[ERRORS_KEY] = failed
        return batch


def describe_failures(failures, limit: int = 5) -> str:
    """'N unreadable sample(s): <message>; <message>; ... (and K more)' for a summary line."""
    failures = list(failures)
    head = "; ".join(f.message for f in failures[:limit])
    more = f" (and {len(failures) - limit} more)" if len(failures) > limit else ""
    return f"{len(failures)} unreadable sample(s): {head}{more}"
