"""Synthetic PASCAL-Context and NYUD-v2 datasets in the exact on-disk layouts of the real tarballs.

Why: the demo and the tests must exercise the real readers (same folders, names, .jpg/.png/.mat/.npy
formats, PASCAL-Part `anno` structs) without the 10 GB of real data. Scenes are small but learnable
and consistent across tasks:

PASCAL-style (default 128×128; every 4th image is 8 px shorter, every 4th+1 is 8 px narrower, to exercise
padding): a background of two or three "stuff" regions (some of them normals-valid PASCAL-Context
classes, some not) and 1–4 objects of six VOC classes (person, car, cat, bottle, tvmonitor, sofa), each
with its own shape, colour and texture, placed on the ground plane and drawn back to front. Persons are
built from PASCAL-Part parts (head, hair, neck, torso, arms, hands, legs, feet) with part-dependent
colours; a few persons carry no part annotation; every third image (idx % 3 == 0) has a person, the next one
none. Normals come from the
geometry (ground plane tilted toward the camera, walls facing it, ellipsoids, cylinders, boxes), the
image is shaded with them, saliency marks the objects, the LabelMap carries PASCAL-Context ids from
which the reader derives edges and the normals mask.

NYUD-style (default 96×128, same aspect as 425×560 roughly): a ray-cast box room (floor, ceiling, back
and side walls) with furniture boxes and spheres; depth is the z-distance in metres with a few invalid
holes (0), normals are the hit surfaces' normals, segmentation has NYU-40 ids plus a few unlabeled
blobs, and edges are the thinned Laplacian of the label map (as the PASCAL reader computes them).

Normals are stored in the camera frame x right, y up, z toward the camera, as (n + 1)/2·255.

Usage:
    python -m data.synthetic --dataset pascal --out DB_ROOT --train 80 --val 20 --seed 0 [--size H W]
writes DB_ROOT/PASCALContext/ (or DB_ROOT/NYUDv2/) plus a SYNTHETIC.json marker with the parameters,
so a second run with the same parameters does nothing. `render_scene(dataset, seed, idx, size)` returns
the ground truth arrays of one image, which the tests compare with what the readers decode. Like the
real tarball, the PASCAL set also holds the part index `ImageSets/Parts/{train,val}.txt` (see
`part_index_text`), written after the human_parts .mat files it describes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from utils.visualization import voc_palette

from .common import DATASET_FOLDERS

GENERATOR_VERSION = 1
MARKER = "SYNTHETIC.json"
DEFAULT_SIZES = {"pascal": (128, 128), "nyud": (96, 128)}
DB_NAMES = {"pascal": "PASCALContext", "nyud": "NYUD"}

# --------------------------------------------------------------------------------------------------
# ids and file names


def sample_id(dataset: str, idx: int) -> str:
    """Image id of generated index `idx` (PASCAL 2008_000000 style, NYUD 0001 style)."""
    return f"2008_{idx:06d}" if dataset == "pascal" else f"{idx + 1:04d}"


def sample_index(dataset: str, sid: str) -> int:
    """Inverse of `sample_id`."""
    return int(sid.split("_")[1]) if dataset == "pascal" else int(sid) - 1


def image_size(dataset: str, idx: int, size=None):
    """(H, W) of image `idx`: PASCAL sizes vary a little (padding must be exercised), NYUD is fixed."""
    h, w = size if size is not None else DEFAULT_SIZES[dataset]
    if dataset == "pascal":
        d = max(4, h // 16)
        if idx % 4 == 3:
            return h - d, w
        if idx % 4 == 1:
            return h, w - d
    return int(h), int(w)


def _rng(dataset: str, seed: int, idx: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0 if dataset == "pascal" else 1, int(idx)]))


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def encode_normals(n: np.ndarray) -> np.ndarray:
    """[−1, 1] normals → uint8 RGB, the inverse of the readers' 2v/255 − 1 up to rounding."""
    return np.clip(np.round((n + 1.0) * 127.5), 0, 255).astype(np.uint8)


def label_edges(label_map: np.ndarray) -> np.ndarray:
    """Thinned Laplacian boundaries of a label map (the rule of docs/method.md#pascal-context-boundaries; used for NYUD's edge png)."""
    from .pascal_context import edges_from_labelmap

    return edges_from_labelmap(label_map)


# --------------------------------------------------------------------------------------------------
# PASCAL-style scenes

# PASCAL-Context stand-in "stuff" ids: (context id, normals-valid?, base colour, texture). Names do not
# matter to the reader, only whether the id is in the 170 normals-valid ids.
STUFF_UPPER = [(7, (110, 160, 230), "gradient"), (440, (200, 185, 150), "vstripes")]  # sky-like / wall-like
STUFF_LOWER = [(8, (70, 150, 60), "noise"), (9, (140, 95, 55), "planks")]  # grass-like / floor-like
STUFF_BLOCK = (18, (150, 150, 160), "windows")  # a building-like block in the background
VOC_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
             "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
             "train", "tvmonitor")
