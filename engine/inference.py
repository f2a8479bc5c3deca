"""Prediction for arbitrary images or a dataset split (the library side of infer.py).

Any image size: an image larger than the network size TEST.SCALE is shrunk (aspect kept) to fit, then every
image is padded, centred, to TEST.SCALE exactly as the validation pipeline pads val images (so the model sees
the input distribution it was trained for, and the MLoRE router's fixed token grid fits). Outputs are cropped
back and resized to the original size. Images of different sizes therefore batch together.

Sampling noise is drawn per image from (seed, image name) (engine.evaluator.eval_noise): the same image gives
the same prediction for a given --seed, whatever the batch size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from engine.evaluator import PredictionWriter, crop_padding, predict_batch, visual_grid
from utils import visualization as vis

__all__ = ["IMAGE_EXTENSIONS", "list_images", "ImageFolder", "collate_images", "fit_size", "predict_batch",
           "PredictionJob"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def list_images(path: str) -> list:
    """An image file, or the image files directly inside a folder (sorted); clear errors otherwise."""
    if os.path.isfile(path):
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"--input {path}: not an image file (known extensions: {', '.join(IMAGE_EXTENSIONS)})")
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"--input {path}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise ValueError(f"--input {path}: no such file or folder (give an image, a folder of images, or split:val)")


def _unique_names(files) -> list:
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    return [os.path.basename(f).replace(".", "_") if s in dup else s for f, s in zip(files, stems)]


def fit_size(hw, limit) -> tuple:
    """(h, w) scaled down (aspect kept) to fit inside limit=(H, W); unchanged when it already fits."""
    h, w = int(hw[0]), int(hw[1])
    s = min(limit[0] / h, limit[1] / w, 1.0)
    return (h, w) if s >= 1.0 else (max(1, min(limit[0], int(round(h * s)))), max(1, min(limit[1], int(round(w * s)))))


class ImageFolder(Dataset):
    """Plain images -> {'image': 3×H×W normalised and padded, 'meta': {img_name, img_size, orig_size}}."""

    def __init__(self, files, cfg):
        from data import build_transforms

        self.files, self.names = list(files), _unique_names(files)
        self.scale = tuple(int(s) for s in cfg.TEST.SCALE)
        self.transform = build_transforms(cfg, "val")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        import cv2
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                img = np.asarray(im.convert("RGB"), dtype=np.float32)
        except Exception as err:
            raise ValueError(f"cannot read image {self.files[i]}: {err}") from None
        orig = img.shape[:2]
        size = fit_size(orig, self.scale)
        if size != tuple(orig):
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        sample = self.transform({"image": img, "meta": {"img_name": self.names[i], "img_size": size}})
        sample["meta"] = {"img_name": self.names[i], "img_size": size, "orig_size": tuple(orig),
                          "path": self.files[i]}
        return sample


def collate_images(samples) -> dict:
    return {"image": torch.stack([torch.as_tensor(s["image"]) for s in samples]),
            "meta": {"img_name": [s["meta"]["img_name"] for s in samples],
                     "img_size": [torch.as_tensor(s["meta"]["img_size"], dtype=torch.int64) for s in samples],
                     "orig_size": [tuple(s["meta"]["orig_size"]) for s in samples]}}


def restore(x: torch.Tensor, img_size, orig_size=None) -> torch.Tensor:
    """K×H×W padded output -> K×H0×W0 at the original image size (crop padding, undo the shrink)."""
    x = crop_padding(x, img_size)
    if orig_size is not None and tuple(x.shape[-2:]) != tuple(orig_size):
        x = F.interpolate(x[None], size=tuple(int(s) for s in orig_size), mode="bilinear", align_corners=False)[0]
    return x


@dataclass
class PredictionJob:
    """Writes predictions, overviews and (with ground truth) feeds an evaluator for each batch."""

    infos: dict
    out_dir: str
    evaluator: object = None

    def __post_init__(self):
        self.writer = PredictionWriter(self.out_dir, self.infos)
        self.count = 0

    def process(self, batch: dict, pred: dict) -> None:
        tasks = list(self.infos)
        has_gt = all(t in batch for t in tasks)
        if self.evaluator is not None and has_gt:
            dev = next(iter(pred.values())).device
            gpu_batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
            self.evaluator.update(pred, gpu_batch)
        meta = batch["meta"]
        origs = meta.get("orig_size") or [None] * len(meta["img_name"])
        for j, name in enumerate(meta["img_name"]):
            size, orig = meta["img_size"][j], origs[j]
            maps = {t: vis.prediction_to_numpy(self.infos[t], restore(pred[t][j], size, orig)) for t in pred}
            self.writer.write(name, maps)
            img = vis.denormalize_image(restore(batch["image"][j], size, orig))
            gts = None
            if has_gt:
                gts = {t: vis.target_to_numpy(self.infos[t], crop_padding(batch[t][j], size)) for t in tasks}
            vis.save_png(os.path.join(self.out_dir, "overview", f"{name}.png"),
                         visual_grid(self.infos, img, maps, gts))
            self.count += 1
