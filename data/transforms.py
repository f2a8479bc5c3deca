"""Train and validation pipelines (docs/method.md#data-pipeline), each step a small callable on the HWC numpy sample dict.

The sample dict holds `image` (float32 H×W×3, 0..255), one float32 H×W×C array per task and `meta`
(never touched). Random steps draw from one `random.Random` shared by the pipeline (docs/method.md#augmentation-randomness: Python's
`random`, not numpy/torch); `Compose.reseed` reseeds it per DataLoader worker and per rank, so runs
are reproducible for a seed and world size while ranks and workers see different augmentations.

Per-task behaviour is declared by the Task objects (data/tasks.py), not by names here: which keys are
divided by the scale (`scale_divided`: metric depth), which have their x component negated on flips
(`flip_negate_x`: normals), the pad values (`pad_value`; normals are padded with the zero vector, which
AddIgnoreRegions then turns into 255 together with the unlabelled zero normals), the ignore rules
(`invalid_rule`) and which labels balance the random crop (`balances_crop`: semseg). A transform built
without them (unit tests) uses what the registered tasks declare.
"""
from __future__ import annotations

import random

import numpy as np

from .tasks import declared_tasks, task_infos

IMAGE = "image"
META = "meta"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



def _arrays(sample):
    """(key, value) of every non-meta entry."""
    return [(k, v) for k, v in sample.items() if k != META]


class Compose:
    """Apply transforms in order; owns the random source they share."""

    def __init__(self, transforms, seed=None):
        self.transforms = list(transforms)
        self.rng = random.Random(seed)
        for t in self.transforms:
            if hasattr(t, "rng"):
                t.rng = self.rng

    def reseed(self, seed) -> None:
        self.rng.seed(seed)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return "Compose(\n" + "".join(f"  {t!r}\n" for t in self.transforms) + ")"


class _Random:
    """Base of random transforms: `self.rng` is replaced by the pipeline's shared generator."""

    def __init__(self, rng=None):
        self.rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if k != "rng"}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def _resize(arr: np.ndarray, hw, interp) -> np.ndarray:
    """cv2.resize to (H, W); H×W×1 arrays are squeezed for OpenCV and re-expanded."""
    import cv2

    h, w = hw
    single = arr.ndim == 3 and arr.shape[2] == 1
    src = np.ascontiguousarray(arr[:, :, 0] if single else arr)
    out = cv2.resize(src, (w, h), interpolation=interp)
    return out[:, :, None] if single else out


class RandomScaling(_Random):
    """s ~ U(min, max); resize to (int(H·s), int(W·s)): image bilinear, labels nearest; depth /= s."""

    def __init__(self, scale_range=(0.5, 2.0), divide_by_scale=None, rng=None):
        super().__init__(rng)
        self.scale_range = tuple(scale_range)
        self.divide_by_scale = tuple(declared_tasks("scale_divided") if divide_by_scale is None else divide_by_scale)

    def __call__(self, sample):
        import cv2

        s = self.rng.uniform(*self.scale_range)
        if s == 1.0:
            return sample
        h, w = sample[IMAGE].shape[:2]
        hw = (int(h * s), int(w * s))
        for k, v in _arrays(sample):
            out = _resize(v, hw, cv2.INTER_LINEAR if k == IMAGE else cv2.INTER_NEAREST)
            if k in self.divide_by_scale:
                out = out / s  # zero (invalid) stays zero
            sample[k] = out.astype(np.float32, copy=False)
        return sample