PERSON, CAR, CAT, BOTTLE, TV, SOFA = 15, 7, 8, 5, 20, 18
OBJECT_CLASSES = (PERSON, CAR, CAT, BOTTLE, TV, SOFA)
OBJECT_PROBS = (0.3, 0.14, 0.14, 0.14, 0.14, 0.14)
GROUND_NORMAL = _unit([0.0, 0.9, 0.44])
FACING = np.array([0.0, 0.0, 1.0], np.float32)
LIGHT = _unit([-0.4, 0.6, 0.7])
SHIRTS = ((200, 40, 40), (40, 90, 200), (230, 200, 40), (40, 170, 90), (240, 240, 240))
SKIN, HAIR, PANTS, SHOES = (225, 180, 150), (60, 40, 25), (40, 45, 80), (20, 20, 20)


class _Canvas:
    """Pixel grids of one image and helpers that rasterise primitives with their normals."""

    def __init__(self, h, w):
        self.h, self.w = h, w
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5

    def const_normals(self, n):
        return np.broadcast_to(np.asarray(n, np.float32), (self.h, self.w, 3)).copy()

    def box(self, y0, y1, x0, x1):
        return (self.yy >= y0) & (self.yy < y1) & (self.xx >= x0) & (self.xx < x1)

    def ellipse(self, cy, cx, ry, rx):
        """mask and ellipsoid normals (x right, y up, z toward the camera)."""
        u, v = (self.xx - cx) / rx, (self.yy - cy) / ry
        r2 = u * u + v * v
        mask = r2 < 1.0
        n = np.stack([u, -v, np.sqrt(np.clip(1.0 - r2, 0, 1))], -1)
        return mask, _unit(n)

    def capsule(self, p0, p1, r):
        """mask and cylinder normals of the segment p0→p1 ((y, x) points) thickened by r."""
        (y0, x0), (y1, x1) = p0, p1
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((self.yy - y0) * dy + (self.xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
        oy, ox = self.yy - (y0 + t * dy), self.xx - (x0 + t * dx)
        d2 = (oy * oy + ox * ox) / (r * r)
        mask = d2 < 1.0
        n = np.stack([ox / r, -oy / r, np.sqrt(np.clip(1.0 - d2, 0, 1))], -1)
        return mask, _unit(n)

    def triangle(self, a, b, c):
        def side(p, q):
            return (self.xx - p[1]) * (q[0] - p[0]) - (self.yy - p[0]) * (q[1] - p[1])

        s1, s2, s3 = side(a, b), side(b, c), side(c, a)
        return ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))


def _texture(cv: _Canvas, kind: str, rng, scale=1.0):
    """Multiplicative texture in ~[0.6, 1.2] that tells classes apart."""
    yy, xx = cv.yy, cv.xx
    if kind == "hstripes":
        return 0.85 + 0.15 * np.sign(np.sin(yy * 0.9 / scale))
    if kind == "vstripes":
        return 0.9 + 0.1 * np.sign(np.sin(xx * 0.5 + rng.uniform(0, 6)))
    if kind == "checker":
        return 0.8 + 0.2 * ((np.floor(yy / 4) + np.floor(xx / 4)) % 2)
    if kind == "dots":
        return 1.0 - 0.35 * (np.sin(yy * 1.3) * np.sin(xx * 1.3) > 0.6)
    if kind == "planks":
        return 0.85 + 0.15 * ((np.floor(yy / 5) % 2) * 0.6 + 0.4 * np.sin(xx * 0.15 + np.floor(yy / 5) * 3))
    if kind == "gradient":
        return 0.8 + 0.35 * (1.0 - yy / cv.h)
    if kind == "windows":
        return 0.75 + 0.35 * ((yy % 10 < 5) & (xx % 10 < 5))
    if kind == "scanlines":
        return 0.9 + 0.1 * np.sign(np.sin(yy * 2.0))
    return np.ones_like(yy) * (0.9 + 0.1 * rng.standard_normal(yy.shape).clip(-2, 2))


class _Obj:
    """One object instance: class, visible-to-be mask, normals, albedo and (persons) part label map."""

    def __init__(self, cls, mask, normals, albedo, parts=None, part_names=None, annotate_parts=True):
        self.cls, self.mask, self.normals, self.albedo = cls, mask, normals, albedo
        self.parts, self.part_names, self.annotate_parts = parts, part_names, annotate_parts


def _paint(dst_mask, dst_n, dst_a, mask, normals, colour, tex):
    dst_mask |= mask
    dst_n[mask] = normals[mask] if normals.ndim == 3 else normals
    dst_a[mask] = (np.asarray(colour, np.float32)[None] * tex[mask][:, None])


