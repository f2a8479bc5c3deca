"""models.compile.compile_regions: same outputs (inference and training), same parameter names.

The trace check uses torch.compile's "eager" backend (Dynamo capture without code generation), so it
runs in seconds on CI; the speed of real (inductor) compilation is a benchmark (benchmarks/speed.py).
"""
import pytest
import torch
from easydict import EasyDict

from models import build_model
from models.compile import compile_regions
from tests.models.helpers import pascal_targets as _targets


def _cfg(model):
    return EasyDict(model=model, backbone="TaskDiffusion_vitT",
                    backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2, taps=[1, 2, 3]),
                    backbone_weights=None, drop_path_rate=0.0, final_embed_dim=16, timesteps=3, randsteps=1,
                    bit_scales={"all": 0.01}, module_layer=3, with_aux=True, db_name="PASCALContext",
                    TASKS=dict(NAMES=["semseg", "human_parts", "sal", "normals", "edge"]),
                    TRAIN=dict(SCALE=[32, 48]), ignore_index=255)


@pytest.mark.parametrize("kind", ["TaskDiffusion", "baseline"])
def test_compiled_regions_give_the_same_outputs(kind):
    torch._dynamo.reset()
    torch.manual_seed(0)
    plain = build_model(_cfg(kind))
    torch.manual_seed(0)
    compiled = compile_regions(build_model(_cfg(kind)), backend="eager")
    assert list(dict(compiled.named_parameters())) == list(dict(plain.named_parameters()))
    x = torch.randn(2, 3, 32, 48)
    kw = {} if kind == "baseline" else {"noise": torch.randn(2, plain.heads.noisy_channels, 2, 3)}
    with torch.no_grad():
        a, b = plain.eval()(x, **kw)["pred"], compiled.eval()(x, **kw)["pred"]
    for t in a:
        torch.testing.assert_close(b[t], a[t], rtol=1e-5, atol=1e-6)
    train_kw = {} if kind == "baseline" else {"times": torch.tensor([0.3, 0.8]),
                                              "noise": torch.randn(2, plain.heads.noisy_channels, 2, 3)}
    ta, tb = plain.train()(x, _targets(2, 32, 48), **train_kw), compiled.train()(x, _targets(2, 32, 48), **train_kw)
    for key in ("pred", "aux"):
        for t in ta[key]:
            torch.testing.assert_close(tb[key][t], ta[key][t], rtol=1e-5, atol=1e-6)
    from torch._dynamo.utils import counters

    assert not counters["graph_break"], dict(counters["graph_break"])  # each region is one graph
    for out in (ta, tb):
        sum(v.square().mean() for key in ("pred", "aux") for v in out[key].values()).backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for n, p in compiled.named_parameters():
        if grads[n] is None:  # unused by this forward (e.g. label embeddings of the sampling path)
            assert p.grad is None, n
        else:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_rejects_a_model_without_backbone_and_heads():
    with pytest.raises(TypeError, match="backbone"):
        compile_regions(torch.nn.Linear(2, 2))
