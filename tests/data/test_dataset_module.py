"""A dataset is one module: a test-defined dataset gets data.synthetic and data.verify through its spec alone,
and the generic programs know no dataset by name."""
import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import DatasetError, build_dataset
from data import synthetic, verify
from data import tasks as task_table
from data.base import MultiTaskDataset
from data.checks import DatasetChecks, Problem, size_problem, values_problem
from data.common import read_rgb, read_single_channel, read_split, resolve_dataset_dir
from data.datasets import DatasetSpec, dataset_names, dataset_spec, register_dataset, unregister_dataset
from data.synthetic_base import SyntheticWriter

ROOT = Path(__file__).resolve().parents[2]
TOY_CLASSES = ("ground", "blob", "stick")


class ToyReader(MultiTaskDataset):
    db_name = "Toy"

    def __init__(self, root, split="val", tasks=("semseg",), transform=None):
        super().__init__(split, tasks, transform)
        self.root = resolve_dataset_dir(self.db_name, root)
        self.ids = read_split(self.root / "lists" / f"{split}.txt", self.db_name)

    def load_image(self, sid):
        return read_rgb(self.root / "rgb" / f"{sid}.png", sid)

    def load_label(self, task, sid, hw):
        if task == "semseg":
            return read_single_channel(self.root / "seg" / f"{sid}.png", sid).astype(np.float32)[:, :, None]
        return super().load_label(task, sid, hw)


class ToyChecks(DatasetChecks):
    split_folder = "lists"
    files = {"image": (("rgb",), ".png"), "semseg": (("seg",), ".png")}

    def check_file(self, kind, path, rel, sid, image_hw):
        lab = read_single_channel(path, sid)
        return [size_problem(rel, path, sid, lab.shape, image_hw),
                values_problem(rel, lab, len(TOY_CLASSES) - 1, extra=(255,))]


class ToySynthetic(SyntheticWriter):
    name, db_name, stream = "toy", "Toy", 77
    default_size = (40, 48)
    folders = ("lists", "rgb", "seg")
    split_folder = "lists"

    def sample_id(self, idx, split="train"):
        return f"toy{idx:03d}"

    def sample_index(self, sid):
        return int(sid[3:])

    def render(self, rng, h, w, idx):
        seg = np.zeros((h, w), np.uint8)
        cy, cx = rng.integers(8, h - 8), rng.integers(8, w - 8)
        yy, xx = np.mgrid[0:h, 0:w]
        seg[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 1
        seg[:, int(rng.integers(2, w - 2))] = 2
        image = np.stack([seg * 100, 255 - seg * 80, np.full_like(seg, 30)], -1).astype(np.uint8)
        return {"image": image, "semseg": seg}

    def write(self, root, split, sid, scene):
        Image.fromarray(scene["image"]).save(root / "rgb" / f"{sid}.png")
        Image.fromarray(scene["semseg"]).save(root / "seg" / f"{sid}.png")


@pytest.fixture
def toy():
    spec = register_dataset(DatasetSpec("Toy", "toy_set", ToyReader, (48, 48), split_sizes={"train": 100},
                                        synthetic="toy", checks=ToyChecks(), synthesizer=ToySynthetic()))
    task_table.register_task(task_table.Task("semseg", "discrete", 3, 3, 255, TOY_CLASSES, metric="mIoU"), "Toy")
    try:
        yield spec
    finally:
        task_table.unregister_task("semseg", "Toy")
        unregister_dataset("Toy")


def test_synthetic_and_verify_come_from_the_spec(toy, tmp_path, capsys):
    assert toy.cli_name == "toy"
    assert synthetic.main(["--dataset", "toy", "--out", str(tmp_path), "--train", "3", "--val", "2"]) == 0
    folder = tmp_path / "toy_set"
    assert sorted(p.name for p in (folder / "rgb").iterdir()) == [f"toy{i:03d}.png" for i in range(5)]
    assert (folder / "lists" / "val.txt").read_text() == "toy003\ntoy004\n"
    capsys.readouterr()
    assert verify.main(["--dataset", "toy", "--root", str(tmp_path), "--deep", "--workers", "1",
                        "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Toy at" in out and "5 samples decoded" in out and "3 ids, the real release has 100" in out
    # the reader sees what the writer rendered
    from easydict import EasyDict

    cfg = EasyDict(db_name="Toy", db_root=str(tmp_path), TASKS=EasyDict(NAMES=["semseg"]))
    ds = build_dataset(cfg, "val", transform=False)
    truth = synthetic.render_scene("toy", 0, synthetic.sample_index("toy", ds.ids[1]), None, "val")
    np.testing.assert_array_equal(ds[1]["semseg"][:, :, 0], truth["semseg"])


def test_verify_uses_the_datasets_own_file_check(toy, tmp_path):
    synthetic.generate("toy", tmp_path, 2, 1, seed=1)
    bad = np.zeros((40, 48), np.uint8)
    bad[0, 0] = 9
    Image.fromarray(bad).save(tmp_path / "toy_set" / "seg" / "toy001.png")
    (tmp_path / "toy_set" / "rgb" / "toy002.png").unlink()
    report = verify.verify_dataset("Toy", tmp_path, deep=True, workers=1, progress=False)
    found = {(p.kind, p.path) for p in report.errors}
    assert found == {("value range", "seg/toy001.png"), ("missing file", "rgb/toy002.png")}


def test_a_dataset_without_checks_or_writer_is_refused_clearly(tmp_path):
    register_dataset(DatasetSpec("Bare", "bare", ToyReader, (32, 32)))
    try:
        with pytest.raises(DatasetError, match="no verify checks"):
            verify.verify_dataset("Bare", tmp_path)
        with pytest.raises(ValueError, match="dataset must be one of"):
            synthetic.generate("bare", tmp_path, 1, 1)
    finally:
        unregister_dataset("Bare")
    assert "Bare" not in dataset_names()


def test_the_generic_programs_name_no_dataset():
    """download/verify/synthetic hold no dataset's name, folder or file: they read the specs."""
    names = set()
    for db in dataset_names():
        spec = dataset_spec(db)
        names |= {spec.name, spec.folder, spec.cli_name} | {a.file for a in spec.archives}
    for module in ("data/download.py", "data/verify.py", "data/synthetic.py"):
        tree = ast.parse((ROOT / module).read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        consts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and id(n) not in docs}
        leaked = {c for c in consts if c in names}
        assert not leaked, f"{module} names datasets {sorted(leaked)}"