class RandomCrop(_Random):
    """Crop every array at one random origin; retry while one semseg class dominates (docs/method.md#random-crop).

    Up to 10 checks: accept when ≥ 2 non-ignore labels remain and the most frequent covers < cat_max_ratio
    of them; otherwise draw a new origin. The 11th origin is used unchecked. Images smaller than the
    crop keep their extent in that dimension (PadImage fills it later).
    """

    def __init__(self, size, cat_max_ratio=0.75, ignore_index=255, seg_key=None, max_checks=10, rng=None):
        super().__init__(rng)
        self.size = (int(size[0]), int(size[1]))
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.seg_key = seg_key if seg_key is not None else next(iter(declared_tasks("balances_crop")), None)
        self.max_checks = max_checks

    def origin(self, hw):
        """(top, left), or None when the image is exactly the crop size (no draw then)."""
        h, w = hw
        ch, cw = self.size
        if (h, w) == (ch, cw):
            return None
        return self.rng.randint(0, max(h - ch, 0)), self.rng.randint(0, max(w - cw, 0))

    def crop(self, arr, loc):
        if loc is None:
            return arr
        top, left = loc
        return arr[top:top + self.size[0], left:left + self.size[1]]

    def _balanced(self, seg) -> bool:
        labels, counts = np.unique(seg, return_counts=True)
        counts = counts[labels != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, sample):
        hw = sample[IMAGE].shape[:2]
        loc = self.origin(hw)
        if self.cat_max_ratio < 1.0 and self.seg_key in sample:
            for _ in range(self.max_checks):
                if self._balanced(self.crop(sample[self.seg_key], loc)):
                    break
                loc = self.origin(hw)
        for k, v in _arrays(sample):
            sample[k] = np.ascontiguousarray(self.crop(v, loc))
        return sample


class RandomHorizontalFlip(_Random):
    """One coin for the whole sample; flips every array; negates x of the vector fields (normals)."""

    def __init__(self, p=0.5, negate_x=None, rng=None):
        super().__init__(rng)
        self.p = p
        self.negate_x = tuple(declared_tasks("flip_negate_x") if negate_x is None else negate_x)

    def __call__(self, sample):
        if self.rng.random() < self.p:
            for k, v in _arrays(sample):
                v = np.ascontiguousarray(v[:, ::-1])
                if k in self.negate_x:
                    v[:, :, 0] *= -1
                sample[k] = v
        return sample


class PhotoMetricDistortion(_Random):
    """mmseg-style colour jitter on the uint8 image, in the original's draw order (docs/method.md#photometric-distortion).

    brightness → contrast-first coin → [contrast] → saturation → hue → [contrast]; each step applies
    with probability 1/2 (a `randint(0, 1)` coin) and then draws its amount.
    """

    def __init__(self, brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta=18, rng=None):
        super().__init__(rng)
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @staticmethod
    def _convert(img, alpha=1.0, beta=0.0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _brightness(self, img):
        if self.rng.randint(0, 1):
            img = self._convert(img, beta=self.rng.uniform(-self.brightness_delta, self.brightness_delta))
        return img

    def _contrast(self, img):
        if self.rng.randint(0, 1):
            img = self._convert(img, alpha=self.rng.uniform(*self.contrast_range))
        return img

    def _saturation(self, img):
        import cv2

        if self.rng.randint(0, 1):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = self._convert(hsv[:, :, 1], alpha=self.rng.uniform(*self.saturation_range))
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return img

    def _hue(self, img):
        import cv2

        if self.rng.randint(0, 1):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            shift = self.rng.randint(-self.hue_delta, self.hue_delta - 1)  # inclusive bounds: −18..17
            hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int64) + shift) % 180).astype(np.uint8)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return img

    def __call__(self, sample):
        img = np.clip(sample[IMAGE], 0, 255).astype(np.uint8)  # truncation, as a plain cast would do
        img = self._brightness(img)
        contrast_first = self.rng.randint(0, 1)
        if contrast_first:
            img = self._contrast(img)
        img = self._saturation(img)
        img = self._hue(img)
        if not contrast_first:
            img = self._contrast(img)
        sample[IMAGE] = img.astype(np.float32)
        return sample


