"""NYUD-v2 as prepared by ATRC (`<db_root>/NYUDv2/`, docs/method.md#nyud-v2-labels): its DatasetSpec (registered on
import), reader, download facts, verify checks and synthetic look-alike, in one module.

Decoding per task:
  semseg   segmentation/<id>.png: label = value − 1, and the unlabeled value 0 (→ −1) becomes 255.
  depth    depth/<id>.npy: metres, 0 = invalid (kept as 0, depth's ignore value).
  normals  normals/<id>.png: 2v/255 − 1 per channel (no class masking).
  edge     edge/<id>.png: v/255 → {0, 1}.
Nothing here is expensive, so nothing is cached.

Synthetic scenes (default 96×128, roughly the aspect of 425×560): a ray-cast box room (floor, ceiling,
back and side walls) with furniture boxes and spheres; depth is the z-distance in metres with a few
invalid holes (0), normals are the hit surfaces' normals (camera frame x right, y up, z toward the
camera, stored as (n + 1)/2·255), segmentation has NYU-40 ids plus a few unlabeled blobs, and edges are
the thinned Laplacian of the label map (as the PASCAL reader computes them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base import MultiTaskDataset
from ..checks import DatasetChecks, Problem, size_problem, values_problem
from ..common import (
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
from ..synthetic_base import SyntheticWriter, encode_normals, unit
from .pascal_context import ATRC_HELP, ETH, ONEDRIVE, edges_from_labelmap
from ..registry import Archive, DatasetSpec, register_dataset

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


# --------------------------------------------------------------------------------------------------
# synthetic NYUD-style scenes (python -m data.synthetic --dataset nyud): a ray-cast room

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
            n = unit(d * np.where(np.isfinite(t), t, 0.0)[..., None] - c)  # misses: any vector, never kept
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
    light = unit(np.array([0.3, 1.2, 0.5], np.float32) - hitpt)  # point light near the ceiling
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
    edges = edges_from_labelmap(seg)
    return {
        "image": image,
        "segmentation": seg,  # stored values: 0 unlabeled, 1..40
        "depth": depth,
        "normals": unit(n_cam).astype(np.float32),
        "normals_png": encode_normals(unit(n_cam)),
        "edge": edges,
        "edge_png": (edges.astype(np.uint8) * 255),
    }


def _write_nyud(root: Path, sid: str, s: dict, palette=None):
    from PIL import Image

    Image.fromarray(s["image"]).save(root / "images" / f"{sid}.png")
    Image.fromarray(s["segmentation"]).save(root / "segmentation" / f"{sid}.png")
    np.save(root / "depth" / f"{sid}.npy", s["depth"])
    Image.fromarray(s["normals_png"]).save(root / "normals" / f"{sid}.png")
    Image.fromarray(s["edge_png"]).save(root / "edge" / f"{sid}.png")


class NyudSynthetic(SyntheticWriter):
    """The synthetic NYUD-v2 look-alike (see the module docstring)."""

    name, db_name, stream = "nyud", "NYUD", 1
    default_size = (96, 128)
    folders = ("gt_sets", "images", "segmentation", "depth", "normals", "edge")
    split_folder = "gt_sets"
    description = "NYUD-v2-style ray-cast rooms: NYU-40 labels, metric depth with holes, normals, edges"

    def sample_id(self, idx, split="train"):
        return f"{idx + 1:04d}"

    def sample_index(self, sid):
        return int(sid) - 1

    def render(self, rng, h, w, idx):
        return _render_nyud(rng, h, w, idx)

    def write(self, root, split, sid, scene):
        _write_nyud(root, sid, scene)


# ---- data.verify ---------------------------------------------------------------------------------------
NYUD_CLASSES = 40  # stored 0 = unlabeled, 1..40


class NyudChecks(DatasetChecks):
    """The per-file checks of `python -m data.verify --dataset nyud`; the files are the reader's own table."""

    split_folder = "gt_sets"
    files = {kind: ((folder,), suffix) for kind, (folder, suffix) in MODALITIES.items()}

    def check_file(self, kind, path, rel, sid, image_hw):
        if kind == "semseg":
            lab = read_single_channel(path, sid)
            return [size_problem(rel, path, sid, lab.shape[:2], image_hw), values_problem(rel, lab, NYUD_CLASSES)]
        if kind == "depth":
            depth = load_npy(path, sid)
            if depth.ndim == 3 and depth.shape[2] == 1:
                depth = depth[:, :, 0]
            if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
                return [Problem("error", "label shape", rel, f"depth should be a numeric H×W array, "
                                                             f"got {depth.dtype} {depth.shape}")]
            out = [size_problem(rel, path, sid, depth.shape, image_hw)]
            if not np.isfinite(depth).all() or (depth < 0).any():
                out.append(Problem("error", "value range", rel, "depth has NaN/inf or negative values "
                                                                "(metres expected, 0 = invalid)"))
            return out
        if kind == "normals":
            return [size_problem(rel, path, sid, read_rgb_png(path, sid).shape[:2], image_hw)]
        if kind == "edge":
            lab = read_single_channel(path, sid)
            out = [size_problem(rel, path, sid, lab.shape[:2], image_hw)]
            odd = np.setdiff1d(np.unique(lab), [0, 255])
            if odd.size:
                out.append(Problem("warning", "value range", rel, f"edge values {odd[:8].tolist()} besides "
                                                                  f"0/255 (the reader divides by 255)"))
            return out
        return []


SPEC = register_dataset(DatasetSpec(
    name="NYUD", folder="NYUDv2", reader=NYUD,
    crop_size=(448, 576), edge_w=0.90, edge_max_dist=0.011, split_sizes={"train": 795, "val": 654},
    description="NYUD-v2 as prepared by ATRC: semseg, depth, normals, edge",
    download=ATRC_HELP.format(tarball="NYUDv2.tar.gz", folder="NYUDv2"),
    layout="""\
<db_root>/NYUDv2/
    gt_sets/{train,val}.txt               one image id per line
    images/<id>.png                       RGB input
    segmentation/<id>.png                 0 = unlabeled, 1..40 = NYU-40 classes
    depth/<id>.npy                        metres, 0 = invalid
    normals/<id>.png                      RGB normals
    edge/<id>.png                         0/255 boundaries""",
    synthetic="nyud",
    archives=(Archive("NYUDv2.tar.gz", (
        (ONEDRIVE + "EZ-2tWIDYSFKk7SCcHRimskBhgecungms4WFa_L-255GrQ?e=6jAt4c&download=1",
         "TaskDiffusion/MLoRE README (HKUST OneDrive)"),
        (ETH + "NYUDv2.tar.gz", "ATRC README (ETH Zurich)"),
    ), "the whole ATRC-prepared dataset"),),
    checks=NyudChecks(), synthesizer=NyudSynthetic(),
))
