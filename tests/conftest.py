"""Shared test fixtures: repository root on sys.path, offline hub, one CPU thread for determinism."""
import os
import sys
from pathlib import Path

import pytest
import torch

# Tests use tiny models: one thread avoids oversubscription on small CI machines (2 cores), where
# torch's default thread pool made tiny forwards ~100x slower, and matches the golden files' setting.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# amp_cpu: auto decides by timing; tests compare numbers, so the suite decides fp32 without timing
# (tests of the decision itself unset this: tests/utils/test_precision.py)
os.environ.setdefault("TASKDIFFUSION_AMP_CPU_AUTO", "fp32")
SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one intra-op thread and leaves it so, even when the code under test (a
    benchmark's --threads, an in-process main.py) changes it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED
