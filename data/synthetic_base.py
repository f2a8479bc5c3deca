"""What `python -m data.synthetic` asks of a dataset: how one look-alike sample is drawn and written.

A dataset module (data/datasets/<name>.py) gives its DatasetSpec a `synthesizer`, an instance of a
`SyntheticWriter` subclass, and data/synthetic.py stays one generic program (idempotent marker, atomic
folder, progress bar, CLI) that loops over it:

  name, db_name, stream       the --dataset value, the registered dataset, the random stream id
  default_size, folders       the image size (H, W) when --size is not given; the folders to create
  sample_id(idx, split) / sample_index(sid)   file ids of generated index idx and back
  image_size(idx, size)       (H, W) of image idx (default: `size` for every image)
  render(rng, h, w, idx)      {array name: ground truth} of one scene (what the writer stores, and what
                              the tests compare the reader's decoding with)
  write(root, split, sid, scene)          the sample's files in the real layout
  write_splits(root, ids, scenes)         split lists and dataset-wide files, after every sample
                                          (default: `<split_folder>/<split>.txt`, one id per line)

The helpers here (`unit`, `encode_normals`) are shared by several renderers.

Why a module of its own: the dataset modules subclass it and data/synthetic.py imports the dataset
modules (through the registry package), so it must sit below both.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SyntheticWriter", "unit", "encode_normals"]


def unit(v):
    """v / |v| over the last axis, float32 (zero vectors stay ~0)."""
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def encode_normals(n: np.ndarray) -> np.ndarray:
    """[−1, 1] normals → uint8 RGB, the inverse of the readers' 2v/255 − 1 up to rounding."""
    return np.clip(np.round((n + 1.0) * 127.5), 0, 255).astype(np.uint8)


class SyntheticWriter:
    """Base of the per-dataset synthetic writers (see the module docstring for the protocol)."""

    name = ""
    db_name = ""
    stream = 0
    default_size = (128, 128)
    min_size = 32
    folders: tuple = ()
    split_folder = ""
    description = ""  # one line for `python -m data.synthetic --help`

    def rng(self, seed: int, idx: int) -> np.random.Generator:
        """The generator of image idx: independent of the other images and of the split sizes."""
        return np.random.default_rng(np.random.SeedSequence([int(seed), int(self.stream), int(idx)]))

    def sample_id(self, idx: int, split: str = "train") -> str:
        return f"{idx:06d}"

    def sample_index(self, sid: str) -> int:
        return int(sid)

    def image_size(self, idx: int, size=None) -> tuple:
        h, w = size if size is not None else self.default_size
        return int(h), int(w)

    def render(self, rng, h: int, w: int, idx: int) -> dict:
        raise NotImplementedError

    def write(self, root: Path, split: str, sid: str, scene: dict) -> None:
        raise NotImplementedError

    def write_splits(self, root: Path, ids_by_split: dict, scenes_by_split: dict) -> None:
        """ids_by_split: {split: [id, ...]}; scenes_by_split: {split: {id: what `keep` returned}}."""
        for split, ids in ids_by_split.items():
            (root / self.split_folder / f"{split}.txt").write_text("\n".join(ids) + "\n")

    def keep(self, scene: dict):
        """What write_splits needs of a scene after it was written (default: nothing, scenes are dropped)."""
        return None
