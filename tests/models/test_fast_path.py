"""The decoder's fast path (exact rewrites) gives the reference path's numbers: values, gradients, BN stats.

The golden parity tests pin the fast path (the default) to the original; these tests pin it to the
plain op-for-op formulation of docs/method.md#decoder-core on shapes the goldens do not cover (odd sizes, batch > 1,
NYUD tasks, train-mode BatchNorm, gradients of every parameter).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from easydict import EasyDict
from torch import nn

from models import build_model
from models.decoder import CondConvMLP, ConvMLP, NoisyInputFusion, border_bias, conv3x3_of_upsampled
from tests.models.helpers import close, fast_and_reference, randomize_bn


@pytest.mark.parametrize("hw,size", [((3, 5), (12, 20)), ((4, 4), (16, 16)), ((2, 3), (7, 11)), ((1, 1), (4, 4))])
def test_conv3x3_of_upsampled_is_conv_of_upsample(hw, size):
    torch.manual_seed(0)
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    w, b = torch.randn(5, 6, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    ref = F.conv2d(F.interpolate(x, size=size, mode="bilinear", align_corners=False), w, b, padding=1)
    out = conv3x3_of_upsampled(x, w, b, size)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    close(out, ref, "conv3x3_of_upsampled", rtol=1e-10)


def test_border_bias_is_conv_of_a_constant_map():
    w, c = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    ref = F.conv2d(c.view(1, 3, 1, 1).expand(1, 3, 5, 7), w, padding=1)
    close(border_bias(w, c, (5, 7)), ref, "border_bias", rtol=1e-10)


def _blocks(seed=0):
    torch.manual_seed(seed)
    blk = CondConvMLP(8, 8, 8, 6, residual=True).double()
    aux = ConvMLP(12, 8).double()
    head = nn.Conv2d(8, 5, 3, padding=1).double()
    randomize_bn(blk, 1)
    randomize_bn(aux, 2)
    return blk, aux, head


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("size", [(12, 16), None])
def test_last_layer_into_head_matches_plain(train, size):
    blk, aux, head = _blocks()
    blk.train(train)
    x, temb = torch.randn(2, 8, 3, 4, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    ref_blk = copy.deepcopy(blk)
    ref = head(ref_blk(F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size else x, temb))
    out = blk.forward_into_head(x, temb, head, size)
    close(out, ref, "refine+pred", rtol=1e-10)
    if train:  # train-mode BN saw the same batch statistics
        close(blk.norm.running_mean, ref_blk.norm.running_mean, "running_mean", rtol=1e-10)
        close(blk.norm.running_var, ref_blk.norm.running_var, "running_var", rtol=1e-10)


@pytest.mark.parametrize("train", [False, True])
def test_aux_body_into_head_matches_plain(train):
    _, aux, head = _blocks()
    aux.train(train)
    y = torch.randn(2, 12, 3, 5, dtype=torch.float64)
    ref = head(aux(F.interpolate(y, size=(12, 20), mode="bilinear", align_corners=False)))
    close(aux.forward_into_head(y, head, (12, 20)), ref, "aux", rtol=1e-10)


def test_noisy_input_fusion_feature_part_is_reusable():
    torch.manual_seed(3)
    fuse = NoisyInputFusion(8, 5, num_levels=4)
    levels = [torch.randn(2, 8, 3, 3) for _ in range(4)]
    z = torch.randn(2, 5, 3, 3)
    ref = fuse.forward_concat(levels, z)
    cached = fuse.feature_part(levels)
    for out in (fuse(levels, z), fuse(levels, z, feature_part=cached)):
        for a, b in zip(out, ref):
            close(a, b, "fusion")


TASKS = {"PASCALContext": ["semseg", "human_parts", "sal", "normals", "edge"],
         "NYUD": ["semseg", "depth", "normals", "edge"]}


def tiny_model(db, seed=0):
    torch.manual_seed(seed)
    cfg = EasyDict(model="TaskDiffusion", db_name=db, TASKS={"NAMES": TASKS[db]}, TRAIN={"SCALE": [32, 48]},
                   backbone="TaskDiffusion_vitT",
                   backbone_kwargs={"embed_dim": 32, "depth": 3, "num_heads": 2, "taps": [1, 2, 3]},
                   drop_path_rate=0.0, final_embed_dim=16, timesteps=3, randsteps=1, bit_scales={"all": 0.01},
                   module_layer=2, with_aux=True, backbone_weights=None)
    model = build_model(cfg).double()
    randomize_bn(model, seed)
    return model


def targets(db, b, h, w):
    g = torch.Generator().manual_seed(1)
    out = {"semseg": torch.randint(0, 21 if db == "PASCALContext" else 40, (b, 1, h, w), generator=g).double(),
           "normals": F.normalize(torch.randn(b, 3, h, w, generator=g, dtype=torch.float64), dim=1),
           "edge": (torch.rand(b, 1, h, w, generator=g) < 0.2).double()}
    if db == "PASCALContext":
        out["human_parts"] = torch.randint(0, 7, (b, 1, h, w), generator=g).double()
        out["sal"] = torch.randint(0, 2, (b, 1, h, w), generator=g).double()
    else:
        out["depth"] = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) * 9 + 0.5
    for t in out:
        out[t][:, :, :4] = 255.0 if t != "depth" else 0.0
    return out


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("db", ["PASCALContext", "NYUD"])
def test_sampling_fast_equals_reference(db, grouped):
    fast, ref = fast_and_reference(tiny_model(db), train=False)
    fast.heads.grouped_ops = grouped  # per-task fast path (default) and grouped ops (grouped_ops: true)
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    noise = torch.randn(2, fast.heads.noisy_channels, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        a = fast(x, noise=noise, return_intermediates=True)
        b = ref(x, noise=noise, return_intermediates=True)
    for za, zb in zip(a["intermediates"]["mask_t"], b["intermediates"]["mask_t"]):
        close(za, zb, "mask_t", rtol=1e-9)
    for t in b["pred"]:
        close(a["pred"][t], b["pred"][t], f"pred[{t}]", rtol=1e-9)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("db", ["PASCALContext", "NYUD"])
def test_training_fast_equals_reference_with_grads_and_bn_stats(db, grouped):
    fast, ref = fast_and_reference(tiny_model(db), train=True)
    fast.heads.grouped_ops = grouped  # per-task fast path (default) and grouped ops (grouped_ops: true)
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    tg = targets(db, 2, 32, 48)
    noise = torch.randn(2, fast.heads.noisy_channels, 2, 3, dtype=torch.float64)
    times = torch.tensor([0.2, 0.7])
    outs = []
    for m in (fast, ref):
        out = m(x, tg, noise=noise.clone(), times=times)
        loss = sum((v.double() ** 2).mean() * (i + 1) for i, v in enumerate(list(out["pred"].values())
                                                                             + list(out["aux"].values())))
        loss.backward()
        outs.append(out)
    for key in ("pred", "aux"):
        for t in outs[1][key]:
            close(outs[0][key][t], outs[1][key][t], f"{key}[{t}]", rtol=1e-9)
    pf, pr = dict(fast.named_parameters()), dict(ref.named_parameters())
    for n, p in pr.items():
        assert (p.grad is None) == (pf[n].grad is None), n
        if p.grad is not None:
            # (biases right before a train-mode BN get ~1e-17 gradients: rounding noise, hence the floor)
            close(pf[n].grad, p.grad, f"grad {n}", rtol=1e-7, atol_floor=1e-12)
    bf, br = dict(fast.named_buffers()), dict(ref.named_buffers())
    for n, v in br.items():
        close(bf[n].double(), v.double(), f"buffer {n}", rtol=1e-9)


def test_grouped_ops_change_only_fp32_rounding_and_cut_kernels():
    """The grouped decoder (`grouped_ops: true`) against the per-task fast path: same outputs up to fp32 rounding, and
    less than half the kernel-launching ops per DDIM step (benchmarks/ops.py's counter), and at most 183,
    the issue's goal for PASCAL (1/3 of the 549 it counted; the count depends on the task set and the block
    structure, not on widths or sizes, so this tiny model counts what PASCAL ViT-B launches)."""
    from easydict import EasyDict

    from benchmarks.ops import count
    from models import build_model

    cfg = EasyDict(model="TaskDiffusion", backbone="TaskDiffusion_vitT",
                   backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2, taps=[1, 2, 3]),
                   backbone_weights=None, drop_path_rate=0.0, final_embed_dim=16, timesteps=3, randsteps=1,
                   bit_scales={"all": 0.01}, module_layer=3, with_aux=True, db_name="PASCALContext",
                   TASKS=dict(NAMES=["semseg", "human_parts", "sal", "normals", "edge"]), TRAIN=dict(SCALE=[32, 48]),
                   ignore_index=255)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomize_bn(model)
    x = torch.randn(2, 3, 32, 48)
    noise = model.initial_noise(x, ["a", "b"], 0)
    counts = {}
    preds = {}
    with torch.no_grad():
        bb = count(lambda: model.backbone(x)).kernels
        for grouped in (False, True):
            model.heads.grouped_ops = grouped
            preds[grouped] = model(x, noise=noise)["pred"]
            counts[grouped] = (count(lambda: model(x, noise=noise)).kernels - bb) / 3
    for t in preds[False]:
        close(preds[True][t], preds[False][t], t, rtol=1e-5)
    assert counts[True] < counts[False] / 2 and counts[True] <= 183, counts


def test_default_film_slots_keep_module_order():
    """The FiLM coefficients of every block come from one matmul whose row order is the slot order; a
    different order changes its fp32 rounding (the demo's losses moved at iteration 3). The default
    (per-task) path keeps module order; grouped ops renumber the slots and switching back restores them."""
    from models.decoder import CondConv

    heads = tiny_model("PASCALContext").heads
    module_order = [m for m in list(heads.fpn_encoder.modules()) + list(heads.encoders.modules())
                    if isinstance(m, (CondConv, CondConvMLP))]
    assert heads.film_blocks() == module_order
    assert [b.film_slot for b in module_order] == list(range(len(module_order)))
    heads.grouped_ops = True
    assert heads.film_blocks() != module_order
    assert [b.film_slot for b in heads.film_blocks()] == list(range(len(module_order)))
    heads.grouped_ops = False
    assert [b.film_slot for b in module_order] == list(range(len(module_order)))
