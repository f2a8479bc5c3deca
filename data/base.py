"""The part every reader shares: split ids, task checks, sample assembly, plug-in labels, the transform hook."""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from .common import recording_files
from .errors import DatasetError
from .tasks import available_tasks, task_info


class MultiTaskDataset(Dataset):
    """A split of one dataset; subclasses set `db_name` and implement `load_image` and
    `load_label(task, sid, hw)`.

    `__getitem__` returns the docs/method.md#sample-dict-and-batches dict: `image` float32 H0×W0×3 (0..255), one float32 H0×W0×C
    entry per enabled task, and `meta = {img_name, img_size: (H0, W0)}`, then applies `transform`.

    The tasks a reader accepts are the tasks registered for its `db_name` (data.tasks.available_tasks),
    and a task's labels may come from a loader registered on the reader class (`register_label`), which
    is asked before the reader's own `load_label`: a plug-in adds a task to an existing dataset without
    editing the reader.
    """

    db_name = ""
    _label_loaders: dict = {}  # this class's plug-in label loaders; each subclass gets its own on first use

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

    # plug-in label loaders ------------------------------------------------------------------------
    @classmethod
    def register_label(cls, task: str, fn=None, replace: bool = False):
        """Load `task`'s labels with fn(dataset, sample_id, image_hw) -> float32 H×W or H×W×C array, on
        this reader class and its subclasses. Usable as a decorator (`@PASCALContext.register_label("x")`).

        Registering a different loader for a task that has one raises unless replace=True. The task must
        also be registered for the dataset (data.tasks.register_task) to be accepted by the reader."""
        if fn is None:
            return lambda f: cls.register_label(task, f, replace)
        if not callable(fn):
            raise TypeError(f"{cls.__name__}.register_label({task!r}, fn): fn must be callable")
        own = cls.__dict__.get("_label_loaders")
        if own is None:
            own = {}
            cls._label_loaders = own
        if task in own and own[task] is not fn and not replace:
            raise ValueError(f"{cls.__name__} already has a label loader for {task!r}; pass replace=True")
        own[task] = fn
        return fn

    @classmethod
    def unregister_label(cls, task: str) -> None:
        """Remove this class's loader of `task` (tests and temporary plug-ins); absent ones are ignored."""
        cls.__dict__.get("_label_loaders", {}).pop(task, None)

    @classmethod
    def label_loader(cls, task: str):
        """The registered loader of `task` for this class (the nearest class in the MRO wins), or None."""
        for klass in cls.__mro__:
            fn = vars(klass).get("_label_loaders", {}).get(task)
            if fn is not None:
                return fn
        return None

    def read_label(self, task: str, sid: str, hw) -> np.ndarray:
        """A task's label of one sample: the registered loader's (checked and made H×W×C float32), else
        the reader's own `load_label`; its values checked by the task (`Task.check_label`: finite, class ids
        in range), a refused value raised as DatasetError naming the file and the sample, like an
        unreadable file (stop with one line, or skipped and counted under data_errors: skip)."""
        with recording_files() as files:
            label = self._read_label(task, sid, hw)
        problem = task_info(self.db_name, task).check_label(label)
        if problem:
            where = f"{files[0]} " if files else ""
            raise DatasetError(
                f"bad {task} label values in {where}(sample {sid!r}): {problem}. Fix or regenerate that file, or "
                f"leave such samples out with --opts data_errors=skip; `python -m data.verify --deep` checks every "
                f"file")
        return label

    def _read_label(self, task: str, sid: str, hw) -> np.ndarray:
        fn = self.label_loader(task)
        if fn is None:
            return self.load_label(task, sid, hw)
        label = np.asarray(fn(self, sid, hw), dtype=np.float32)
        if label.ndim == 2:
            label = label[:, :, None]
        h, w = int(hw[0]), int(hw[1])
        if label.ndim != 3 or label.shape[:2] != (h, w):
            name = getattr(fn, "__qualname__", repr(fn))
            raise DatasetError(f"{self.db_name}: the {task} label loader {name} returned shape {label.shape} for "
                               f"sample {sid!r}; it must return {h}x{w} or {h}x{w}xC (the image size)")
        return label

    # subclasses -----------------------------------------------------------------------------------
    def load_image(self, sid: str) -> np.ndarray:
        raise NotImplementedError

    def load_label(self, task: str, sid: str, hw) -> np.ndarray:
        """The reader's own labels; readers end with `return super().load_label(...)` for unknown tasks."""
        raise DatasetError(f"{self.db_name}: no label loader for task {task!r}; register one with "
                           f"{type(self).__name__}.register_label({task!r}, fn)")

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
            sample[task] = self.read_label(task, sid, hw)
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
