"""A NaN in one depth label during training: one `error:` line naming the file and the sample (after
saving the trained iterations), exit status 2, not the 'non-finite loss ... lower the learning rate'
advice; under data_errors: skip the sample is left out and counted, and training finishes."""
import subprocess
import sys

import numpy as np
import pytest

import main as main_mod
from tests.engine.conftest import BASE_OPTS, ROOT
from tests.engine.test_main_errors import _one_error

NYUD_CONFIG = str(ROOT / "configs" / "demo" / "synthetic_nyud.yml")


@pytest.fixture(scope="module")
def nan_depth(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyud")
    subprocess.run([sys.executable, "-m", "data.synthetic", "--dataset", "nyud", "--out", str(root), "--train", "4",
                    "--val", "2", "--seed", "0", "--size", "48", "48"], cwd=ROOT, check=True, capture_output=True)
    sid = (root / "NYUDv2" / "gt_sets" / "train.txt").read_text().split()[1]
    path = root / "NYUDv2" / "depth" / f"{sid}.npy"
    depth = np.load(path)
    depth.flat[5] = np.nan
    np.save(path, depth)
    return root, sid, path


def _argv(root, out, *opts):
    return ["--config_exp", NYUD_CONFIG, "--run_mode", "train", "--data_root", str(root), "--output_dir", str(out),
            "--opts", *BASE_OPTS, "max_iter=4", "val_interval=1000", *opts]


def test_nan_depth_is_named_not_blamed_on_the_learning_rate(nan_depth, tmp_path, capsys):
    root, sid, path = nan_depth
    line = _one_error(capsys, main_mod.main(_argv(root, tmp_path / "run")))
    assert f"bad depth label values in {path} (sample {sid!r}): 1 non-finite value(s) (NaN)" in line, line
    assert "learning rate" not in line and "non-finite loss" not in line


def test_nan_depth_is_skipped_and_counted(nan_depth, tmp_path, capsys):
    root, sid, path = nan_depth
    assert main_mod.main(_argv(root, tmp_path / "run", "data_errors=skip")) == 0
    text = capsys.readouterr()
    out = text.out + text.err
    assert "training left out 1 unreadable sample(s)" in out and str(path) in out, out[-3000:]
