"""engine/train_data.py: DistributedSampler-like epoch order, disjoint ranks, exact mid-epoch restart."""
import torch
from torch.utils.data import Dataset

from engine.train_data import EpochSampler, TrainStream, epoch_order
from utils.seed import mix_seed, name_seed


class Echo(Dataset):
    """Returns its index and the augmentation seed it was given (via reseed)."""

    def __init__(self, n):
        self.n, self.seed = n, None

    def __len__(self):
        return self.n

    def reseed(self, seed):
        self.seed = seed

    def __getitem__(self, i):
        return {"idx_free": torch.tensor(i), "aug": torch.tensor(self.seed % 1000)}


def _collate(samples):
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def test_epoch_order_matches_distributed_sampler():
    from torch.utils.data import DistributedSampler

    ds = list(range(11))
    for rank in (0, 1):
        s = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=5, drop_last=True)
        s.set_epoch(3)
        assert epoch_order(11, 5, 3, rank, 2) == list(s)
    a, b = epoch_order(11, 5, 0, 0, 2), epoch_order(11, 5, 0, 1, 2)
    assert not set(a) & set(b) and len(a) == len(b) == 5
    assert epoch_order(11, 5, 0, 0, 1) != epoch_order(11, 5, 1, 0, 1)


def test_sampler_offset_and_seeds():
    s = EpochSampler(10, 3, seed=1)
    assert s.batches_per_epoch == 3 and len(s) == 9
    full = list(s)
    s.set_epoch(0, start_batch=2)
    assert list(s) == full[6:]
    assert len({sd for _, sd in full}) == len(full)  # every position its own augmentation seed


def _take(stream, n):
    out = []
    for _ in range(n):
        b = next(stream)
        out.append((b["idx_free"].tolist(), b["aug"].tolist()))
    return out


def test_stream_restart_mid_run_is_identical():
    ds = Echo(7)
    ref = _take(TrainStream(ds, 2, seed=3, collate_fn=_collate), 10)  # 3 batches/epoch: crosses 3 epochs
    for start in (1, 3, 4, 8):
        resumed = _take(TrainStream(ds, 2, seed=3, start_micro=start, collate_fn=_collate), 10 - start)
        assert resumed == ref[start:], start
    # epochs are reshuffled
    assert [r[0] for r in ref[0:3]] != [r[0] for r in ref[3:6]]


def test_derived_seeds_differ():
    seeds = {mix_seed(0, 1, r, k, 0) for r in range(2) for k in range(50)}
    assert len(seeds) == 100
    assert name_seed(0, "2008_000001") == name_seed(0, "2008_000001") != name_seed(0, "2008_000002")
    assert name_seed(0, "a") != name_seed(1, "a")


def test_seek_realigns_the_stream():
    ds = Echo(7)
    ref = _take(TrainStream(ds, 2, seed=3, collate_fn=_collate), 6)
    s = TrainStream(ds, 2, seed=3, collate_fn=_collate)
    _take(s, 1)  # a step that stopped after its first of two micro-batches
    s.seek(2)
    assert _take(s, 4) == ref[2:]