def _person(cv, rng, foot_y, cx, height):
    """A standing person from PASCAL-Part parts (painted in order; later parts cover earlier ones)."""
    h, w = cv.h, cv.w
    mask = np.zeros((h, w), bool)
    normals = np.zeros((h, w, 3), np.float32)
    albedo = np.zeros((h, w, 3), np.float32)
    partmap = np.zeros((h, w), np.uint8)
    names = []
    u = height / 8.0  # a head height
    shirt = SHIRTS[rng.integers(len(SHIRTS))]
    hip_y, shoulder_y, knee_y = foot_y - 4 * u, foot_y - 6.6 * u, foot_y - 2 * u
    lw = max(0.45 * u, 1.2)  # limb radius
    arm = rng.uniform(-0.5, 0.5)  # arm swing

    def add(name, m, n, colour):
        names.append(name)
        _paint(mask, normals, albedo, m, n, colour, np.ones((h, w), np.float32))
        partmap[m] = len(names)

    for side, sx in (("l", -1), ("r", 1)):
        hx = cx + sx * 0.6 * u
        kx = hx + sx * rng.uniform(0, 0.3) * u
        add(f"{side}uleg", *cv.capsule((hip_y, hx), (knee_y, kx), lw * 1.15), PANTS)
        add(f"{side}lleg", *cv.capsule((knee_y, kx), (foot_y - 0.35 * u, kx), lw), PANTS)
        add(f"{side}foot", *cv.capsule((foot_y - 0.2 * u, kx), (foot_y - 0.2 * u, kx + sx * 0.5 * u), 0.3 * u), SHOES)
    torso = cv.box(shoulder_y, hip_y + 0.3 * u, cx - 1.1 * u, cx + 1.1 * u)
    tn = cv.const_normals(FACING)  # a slightly rounded chest
    tn[..., 0] = np.clip((cv.xx - cx) / (1.3 * u), -0.7, 0.7)
    add("torso", torso, _unit(tn), shirt)
    add("neck", *cv.capsule((shoulder_y - 0.4 * u, cx), (shoulder_y + 0.1 * u, cx), 0.35 * u), SKIN)
    for side, sx in (("l", -1), ("r", 1)):
        sh = (shoulder_y + 0.3 * u, cx + sx * 1.3 * u)
        el = (sh[0] + 1.4 * u, sh[1] + sx * (0.3 + arm * sx) * u)
        wr = (el[0] + 1.3 * u, el[1] + sx * rng.uniform(-0.2, 0.6) * u)
        add(f"{side}uarm", *cv.capsule(sh, el, lw), shirt)
        add(f"{side}larm", *cv.capsule(el, wr, lw * 0.9), SKIN)
        add(f"{side}hand", *cv.ellipse(wr[0] + 0.3 * u, wr[1], 0.35 * u, 0.3 * u), SKIN)
    head_c = (shoulder_y - 0.95 * u, cx)
    add("head", *cv.ellipse(head_c[0], head_c[1], 0.6 * u, 0.5 * u), SKIN)
    hm, hn = cv.ellipse(head_c[0] - 0.35 * u, head_c[1], 0.3 * u, 0.52 * u)
    add("hair", hm & (cv.yy < head_c[0] - 0.25 * u), hn, HAIR)
    return _Obj(PERSON, mask, normals, albedo, partmap, names)


def _object(cv, rng, cls, foot_y, cx, size):
    """Non-person objects: each class its own shape, colour family, texture and normals."""
    h, w = cv.h, cv.w
    mask = np.zeros((h, w), bool)
    normals = np.zeros((h, w, 3), np.float32)
    albedo = np.zeros((h, w, 3), np.float32)
    jitter = rng.uniform(0.85, 1.15)

    def col(c):
        return tuple(np.clip(np.asarray(c) * jitter, 0, 255))

    if cls == CAR:
        bw, bh = 1.8 * size, 0.5 * size
        body = cv.box(foot_y - 0.15 * size - bh, foot_y - 0.15 * size, cx - bw / 2, cx + bw / 2)
        cabin = cv.box(foot_y - 0.15 * size - bh - 0.35 * size, foot_y - 0.15 * size - bh + 1,
                       cx - 0.5 * bw / 2, cx + 0.6 * bw / 2)
        _paint(mask, normals, albedo, body, FACING, col((200, 30, 35)), _texture(cv, "hstripes", rng))
        _paint(mask, normals, albedo, cabin, _unit([0, 0.4, 0.9]), (120, 170, 210), _texture(cv, "plain", rng))
        for wx in (cx - 0.55 * bw / 2, cx + 0.55 * bw / 2):
            m, n = cv.ellipse(foot_y - 0.17 * size, wx, 0.17 * size, 0.17 * size)
            _paint(mask, normals, albedo, m, n, (25, 25, 25), _texture(cv, "plain", rng))
    elif cls == CAT:
        m, n = cv.ellipse(foot_y - 0.3 * size, cx, 0.3 * size, 0.55 * size)
        _paint(mask, normals, albedo, m, n, col((225, 140, 45)), _texture(cv, "dots", rng))
        hx = cx + 0.5 * size * (1 if rng.random() < 0.5 else -1)
        hy = foot_y - 0.6 * size
        m, n = cv.ellipse(hy, hx, 0.22 * size, 0.22 * size)
        _paint(mask, normals, albedo, m, n, col((225, 140, 45)), _texture(cv, "dots", rng))
        for ex in (-1, 1):
            ear = cv.triangle((hy - 0.15 * size, hx + ex * 0.18 * size), (hy - 0.4 * size, hx + ex * 0.12 * size),
                              (hy - 0.15 * size, hx + ex * 0.02 * size))
            _paint(mask, normals, albedo, ear, FACING, col((200, 110, 30)), _texture(cv, "plain", rng))
    elif cls == BOTTLE:
        r = 0.18 * size
        m, n = cv.capsule((foot_y - 0.75 * size, cx), (foot_y - r, cx), r)
        _paint(mask, normals, albedo, m, n, col((40, 150, 60)), 0.8 + 0.4 * (np.abs(cv.xx - cx + 0.3 * r) < 0.25 * r))
        m, n = cv.capsule((foot_y - 1.05 * size, cx), (foot_y - 0.75 * size, cx), 0.45 * r)
        _paint(mask, normals, albedo, m, n, col((30, 120, 50)), _texture(cv, "plain", rng))
    elif cls == TV:
        top = foot_y - 1.0 * size
        frame = cv.box(top, top + 0.7 * size, cx - 0.55 * size, cx + 0.55 * size)
        screen = cv.box(top + 0.07 * size, top + 0.63 * size, cx - 0.47 * size, cx + 0.47 * size)
        stand = cv.box(top + 0.7 * size, foot_y, cx - 0.08 * size, cx + 0.08 * size)
        _paint(mask, normals, albedo, stand, FACING, (40, 40, 40), _texture(cv, "plain", rng))
        _paint(mask, normals, albedo, frame, FACING, (30, 30, 35), _texture(cv, "plain", rng))
        _paint(mask, normals, albedo, screen, FACING, col((70, 130, 230)), _texture(cv, "scanlines", rng))
    elif cls == SOFA:
        sw = 1.6 * size
        back = cv.box(foot_y - 0.8 * size, foot_y - 0.35 * size, cx - sw / 2, cx + sw / 2)
        seat = cv.box(foot_y - 0.4 * size, foot_y, cx - sw / 2, cx + sw / 2)
        _paint(mask, normals, albedo, back, FACING, col((125, 60, 155)), _texture(cv, "checker", rng))
        _paint(mask, normals, albedo, seat, _unit([0, 0.7, 0.7]), col((125, 60, 155)), _texture(cv, "checker", rng))
        for ax in (cx - sw / 2, cx + sw / 2):
            m, n = cv.capsule((foot_y - 0.55 * size, ax), (foot_y - 0.05 * size, ax), 0.12 * size)
            _paint(mask, normals, albedo, m, n, col((100, 45, 130)), _texture(cv, "plain", rng))
    else:
        raise ValueError(f"no synthetic shape for class {cls}")
    return _Obj(cls, mask, normals, albedo)