class Normalize:
    """image ← (image/255 − mean)/std (ImageNet statistics)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, sample):
        sample[IMAGE] = ((sample[IMAGE].astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)
        return sample

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class PadImage:
    """Pad each array centred to at least `size`: offset (ΔH//2, ΔW//2), fill per key (docs/method.md#centred-padding).

    pad_values: {key: fill}; keys not listed use `default` (255); the image uses 0 (the mean colour
    after normalisation). Arrays larger than `size` are left as they are.
    """

    def __init__(self, size, pad_values=None, default=255.0):
        self.size = (int(size[0]), int(size[1]))
        self.pad_values = {IMAGE: 0.0, **(pad_values or {})}
        self.default = default

    @staticmethod
    def offsets(hw, size):
        """(top, left) where an H×W array lands inside the padded canvas."""
        return max(size[0] - hw[0], 0) // 2, max(size[1] - hw[1], 0) // 2

    def __call__(self, sample):
        for k, v in _arrays(sample):
            h, w = v.shape[:2]
            if h >= self.size[0] and w >= self.size[1]:
                continue
            canvas = np.full((max(self.size[0], h), max(self.size[1], w)) + v.shape[2:],
                             self.pad_values.get(k, self.default), dtype=np.float32)
            top, left = self.offsets((h, w), self.size)
            canvas[top:top + h, left:left + w] = v
            sample[k] = canvas
        return sample

    def __repr__(self) -> str:
        return f"PadImage(size={self.size}, pad_values={self.pad_values}, default={self.default})"


class AddIgnoreRegions:
    """Zero vectors (normals) → 255 in all channels; an all-background map (human_parts) → all 255."""

    def __init__(self, zero_vector_keys=None, all_background_keys=None, ignore=255.0):
        self.zero_vector_keys = tuple(declared_tasks("invalid_rule", "zero_vector") if zero_vector_keys is None
                                      else zero_vector_keys)
        self.all_background_keys = tuple(declared_tasks("invalid_rule", "all_background")
                                         if all_background_keys is None else all_background_keys)
        self.ignore = ignore

    def __call__(self, sample):
        for k in self.zero_vector_keys:
            if k in sample:
                v = sample[k]
                v[np.sqrt((v.astype(np.float64) ** 2).sum(axis=2)) == 0] = self.ignore
        for k in self.all_background_keys:
            if k in sample:
                v = sample[k]
                if np.all((v == 0) | (v == self.ignore)):
                    sample[k] = np.full_like(v, self.ignore)
        return sample

    def __repr__(self) -> str:
        return (f"AddIgnoreRegions(zero_vector_keys={self.zero_vector_keys}, "
                f"all_background_keys={self.all_background_keys})")


class ToTensor:
    """H×W×C numpy → C×H×W float32 torch tensors; `meta` passes through."""

    def __call__(self, sample):
        import torch

        for k, v in _arrays(sample):
            sample[k] = torch.from_numpy(np.ascontiguousarray(np.asarray(v, dtype=np.float32).transpose(2, 0, 1)))
        return sample

    def __repr__(self) -> str:
        return "ToTensor()"


def pad_values(db_name: str, tasks) -> dict:
    """Pad value per task (Task.padding: its pad_value, else its ignore value)."""
    return {name: task.padding for name, task in task_infos(db_name, tasks).items()}


def _declared(db_name: str, tasks, attr: str, value=True) -> tuple:
    return tuple(n for n, t in task_infos(db_name, tasks).items() if getattr(t, attr) == value)


def _ignore_regions(db_name: str, tasks) -> "AddIgnoreRegions":
    return AddIgnoreRegions(_declared(db_name, tasks, "invalid_rule", "zero_vector"),
                            _declared(db_name, tasks, "invalid_rule", "all_background"))


def train_transforms(db_name: str, tasks, size, seed=None) -> Compose:
    """Scale → crop → flip → photometric → normalise → pad → ignore regions → tensors (docs/method.md)."""
    crop_keys = _declared(db_name, tasks, "balances_crop")
    return Compose([
        RandomScaling((0.5, 2.0), divide_by_scale=_declared(db_name, tasks, "scale_divided")),
        RandomCrop(size, cat_max_ratio=0.75, seg_key=crop_keys[0] if crop_keys else ""),
        RandomHorizontalFlip(0.5, negate_x=_declared(db_name, tasks, "flip_negate_x")),
        PhotoMetricDistortion(),
        Normalize(),
        PadImage(size, pad_values(db_name, tasks)),
        _ignore_regions(db_name, tasks),
        ToTensor(),
    ], seed=seed)


def val_transforms(db_name: str, tasks, size) -> Compose:
    """Normalise → pad → ignore regions → tensors (no resize, no crop; docs/method.md)."""
    return Compose([
        Normalize(),
        PadImage(size, pad_values(db_name, tasks)),
        _ignore_regions(db_name, tasks),
        ToTensor(),
    ])
