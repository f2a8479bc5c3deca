"""compile: true in the engine, both scopes, traced with the 'eager' backend (fast on CI): the training
losses equal the uncompiled run's, checkpoints keep the plain parameter names, and with scope 'regions'
the evaluation forward is compiled too."""
import pytest
import torch

from engine.trainer import Trainer
from tests.engine.conftest import tiny_cfg

N = 2


def _run(data, out, *opts):
    from data import build_dataset
    from losses import build_criterion
    from models import build_model

    cfg = tiny_cfg(data, out, f"max_iter={N}", "val_interval=1000", *opts)
    torch.manual_seed(5)
    t = Trainer(cfg, build_model(cfg), build_criterion(cfg), build_dataset(cfg, "train"), None,
                torch.device("cpu"), tensorboard=False)
    t.train()
    t.close()
    return t


@pytest.mark.parametrize("scope", ["regions", "model"])
def test_compiled_training_matches_eager(tiny_data, tmp_path, scope):
    torch._dynamo.reset()
    plain = _run(tiny_data, tmp_path / "plain")
    comp = _run(tiny_data, tmp_path / scope, "compile=true", f"compile_options.scope={scope}",
                "compile_options.backend=eager")
    assert [k for k, _ in comp.history] == list(range(1, N + 1))
    for (k, a), (_, b) in zip(plain.history, comp.history):
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-7), (k, name)
    assert ("decode" in vars(comp.model.heads)) == (scope == "regions")  # the compiled step is installed
    ck = torch.load(tmp_path / scope / "checkpoints" / "last.pth", weights_only=False)
    assert set(ck["model"]) == set(comp.model.state_dict()) and not any("_orig_mod" in n for n in ck["model"])
