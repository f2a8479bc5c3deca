"""The non-diffusion baseline (`model: baseline`): shapes, gradients, determinism, size vs TaskDiffusion.

Head sizes (parameters), baseline / TaskDiffusion:
  PASCAL ViT-L (C=376):  124,472,932 / 139,724,546  (0.891)
  PASCAL ViT-B (C=576):  291,481,732 / 327,172,196  (0.891)
  NYUD ViT-L   (C=768):  423,710,506 / 476,982,962  (0.888)
The difference is the diffusion machinery: FiLM projections, time MLP, label embeddings, noisy-input fusion.
"""
import pytest
import torch
from easydict import EasyDict

from models import build_model
from models.baseline import BaselineHead, BaselineModel
from tests.models.helpers import fast_and_reference, pascal_targets as _targets, randomize_bn


def _cfg(model="baseline", tasks=("semseg", "human_parts", "sal", "normals", "edge"), **kw):
    cfg = EasyDict(model=model, backbone="TaskDiffusion_vitT",
                   backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2, taps=[1, 2, 3]),
                   backbone_weights=None, drop_path_rate=0.1, final_embed_dim=16, timesteps=2, randsteps=1,
                   bit_scales={"all": 0.01}, module_layer=3, with_aux=True, db_name="PASCALContext",
                   TASKS=dict(NAMES=list(tasks)), TRAIN=dict(SCALE=[32, 48]), ignore_index=255)
    cfg.update(kw)
    return cfg


def test_training_forward_shapes_and_grads():
    torch.manual_seed(0)
    model = build_model(_cfg()).train()
    assert isinstance(model, BaselineModel) and isinstance(model.heads, BaselineHead)
    out = model(torch.randn(2, 3, 32, 48), _targets(2, 32, 48))
    assert set(out) == {"pred", "aux"}
    channels = {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}
    for key in ("pred", "aux"):
        assert {t: v.shape for t, v in out[key].items()} == {t: (2, c, 32, 48) for t, c in channels.items()}
    loss = sum(v.square().mean() for key in out for v in out[key].values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # every decoder part is trained, including the gates computed from the clean features
    assert model.heads.fpn_encoder.mask_task[2].conv_1.weight.grad.abs().sum() > 0
    assert model.heads.fpn_encoder.share_fpn.fpn_conv[0][0].conv_1.weight.grad.abs().sum() > 0


def test_inference_is_one_deterministic_pass():
    torch.manual_seed(0)
    model = build_model(_cfg(tasks=("semseg", "sal"))).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        a = model(x)
        state = torch.get_rng_state()
        b = model(x, generator=torch.Generator().manual_seed(3))
        assert torch.equal(torch.get_rng_state(), state)  # draws nothing
        train_fmt = model(x, {"semseg": torch.zeros(1, 1, 32, 48), "sal": torch.zeros(1, 1, 32, 48)})
    assert set(a) == {"pred"} and a["pred"]["sal"].shape == (1, 2, 32, 48)
    assert torch.equal(a["pred"]["semseg"], b["pred"]["semseg"])
    assert torch.equal(a["pred"]["semseg"], train_fmt["pred"]["semseg"])  # targets do not change the prediction
    with pytest.raises(ValueError, match="no diffusion"):
        model(x, noise=torch.zeros(1))
    with torch.no_grad():  # any input size divisible by 16
        assert model(torch.randn(1, 3, 64, 32))["pred"]["semseg"].shape == (1, 21, 64, 32)


def test_no_aux_and_nyud_tasks():
    torch.manual_seed(0)
    model = build_model(_cfg(with_aux=False, db_name="NYUD", tasks=("semseg", "depth", "normals", "edge")))
    names = set(model.state_dict())
    assert not any(n.startswith("heads.aux_heads") for n in names)
    assert not any("time_mlp" in n or "embedding" in n or "transforms" in n for n in names)
    out = model.train()(torch.randn(2, 3, 32, 48), {"depth": torch.rand(2, 1, 32, 48)})
    assert set(out) == {"pred"} and out["pred"]["semseg"].shape == (2, 40, 32, 48)


def _head_params(cfg):
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).heads.parameters())


def test_parameter_count_comparable_to_taskdiffusion_tiny():
    base, diff = _head_params(_cfg()), _head_params(_cfg(model="TaskDiffusion"))
    assert 0.85 <= base / diff <= 1.15, (base, diff)


@pytest.mark.parametrize("path,base_count,diff_count", [
    ("configs/pascal/vitL.yml", 124_472_932, 139_724_546),
    ("configs/nyud/vitL.yml", 423_710_506, 476_982_962),
])
def test_parameter_count_paper_configs(repo_root, path, base_count, diff_count):
    from engine.config import load_config

    cfg = load_config(str(repo_root / path), opts=["backbone_weights=null", "model=baseline"],
                      data_root=str(repo_root))
    assert _head_params(cfg) == base_count
    cfg.model = "TaskDiffusion"
    assert _head_params(cfg) == diff_count
    assert 0.85 <= base_count / diff_count <= 1.15


@pytest.mark.parametrize("train", [True, False])
def test_fast_path_equals_reference_path(train):
    """The low-resolution rewrite of the last layer + heads and the aux heads (the default) gives the
    plain upsample-then-convolve numbers: outputs, BN running stats and every parameter's gradient."""
    torch.manual_seed(0)
    fast = build_model(_cfg(final_embed_dim=12)).double()
    randomize_bn(fast, seed=1)  # non-trivial BN so the eval-mode path is exercised too
    fast, ref = fast_and_reference(fast, train)
    assert fast.heads.fast_path and not ref.heads.fast_path
    x = torch.randn(2, 3, 48, 32, dtype=torch.float64)
    targets = {k: v.double() for k, v in _targets(2, 48, 32).items()}
    torch.manual_seed(5)  # same drop-path draws in both forwards
    out_f = fast(x, targets)
    torch.manual_seed(5)
    out_r = ref(x, targets)
    for key in ("pred", "aux"):
        for t in out_r[key]:
            torch.testing.assert_close(out_f[key][t], out_r[key][t], rtol=1e-9, atol=1e-9, msg=f"{key}/{t}")
    if train:
        sum((v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)).sum()
            for m in (out_f,) for k in m for v in m[k].values()).backward()
        sum((v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)).sum()
            for m in (out_r,) for k in m for v in m[k].values()).backward()
        ref_params = dict(ref.named_parameters())
        for name, p in fast.named_parameters():
            torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-8, atol=1e-9, msg=name)
        ref_bufs = dict(ref.named_buffers())
        for name, b in fast.named_buffers():
            torch.testing.assert_close(b, ref_bufs[name], msg=name)
