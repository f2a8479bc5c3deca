"""The part both readers share: split ids, task checks, sample assembly and the transform hook."""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from .common import DatasetError
from .tasks import available_tasks


class MultiTaskDataset(Dataset):
    """A split of one dataset; subclasses implement `load_image` and `load_label(task, sid, hw)`.

    `__getitem__` returns the spec §1.1 dict: `image` float32 H0×W0×3 (0..255), one float32 H0×W0×C
    entry per enabled task, and `meta = {img_name, img_size: (H0, W0)}`, then applies `transform`.
    """

    db_name = ""

    def __init__(self, split: str, tasks, transform=None):
        tasks = list(tasks)
        have = available_tasks(self.db_name)
        bad = [t for t in tasks if t not in have]
        if bad:
            raise DatasetError(
                f"{self.db_name} has no task(s) {', '.join(map(repr, bad))}; it provides: {', '.join(have)}. "
                f"Turn the task off in the config (task_dictionary.include_<task>: false) or use another dataset."
            )
        if not tasks:
            raise DatasetError(f"{self.db_name}: no task enabled; enable at least one of {', '.join(have)}")
        self.split = split
        self.tasks = [t for t in have if t in tasks]  # canonical order
        self.transform = transform
        self.ids: list = []

    # subclasses -----------------------------------------------------------------------------------
    def load_image(self, sid: str) -> np.ndarray:
        raise NotImplementedError

    def load_label(self, task: str, sid: str, hw) -> np.ndarray:
        raise NotImplementedError

    # shared ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def load_sample(self, index: int) -> dict:
        """The raw (untransformed) sample of one index."""
        sid = self.ids[index]
        image = self.load_image(sid)
        hw = image.shape[:2]
        sample = {"image": image}
        for task in self.tasks:
            sample[task] = self.load_label(task, sid, hw)
        sample["meta"] = {"img_name": sid, "img_size": (int(hw[0]), int(hw[1]))}
        return sample

    def __getitem__(self, index: int) -> dict:
        sample = self.load_sample(index)
        return self.transform(sample) if self.transform is not None else sample

    def reseed(self, seed: int) -> None:
        """Reseed the transform's random source (called per DataLoader worker)."""
        if self.transform is not None and hasattr(self.transform, "reseed"):
            self.transform.reseed(seed)

    def summary(self) -> str:
        return f"{self.db_name}/{self.split}: {len(self)} images, tasks: {', '.join(self.tasks)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.summary()})"
