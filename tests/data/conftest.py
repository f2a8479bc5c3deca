"""Tiny synthetic datasets for the data tests (generated once per session, a second or two)."""
import pytest
from easydict import EasyDict

from data.synthetic import generate

SEED = 3


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """db_root with PASCALContext/ (6 train, 4 val) and NYUDv2/ (4 train, 3 val), read-only for the tests."""
    root = tmp_path_factory.mktemp("db_root")
    generate("pascal", root, 6, 4, seed=SEED)
    generate("nyud", root, 4, 3, seed=SEED)
    return root


@pytest.fixture
def fresh_root(tmp_path):
    """A new tiny db_root per test, for tests that break files (2 train, 2 val per dataset)."""
    generate("pascal", tmp_path, 2, 2, seed=SEED)
    generate("nyud", tmp_path, 2, 2, seed=SEED)
    return tmp_path


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private cache folder (also as $TASKDIFFUSION_CACHE) so tests never touch ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("TASKDIFFUSION_CACHE", str(path))
    return path


def make_cfg(db_name, db_root, tasks=None, train_scale=(96, 96), test_scale=(128, 128), **kw):
    """A hand-made config with only the fields the data package reads."""
    if tasks is None:
        tasks = ["semseg", "human_parts", "sal", "normals", "edge"] if db_name == "PASCALContext" else \
            ["semseg", "depth", "normals", "edge"]
    cfg = EasyDict(db_name=db_name, db_root=str(db_root), TASKS=EasyDict(NAMES=list(tasks)),
                   TRAIN=EasyDict(SCALE=list(train_scale)), TEST=EasyDict(SCALE=list(test_scale)),
                   trBatch=2, valBatch=2, nworkers=0, seed=SEED)
    cfg.update(kw)
    return cfg


@pytest.fixture
def cfg_factory():
    return make_cfg
