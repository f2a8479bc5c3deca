"""Fixtures of the engine tests: one tiny synthetic PASCAL-style set and tiny-model configs.

Sizes are chosen for a 2-core CI machine: 48×48 crops (3×3 tokens), a 4-block ViT of width 64, decoder
width 32, 8 train / 4 val images (some 8 px smaller, so padding is exercised).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "demo" / "synthetic_pascal.yml")
BASE_OPTS = ["crop_size=[48,48]", "trBatch=2", "valBatch=2", "nworkers=0", "eval_workers=0", "edge_eval.workers=0", "warmup_iters=0",
             "edge_eval.full_thresholds=5", "edge_eval.estimate_thresholds=3", "print_freq=1"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """db_root of a synthetic PASCAL-Context set: 8 train + 4 val images of up to 48×48."""
    root = tmp_path_factory.mktemp("synthetic")
    subprocess.run([sys.executable, "-m", "data.synthetic", "--dataset", "pascal", "--out", str(root),
                    "--train", "8", "--val", "4", "--seed", "0", "--size", "48", "48"],
                   cwd=ROOT, check=True, capture_output=True)
    return str(root)


def tiny_cfg(data_root: str, output_dir, *opts):
    from engine.config import load_config

    cfg = load_config(CONFIG, opts=BASE_OPTS + list(opts), data_root=data_root, output_dir=str(output_dir))
    cfg.run_mode = "train"
    return cfg


def env_for_subprocess() -> dict:
    env = dict(os.environ)
    # CPU + gloo even on a GPU machine (two processes cannot share one GPU under NCCL)
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CI": "true", "PYTHONHASHSEED": "0",
                "CUDA_VISIBLE_DEVICES": ""})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    """A randomly initialised tiny-model checkpoint (iteration 0) for the inference tests."""
    import torch

    from models import build_model
    from utils.checkpoint import build_state, save_checkpoint

    out = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_cfg(tiny_data, out)
    torch.manual_seed(0)
    return save_checkpoint(build_state(build_model(cfg), iteration=0), str(out))[0]
