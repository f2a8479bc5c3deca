"""main.py: every user mistake is one `error:` line with exit status 2, found before any file is written;
a different experiment pointed at an existing run folder is refused and leaves its config.yml as it was;
--run_mode infer writes to its own folder; a checkpoint that needs unpickling runs no code."""
import os
import pickle
from pathlib import Path

import pytest
import torch

import main as main_mod
from tests.engine.conftest import BASE_OPTS, CONFIG, ROOT, tiny_cfg

NYUD_CONFIG = str(ROOT / "configs" / "demo" / "synthetic_nyud.yml")


def _argv(data, out, *opts, config=CONFIG, mode="train", extra=()):
    return ["--config_exp", str(config), "--run_mode", mode, "--data_root", str(data), "--output_dir", str(out),
            *extra, "--opts", *BASE_OPTS, "val_interval=1000", *opts]


def _one_error(capsys, status, want=2) -> str:
    cap = capsys.readouterr()
    lines = [ln for ln in (cap.out + cap.err).splitlines() if ln.startswith("error:") or " E error: " in ln]
    assert status == want, cap.out[-2000:] + cap.err[-2000:]
    assert len(lines) == 1, cap.out[-2000:] + cap.err[-2000:]
    assert "Traceback" not in cap.out + cap.err
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    """A finished 2-iteration run (its folder is copied by tests that must not change it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main_mod.main(_argv(tiny_data, out, "max_iter=2")) == 0
    return out


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_experiment_in_the_run_folder_is_refused(trained_run, tiny_data, capsys):
    before = _snapshot(trained_run)
    capsys.readouterr()
    line = _one_error(capsys, main_mod.main(_argv(tiny_data, trained_run, config=NYUD_CONFIG)))
    assert "holds another experiment" in line and "PASCALContext" in line and "NYUD" in line, line
    assert str(trained_run / "checkpoints" / "last.pth") in line or str(trained_run / "config.yml") in line
    line = _one_error(capsys, main_mod.main(_argv(tiny_data, trained_run, "final_embed_dim=16")))
    assert "final_embed_dim: 32 (run folder) vs 16 (requested)" in line, line
    line = _one_error(capsys, main_mod.main(_argv(os.path.join(tiny_data, "nowhere"), trained_run)))
    assert "nowhere" in line, line
    assert _snapshot(trained_run) == before  # config.yml, checkpoints and logs byte-identical


def test_resume_with_changed_schedule_is_allowed(trained_run, tiny_data, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    assert main_mod.main(_argv(tiny_data, out, "max_iter=3")) == 0
    assert torch.load(out / "checkpoints" / "last.pth", weights_only=True)["iteration"] == 3
    assert "max_iter: 3" in (out / "config.yml").read_text()


def test_infer_mode_writes_its_own_folder(trained_run, tiny_data, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    before = _snapshot(out)
    ckpt = out / "checkpoints" / "best.pth"
    assert main_mod.main(_argv(tiny_data, out, mode="infer", extra=("--trained_model", str(ckpt)))) == 0
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of the training run changed
    new = {str(k) for k in after if k not in before}
    assert new and all(k.startswith("infer_best/") for k in new), sorted(new)[:5]
    assert any(k.startswith("infer_best/predictions/semseg/") for k in new)
    assert "infer_best/config.yml" in new and "infer_best/log.txt" in new


@pytest.mark.parametrize("case", ["output_under_file", "binary_config", "batch_too_large", "bad_device",
                                  "cuda_without_gpu"])
def test_user_mistakes_are_one_line(case, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    config, opts, extra = CONFIG, [], []
    if case == "output_under_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    elif case == "binary_config":
        config = tmp_path / "model.pth"
        config.write_bytes(bytes(range(256)) * 4)
    elif case == "batch_too_large":
        opts = ["trBatch=9"]
    elif case == "bad_device":
        extra = ["--device", "gpu"]
    elif case == "cuda_without_gpu":
        if torch.cuda.is_available():
            extra = ["--device", f"cuda:{torch.cuda.device_count()}"]  # the index past the last GPU
        else:
            extra = ["--device", "cuda"]
    line = _one_error(capsys, main_mod.main(_argv(tiny_data, out, *opts, config=config, extra=extra)))
    want = {"output_under_file": "is a file, not a folder", "binary_config": "not a UTF-8 text file",
            "batch_too_large": "'trBatch' = 9", "bad_device": "unknown device name",
            "cuda_without_gpu": "CUDA device"}[case]
    assert want in line, line
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_other_local_ranks_stay_quiet(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    assert main_mod.main(_argv(tiny_data, tmp_path / "run", "trBatch=9")) == 2
    cap = capsys.readouterr()
    assert "error:" not in cap.out + cap.err


class _Plant:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_runs_no_code(trained_run, tiny_data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted.pth"
    with open(planted, "wb") as f:
        pickle.dump({"model": _Plant(str(marker))}, f)
    for mode in ("train", "infer"):
        status = main_mod.main(_argv(tiny_data, tmp_path / mode, "max_iter=1", mode=mode,
                                     extra=("--trained_model", str(planted))))
        line = _one_error(capsys, status)
        assert "--trust_checkpoint" in line and str(planted) in line, line
        assert not marker.exists()


def test_checkpoint_that_does_not_fit_names_file_and_both_experiments(trained_run, tiny_data, tmp_path):
    import shutil

    from data import build_dataset
    from engine.trainer import Trainer
    from losses import build_criterion
    from models import build_model
    from utils.checkpoint import CheckpointError

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    cfg = tiny_cfg(tiny_data, out, "final_embed_dim=16")
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg, build_model(cfg), build_criterion(cfg), build_dataset(cfg, "train"), None,
                torch.device("cpu"), tensorboard=False)
    msg = str(e.value)
    assert "auto-resume" in msg and str(out / "checkpoints" / "last.pth") in msg, msg
    assert "C=32" in msg and "C=16" in msg, msg


def test_stale_temporaries_removed_and_periodic_copies_pruned(tiny_data, tmp_path):
    out = tmp_path / "run"
    stale = out / "checkpoints" / ".last.pth.abcd1234.tmp.pth"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    assert main_mod.main(_argv(tiny_data, out, "max_iter=5", "ckpt_interval=1", "keep_checkpoints=2")) == 0
    assert not stale.exists()
    names = sorted(os.listdir(out / "checkpoints"))
    assert names == ["best.pth", "iter_000004.pth", "iter_000005.pth", "last.pth"], names


def test_restartable_torchrun_without_a_fresh_store_is_warned_at_start(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")  # what torchrun exports by default
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    assert main_mod.main(_argv(tiny_data, tmp_path / "run", "max_iter=1")) == 0
    cap = capsys.readouterr()
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in cap.out + cap.err