def _render_pascal(rng, h, w, idx):
    from .pascal_context import VOC_CONTEXT_IDS

    cv = _Canvas(h, w)
    horizon = rng.uniform(0.3, 0.55) * h
    upper = STUFF_UPPER[rng.integers(len(STUFF_UPPER))]
    lower = STUFF_LOWER[rng.integers(len(STUFF_LOWER))]
    label_map = np.where(cv.yy < horizon, upper[0], lower[0]).astype(np.uint16)
    normals = np.where((cv.yy < horizon)[..., None], FACING, GROUND_NORMAL).astype(np.float32)
    sky = np.asarray(upper[1], np.float32) * _texture(cv, upper[2], rng)[..., None]
    ground = np.asarray(lower[1], np.float32) * _texture(cv, lower[2], rng)[..., None]
    albedo = np.where((cv.yy < horizon)[..., None], sky, ground)
    if rng.random() < 0.4:  # a building-like block standing on the horizon
        bx = rng.uniform(0, 0.7) * w
        block = cv.box(horizon * rng.uniform(0.2, 0.6), horizon, bx, bx + rng.uniform(0.15, 0.3) * w)
        label_map[block] = STUFF_BLOCK[0]
        normals[block] = FACING
        albedo[block] = np.asarray(STUFF_BLOCK[1], np.float32)[None] * _texture(cv, STUFF_BLOCK[2], rng)[block][:, None]

    n_obj = int(rng.integers(1, 5))
    classes = list(rng.choice(OBJECT_CLASSES, size=n_obj, p=OBJECT_PROBS))
    if idx % 3 == 0:  # a person in every third image, none in the next: both cases always occur
        classes[0] = PERSON
    elif idx % 3 == 1:
        classes = [c if c != PERSON else OBJECT_CLASSES[1 + (idx + k) % 5] for k, c in enumerate(classes)]
    objs = []
    for k, cls in enumerate(classes):
        foot = rng.uniform(horizon + 0.12 * (h - horizon), h * 1.02)
        depth_frac = (foot - horizon) / (h - horizon)  # 0 at the horizon (far), 1 at the bottom (near)
        cx = rng.uniform(0.12, 0.88) * w
        if cls == PERSON:
            obj = _person(cv, rng, foot, cx, height=(0.35 + 0.5 * depth_frac) * h)
            obj.annotate_parts = not (idx % 5 == 4 and k == 0)  # a few persons without part annotation
        else:
            obj = _object(cv, rng, int(cls), foot, cx, size=(0.15 + 0.3 * depth_frac) * min(h, w))
        objs.append((foot, k, obj))
    objs.sort(key=lambda t: (t[0], t[1]))  # back to front

    inst = np.zeros((h, w), np.int32)
    for k, (_, _, obj) in enumerate(objs, start=1):
        inst[obj.mask] = k
        label_map[obj.mask] = VOC_CONTEXT_IDS[obj.cls]
        normals[obj.mask] = obj.normals[obj.mask]
        albedo[obj.mask] = obj.albedo[obj.mask]

    semseg = np.zeros((h, w), np.uint8)
    parts_truth = np.zeros((h, w), np.uint8)
    records = []
    from .pascal_context import HUMAN_PART_GROUPS

    for k, (_, _, obj) in enumerate(objs, start=1):
        visible = inst == k
        semseg[visible] = obj.cls
        rec = {"class": VOC_NAMES[obj.cls], "class_ind": obj.cls, "mask": visible.astype(np.uint8), "parts": []}
        if obj.cls == PERSON and obj.annotate_parts:
            for j, name in enumerate(obj.part_names, start=1):
                pm = (obj.parts == j) & visible
                rec["parts"].append((name, pm.astype(np.uint8)))
                parts_truth[pm] = HUMAN_PART_GROUPS[name]
        records.append(rec)
    if idx % 6 == 5:  # an object with an empty mask: the part index must record it as −1
        records.append({"class": "person", "class_ind": PERSON, "mask": np.zeros((h, w), np.uint8), "parts": []})

    shade = 0.35 + 0.65 * np.clip((normals * LIGHT).sum(-1), 0, 1)
    image = albedo * shade[..., None] + rng.normal(0, 4.0, (h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)

    salient = inst > 0
    sal_png = np.where(salient, rng.integers(215, 250, (h, w)), rng.integers(5, 40, (h, w))).astype(np.uint8)

    void = np.zeros((h, w), bool)
    semseg_folder = "VOC12" if idx % 3 != 2 else "pascal-context"
    if semseg_folder == "VOC12":  # VOC-style void outline around objects
        from scipy.ndimage import maximum_filter, minimum_filter

        void = (maximum_filter(inst, 3) != minimum_filter(inst, 3)) & (maximum_filter(inst, 3) > 0)
    semseg_png = semseg.copy()
    semseg_png[void] = 255

    valid = np.isin(label_map, _normals_valid_ids())
    return {
        "image": image,
        "label_map": label_map,
        "semseg": semseg_png,
        "semseg_folder": semseg_folder,
        "instances": inst,
        "objects": records,
        "human_parts": parts_truth,  # 6-group ids; all 0 when no visible annotated person
        "has_human_parts": bool(parts_truth.any()),
        "normals": normals.astype(np.float32),
        "normals_png": encode_normals(normals),
        "normals_valid": valid,
        "sal_png": sal_png,
        "sal": salient.astype(np.uint8),
    }


def _normals_valid_ids():
    from .pascal_context import NORMALS_VALID_IDS

    return NORMALS_VALID_IDS


# --------------------------------------------------------------------------------------------------
# NYUD-style scenes (ray-cast room)

NYU = {"wall": 1, "floor": 2, "cabinet": 3, "bed": 4, "sofa": 6, "table": 7, "bookshelf": 10, "picture": 11,
       "ceiling": 22, "lamp": 35, "otherprop": 40}
NYU_COLOURS = {1: (190, 180, 160), 2: (130, 90, 60), 3: (150, 110, 70), 4: (80, 120, 190), 6: (120, 60, 150),
               7: (170, 130, 80), 10: (100, 70, 45), 11: (220, 60, 60), 22: (235, 235, 230), 35: (250, 230, 120),
               40: (60, 170, 90)}
NYU_TEXTURE = {2: "planks", 4: "checker", 6: "checker", 10: "hstripes", 11: "dots", 3: "vstripes"}


def _ray_box(d, lo, hi):
    """Hit distance (inf where missed) and normal index/sign of rays from the origin with directions d."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (lo[None, None] * inv), (hi[None, None] * inv)
    tmin_ax, tmax_ax = np.minimum(t1, t2), np.maximum(t1, t2)
    tmin_ax = np.nan_to_num(tmin_ax, nan=-np.inf)
    tmax_ax = np.nan_to_num(tmax_ax, nan=np.inf)
    tmin, tmax = tmin_ax.max(-1), tmax_ax.min(-1)
    hit = (tmax >= tmin) & (tmin > 1e-6)
    axis = tmin_ax.argmax(-1)
    return np.where(hit, tmin, np.inf), axis


def _render_nyud(rng, h, w, idx):
    f = 0.95 * w
    v, u = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    d = np.stack([(u - w / 2) / f, -(v - h / 2) / f, np.ones_like(u)], -1)  # forward frame, d_z = 1 → t = depth
    cam_h, ceil_h = rng.uniform(1.1, 1.5), rng.uniform(1.2, 1.6)
    back, left, right = rng.uniform(4.0, 7.0), rng.uniform(1.6, 3.0), rng.uniform(1.6, 3.0)

    depth = np.full((h, w), np.inf, np.float32)
    normal = np.zeros((h, w, 3), np.float32)  # forward frame (x right, y up, z away)
    label = np.zeros((h, w), np.uint8)
    albedo = np.zeros((h, w, 3), np.float32)
    hitpt = np.zeros((h, w, 3), np.float32)

    def commit(t, n, lab, colour_key=None):
        closer = t < depth
        depth[closer] = t[closer]
        nn = n if n.ndim == 3 else np.broadcast_to(n, (h, w, 3))
        normal[closer] = nn[closer]
        label[closer] = lab
        albedo[closer] = NYU_COLOURS[colour_key or lab]

    with np.errstate(divide="ignore", invalid="ignore"):
        planes = [
            (-cam_h / d[..., 1], [0, 1, 0], NYU["floor"]),
            (ceil_h / d[..., 1], [0, -1, 0], NYU["ceiling"]),
            (back / d[..., 2], [0, 0, -1], NYU["wall"]),
            (-left / d[..., 0], [1, 0, 0], NYU["wall"]),
            (right / d[..., 0], [-1, 0, 0], NYU["wall"]),
        ]
    for t, n, lab in planes:
        t = np.where(np.isfinite(t) & (t > 0), t, np.inf).astype(np.float32)
        commit(t, np.asarray(n, np.float32), lab)

    kinds = ["bed", "cabinet", "table", "sofa", "bookshelf", "sphere", "picture"]
    n_obj = int(rng.integers(2, 6))
    for kind in rng.choice(kinds, size=n_obj, replace=True):
        x = rng.uniform(-left + 0.3, right - 0.3)
        z = rng.uniform(2.0, back - 0.3)
        if kind == "picture":
            lo = np.array([x - 0.4, -cam_h + 1.2, back - 0.03]); hi = np.array([x + 0.4, -cam_h + 1.8, back])
            lab = NYU["picture"]
        elif kind == "sphere":
            c = np.array([x, -cam_h + rng.uniform(0.2, 1.0), z], np.float32)
            r = rng.uniform(0.15, 0.35)
            a = (d * d).sum(-1)
            b = -2 * (d * c).sum(-1)
            cc = float((c * c).sum() - r * r)
            disc = b * b - 4 * a * cc
            t = np.where(disc >= 0, (-b - np.sqrt(np.clip(disc, 0, None))) / (2 * a), np.inf)
            t = np.where(t > 0, t, np.inf).astype(np.float32)
            n = _unit(d * np.where(np.isfinite(t), t, 0.0)[..., None] - c)  # misses: any vector, never kept
            lab = NYU["lamp"] if rng.random() < 0.5 else NYU["otherprop"]
            commit(t, n, lab)
            continue
        else:
            dims = {"bed": (1.6, 0.5, 1.9), "cabinet": (0.8, 1.6, 0.5), "table": (1.0, 0.75, 0.7),
                    "sofa": (1.8, 0.8, 0.8), "bookshelf": (0.9, 1.9, 0.35)}[kind]
            sx, sy, sz = (np.asarray(dims) * rng.uniform(0.8, 1.2))
            lo = np.array([x - sx / 2, -cam_h, z]); hi = np.array([x + sx / 2, -cam_h + sy, z + sz])
            lab = NYU[kind]
        t, axis = _ray_box(d, lo.astype(np.float32), hi.astype(np.float32))
        n = np.zeros((h, w, 3), np.float32)
        sign = -np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
        np.put_along_axis(n, axis[..., None], sign[..., None], -1)
        commit(t.astype(np.float32), n, lab)

    hitpt[:] = d * depth[..., None]
    # textures from world coordinates give perspective cues
    planks = 0.85 + 0.15 * (np.floor(hitpt[..., 0] * 4) % 2)
    checker = 0.8 + 0.2 * (np.floor(hitpt * 5).sum(-1) % 2)
    stripes = 0.8 + 0.2 * (np.floor(hitpt[..., 1] * 6) % 2)
    texm = np.ones((h, w), np.float32)
    patterns = {"planks": planks, "checker": checker, "hstripes": stripes, "vstripes": planks, "dots": checker}
    for lab, kind in NYU_TEXTURE.items():
        m = label == lab
        texm[m] = patterns[kind][m]
    n_cam = normal * np.array([1, 1, -1], np.float32)  # stored frame: z toward the camera
    light = _unit(np.array([0.3, 1.2, 0.5], np.float32) - hitpt)  # point light near the ceiling
    diffuse = np.clip((normal * light).sum(-1), 0, 1)
    shade = (0.35 + 0.65 * diffuse) * (1.0 / (1.0 + 0.05 * depth))
    image = albedo * texm[..., None] * shade[..., None] + rng.normal(0, 3.0, (h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)

    seg = label.copy()
    for _ in range(int(rng.integers(1, 3))):  # unlabeled blobs (value 0 → ignore after decoding)
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 5)
        seg[(v - cy) ** 2 + (u - cx) ** 2 < r * r] = 0
    depth = depth.astype(np.float32)
    for _ in range(int(rng.integers(2, 5))):  # invalid depth holes
        cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.5, 4), rng.uniform(1.5, 6)
        depth[((v - cy) / ry) ** 2 + ((u - cx) / rx) ** 2 < 1] = 0.0
    edges = label_edges(seg)
    return {
        "image": image,
        "segmentation": seg,  # stored values: 0 unlabeled, 1..40
        "depth": depth,
        "normals": _unit(n_cam).astype(np.float32),
        "normals_png": encode_normals(_unit(n_cam)),
        "edge": edges,
        "edge_png": (edges.astype(np.uint8) * 255),
    }


def render_scene(dataset: str, seed: int, idx: int, size=None) -> dict:
    """Ground-truth arrays of generated image `idx` (the same ones `generate` writes to disk)."""
    if dataset not in DEFAULT_SIZES:
        raise ValueError(f"dataset must be one of {', '.join(DEFAULT_SIZES)}, got {dataset!r}")
    h, w = image_size(dataset, idx, size)
    rng = _rng(dataset, seed, idx)
    scene = _render_pascal(rng, h, w, idx) if dataset == "pascal" else _render_nyud(rng, h, w, idx)
    scene["id"] = sample_id(dataset, idx)
    return scene


# --------------------------------------------------------------------------------------------------
# writers


def _anno_struct(imname: str, records) -> np.ndarray:
    """A PASCAL-Part-like `anno` struct: anno[0][0] = (imname, objects); objects[0][i] = (class,
    class_ind, mask, parts); parts[0][j] = (part_name, mask), or an empty 0×0 array without parts."""
    part_dt = [("part_name", "O"), ("mask", "O")]
    obj_dt = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    objects = np.zeros((1, len(records)), dtype=obj_dt)
    for i, r in enumerate(records):
        if r["parts"]:
            parts = np.zeros((1, len(r["parts"])), dtype=part_dt)
            for j, (name, m) in enumerate(r["parts"]):
                parts[0, j] = (name, m)
        else:
            parts = np.zeros((0, 0))
        objects[0, i] = (r["class"], np.array([[r["class_ind"]]], np.uint8), r["mask"], parts)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (imname, objects)
    return anno


MAT_HEADER = b"MATLAB 5.0 MAT-file, written by taskdiffusion data.synthetic"


def _savemat_reproducible(path: Path, mdict: dict) -> None:
    """scipy's savemat (compressed) with a fixed header text: scipy puts the wall-clock time in the
    116-byte header, so the same seed would otherwise give different bytes a second later."""
    import io

    import scipy.io as sio

    buf = io.BytesIO()
    sio.savemat(buf, mdict, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = MAT_HEADER.ljust(116, b" ")
    path.write_bytes(bytes(data))


def _write_pascal(root: Path, sid: str, s: dict, palette):
    from PIL import Image

    Image.fromarray(s["image"]).save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
    seg = Image.fromarray(s["semseg"])
    if s["semseg_folder"] == "VOC12":  # palette PNG like the real VOC labels: stored values are the ids
        seg.putpalette(palette)
    seg.save(root / "semseg" / s["semseg_folder"] / f"{sid}.png")
    _savemat_reproducible(root / "pascal-context" / "trainval" / f"{sid}.mat", {"LabelMap": s["label_map"]})
    _savemat_reproducible(root / "human_parts" / f"{sid}.mat", {"anno": _anno_struct(f"{sid}.jpg", s["objects"])})
    Image.fromarray(s["normals_png"]).save(root / "normals_distill" / f"{sid}.png")
    Image.fromarray(s["sal_png"]).save(root / "sal_distill" / f"{sid}.png")


def part_index_classes(records) -> list:
    """One image's part-index entry: each object's class index, or -1 when its mask is empty.

    Why here and not via the reader: the generator knows the objects it wrote into the .mat file, so the
    shipped index is an independent statement the reader's own scan can be checked against.
    """
    from .pascal_context import PART_AREA_THRES

    return [int(r["class_ind"]) if int(np.asarray(r["mask"]).sum()) > PART_AREA_THRES else -1 for r in records]


def part_index_text(entries: dict) -> str:
    """`ImageSets/Parts/<split>.txt` as the original code writes it: a JSON object, one
    `"<id>": [class, ...]` per line in split order (tab-indented), so that the bytes are reproducible."""
    lines = [f"\t{json.dumps(str(sid))}: {json.dumps([int(c) for c in cls])}" for sid, cls in entries.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _write_part_index(root: Path, entries_by_split: dict) -> None:
    """Write the part index of every split (after all .mat files, so it is never older than them)."""
    for split, entries in entries_by_split.items():
        (root / "ImageSets" / "Parts" / f"{split}.txt").write_text(part_index_text(entries))


def _write_nyud(root: Path, sid: str, s: dict, palette=None):
    from PIL import Image

    Image.fromarray(s["image"]).save(root / "images" / f"{sid}.png")
    Image.fromarray(s["segmentation"]).save(root / "segmentation" / f"{sid}.png")
    np.save(root / "depth" / f"{sid}.npy", s["depth"])
    Image.fromarray(s["normals_png"]).save(root / "normals" / f"{sid}.png")
    Image.fromarray(s["edge_png"]).save(root / "edge" / f"{sid}.png")


FOLDERS = {
    "pascal": ("ImageSets/Context", "ImageSets/Parts", "JPEGImages", "semseg/VOC12", "semseg/pascal-context",
               "pascal-context/trainval", "human_parts", "normals_distill", "sal_distill"),
    "nyud": ("gt_sets", "images", "segmentation", "depth", "normals", "edge"),
}
SPLIT_DIR = {"pascal": "ImageSets/Context", "nyud": "gt_sets"}


def read_marker(dataset_dir) -> dict | None:
    p = Path(dataset_dir) / MARKER
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def generate(dataset: str, out, n_train: int, n_val: int, seed: int = 0, size=None, overwrite: bool = False,
             progress: bool = False) -> Path:
    """Write a synthetic dataset under `out` (the db_root) and return the dataset folder.

    Idempotent: when `<out>/<folder>/SYNTHETIC.json` records the same parameters nothing is written.
    A folder with other parameters is replaced only with `overwrite=True`; a folder without the marker
    (real data!) is never touched.
    """
    if dataset not in DEFAULT_SIZES:
        raise ValueError(f"dataset must be one of {', '.join(DEFAULT_SIZES)}, got {dataset!r}")
    if n_train < 1 or n_val < 1:
        raise ValueError(f"need at least one train and one val image, got train={n_train} val={n_val}")
    size = tuple(int(s) for s in size) if size is not None else DEFAULT_SIZES[dataset]
    if min(size) < 32:
        raise ValueError(f"image size must be at least 32x32, got {size}")
    root = Path(out) / DATASET_FOLDERS[DB_NAMES[dataset]]
    params = {"generator": "taskdiffusion.data.synthetic", "version": GENERATOR_VERSION, "dataset": dataset,
              "n_train": int(n_train), "n_val": int(n_val), "seed": int(seed), "size": list(size)}
    if root.exists():
        marker = read_marker(root)
        if marker == params:
            return root
        if marker is None:
            raise FileExistsError(f"{root} exists and is not a synthetic dataset (no {MARKER}); "
                                  f"refusing to write into it")
        if not overwrite:
            raise FileExistsError(f"{root} holds a synthetic dataset with other parameters ({marker}); "
                                  f"pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(root)
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    for folder in FOLDERS[dataset]:
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    writer = _write_pascal if dataset == "pascal" else _write_nyud
    palette = voc_palette().reshape(-1).tolist()  # palette PNGs like the real VOC12 labels
    ids = {"train": [], "val": []}
    part_index = {"train": {}, "val": {}}
    indices = range(n_train + n_val)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"synthetic {dataset}", unit="img")
    for idx in indices:
        scene = render_scene(dataset, seed, idx, size)
        writer(tmp, scene["id"], scene, palette)
        split = "train" if idx < n_train else "val"
        ids[split].append(scene["id"])
        if dataset == "pascal":
            part_index[split][scene["id"]] = part_index_classes(scene["objects"])
    for split, lst in ids.items():
        (tmp / SPLIT_DIR[dataset] / f"{split}.txt").write_text("\n".join(lst) + "\n")
    if dataset == "pascal":
        _write_part_index(tmp, part_index)
    (tmp / MARKER).write_text(json.dumps(params, indent=1))
    os.replace(tmp, root)  # the folder appears complete or not at all
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(DEFAULT_SIZES), required=True)
    ap.add_argument("--out", required=True, help="db_root: the dataset is written to OUT/PASCALContext or OUT/NYUDv2")
    ap.add_argument("--train", type=int, default=80, help="number of train images")
    ap.add_argument("--val", type=int, default=20, help="number of val images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                    help="image size (default pascal 128 128, nyud 96 128)")
    ap.add_argument("--overwrite", action="store_true", help="replace a synthetic set made with other parameters")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = Path(args.out) / DATASET_FOLDERS[DB_NAMES[args.dataset]]
        existed = read_marker(root)
        path = generate(args.dataset, args.out, args.train, args.val, args.seed, args.size, args.overwrite,
                        progress=True)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if existed == read_marker(path):
        print(f"{path} already holds this synthetic set ({args.train} train / {args.val} val, "
              f"seed {args.seed}); nothing to do")
    else:
        print(f"wrote {args.train} train + {args.val} val synthetic {args.dataset} images to {path} "
              f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
