"""Kill-and-resume: a run stopped after its checkpoint at N/2 and restarted continues exactly as the
uninterrupted run (same iteration numbers, learning rates, data, noise and therefore losses)."""
import torch

from engine.trainer import Trainer
from tests.engine.conftest import tiny_cfg

N = 6


def _trainer(data, out, stop_at=None):
    from data import build_dataset
    from losses import build_criterion
    from models import build_model

    cfg = tiny_cfg(data, out, f"max_iter={N}", "val_interval=1000", f"ckpt_interval={N // 2}",
                   "grad_accum_steps=2", "warmup_iters=2", "drop_path_rate=0.1")
    torch.manual_seed(123)  # the model init; the resumed run must get its weights from the checkpoint
    model = build_model(cfg)
    t = Trainer(cfg, model, build_criterion(cfg), build_dataset(cfg, "train"), None, torch.device("cpu"),
                tensorboard=False)
    t.train(stop_at=stop_at)
    t.close()
    return t


def test_resume_matches_uninterrupted_run(tiny_data, tmp_path):
    full = _trainer(tiny_data, tmp_path / "full")
    assert [k for k, _ in full.history] == list(range(1, N + 1))

    first = _trainer(tiny_data, tmp_path / "killed", stop_at=N // 2)  # "killed" right after the checkpoint
    assert [k for k, _ in first.history] == list(range(1, N // 2 + 1))
    assert (tmp_path / "killed" / "checkpoints" / f"iter_{N // 2:06d}.pth").is_file()
    second = _trainer(tiny_data, tmp_path / "killed")  # same command again: resumes from last.pth
    assert second.resumed_from is not None
    assert [k for k, _ in second.history] == list(range(N // 2 + 1, N + 1))  # no off-by-one

    expected = dict(full.history)
    for k, terms in second.history:
        ref = expected[k]
        assert terms["lr"] == ref["lr"], k
        for name, v in terms.items():
            assert v == ref[name], (k, name, v, ref[name])
    # and the final weights are identical
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pth", weights_only=False)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pth", weights_only=False)
    assert a["iteration"] == b["iteration"] == N
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name


def test_truncated_last_resumes_from_the_newest_readable_periodic_copy(tiny_data, tmp_path, caplog):
    """A damaged last.pth (storage cut the write short) is set aside and the run continues from iter N/2,
    with the same losses as the uninterrupted run."""
    full = _trainer(tiny_data, tmp_path / "full")
    _trainer(tiny_data, tmp_path / "cut", stop_at=N // 2 + 1)  # killed one step after the checkpoint at N/2
    folder = tmp_path / "cut" / "checkpoints"
    last = folder / "last.pth"
    last.write_bytes(last.read_bytes()[:200])
    with caplog.at_level("WARNING"):
        second = _trainer(tiny_data, tmp_path / "cut")
    assert second.resumed_from == str(folder / f"iter_{N // 2:06d}.pth")
    assert any("unreadable checkpoint" in r.getMessage() and "last.pth" in r.getMessage()
               and f"iteration {N // 2}" in r.getMessage() for r in caplog.records)
    assert any(p.name.startswith("last.pth.unreadable-") for p in folder.iterdir())
    expected = dict(full.history)
    assert [k for k, _ in second.history] == list(range(N // 2 + 1, N + 1))
    for k, terms in second.history:
        assert terms["loss/total"] == expected[k]["loss/total"], k
