"""Reader for the ATRC-prepared NYUD-v2 tarball (`<db_root>/NYUDv2/`, docs/method.md#nyud-v2-labels).

Decoding per task:
  semseg   segmentation/<id>.png: label = value − 1, and the unlabeled value 0 (→ −1) becomes 255.
  depth    depth/<id>.npy: metres, 0 = invalid (kept as 0, depth's ignore value).
  normals  normals/<id>.png: 2v/255 − 1 per channel (no class masking).
  edge     edge/<id>.png: v/255 → {0, 1}.
Nothing here is expensive, so nothing is cached.
"""
from __future__ import annotations

import numpy as np

from .base import MultiTaskDataset
from .common import (
    DatasetError,
    as_hwc,
    check_files_exist,
    decode_normals,
    fit_to_image,
    load_npy,
    read_rgb,
    read_rgb_png,
    read_single_channel,
    read_split,
    resolve_dataset_dir,
)

# folder and suffix of each modality; the loader checks all five for every id, whatever tasks are on
MODALITIES = {
    "image": ("images", ".png"),
    "semseg": ("segmentation", ".png"),
    "depth": ("depth", ".npy"),
    "normals": ("normals", ".png"),
    "edge": ("edge", ".png"),
}


class NYUD(MultiTaskDataset):
    """One split of NYUD-v2 with any of semseg, depth, normals, edge.

    root: db_root (the folder containing `NYUDv2/`) or the `NYUDv2/` folder itself.
    """

    db_name = "NYUD"

    def __init__(self, root, split="val", tasks=("semseg", "depth", "normals", "edge"), transform=None):
        super().__init__(split, tasks, transform)
        self.root = resolve_dataset_dir(self.db_name, root)
        self.ids = read_split(self.root / "gt_sets" / f"{split}.txt", self.db_name)
        for what, (folder, suffix) in MODALITIES.items():
            check_files_exist(self.db_name, self.root / folder, self.ids, suffix, what)

    def path(self, modality, sid):
        folder, suffix = MODALITIES[modality]
        return self.root / folder / f"{sid}{suffix}"

    def load_image(self, sid):
        return read_rgb(self.path("image", sid), sid)

    def load_label(self, task, sid, hw):
        p = self.path(task, sid)
        if task == "semseg":
            raw = read_single_channel(p, sid).astype(np.float32)
            label = raw - 1.0
            label[label == -1] = 255.0
            return fit_to_image(as_hwc(label), hw, p, sid)
        if task == "depth":
            depth = load_npy(p, sid)
            if depth.ndim == 3 and depth.shape[2] == 1:
                depth = depth[:, :, 0]
            if depth.ndim != 2:
                raise DatasetError(f"{p} (sample {sid!r}): depth should be H×W, got shape {depth.shape}")
            return fit_to_image(as_hwc(depth), hw, p, sid)
        if task == "normals":
            return fit_to_image(decode_normals(read_rgb_png(p, sid)), hw, p, sid, cubic=True)
        if task == "edge":
            return fit_to_image(as_hwc(read_single_channel(p, sid).astype(np.float32) / 255.0), hw, p, sid)
        return super().load_label(task, sid, hw)
