"""Decoder blocks (docs/method.md#time-conditioned-blocks) and the cross-task gating FPN (docs/method.md#decoder-core) against plain re-computations."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.decoder import CondConv, CondConvMLP, ConvMLP, CrossTaskFPN, NoisyInputFusion, task_feat_block
from tests.models.helpers import randomize_bn


C, T_DIM = 8, 8


def test_film_blocks_compute_the_spec_formula():
    torch.manual_seed(0)
    blk = CondConvMLP(C, C, C, T_DIM).eval()
    randomize_bn(blk, affine=False)
    x, temb = torch.randn(2, C, 5, 6), torch.randn(2, T_DIM)
    scale, shift = blk.time_mlp[1](F.silu(temb)).chunk(2, dim=1)
    y = blk.norm(blk.conv_1(x)) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    torch.testing.assert_close(blk(x, temb), blk.conv_2(F.gelu(y)))
    res = CondConvMLP(C, C, C, T_DIM, residual=True).eval()
    res.load_state_dict(blk.state_dict())
    torch.testing.assert_close(res(x, temb), x + blk(x, temb))
    cc = CondConv(C, 3, T_DIM, 3).eval()
    s2, b2 = cc.time_mlp[1](F.silu(temb)).chunk(2, dim=1)
    torch.testing.assert_close(cc(x, temb), cc.norm(cc.conv_1(x)) * (1 + s2[:, :, None, None]) + b2[:, :, None, None])


def test_block_names_and_shapes_follow_the_original():
    mask = CondConvMLP(4 * C, C, 4, T_DIM, k1=1, k2=3)  # Mask_withtime
    shapes = {k: tuple(v.shape) for k, v in mask.state_dict().items()}
    assert shapes["conv_1.weight"] == (C, 4 * C, 1, 1) and shapes["conv_2.weight"] == (4, C, 3, 3)
    assert shapes["time_mlp.1.weight"] == (2 * C, T_DIM)
    assert list(ConvMLP(4 * C, C).state_dict())[:6] == [
        "conv_1.weight", "conv_1.bias", "conv_2.weight", "conv_2.bias", "conv_3.weight", "conv_3.bias"]
    feat = task_feat_block(C)
    assert sorted({k.split(".")[0] for k in feat.state_dict()}) == ["0", "1", "3", "4", "5", "7"]
    assert isinstance(feat[2], nn.GELU) and isinstance(feat[6], nn.GELU)
    assert isinstance(feat[3], nn.Conv2d) and isinstance(feat[4], nn.Conv2d)  # no activation in between


def test_conv_mlp_is_residual_sum():
    torch.manual_seed(1)
    m = ConvMLP(6, C).eval()
    x = torch.randn(1, 6, 4, 4)
    torch.testing.assert_close(m(x), m.conv_2(F.gelu(m.norm(m.conv_1(x)))) + m.conv_3(x))


def test_noisy_input_fusion_puts_features_first():
    torch.manual_seed(2)
    fuse = NoisyInputFusion(C, 5, num_levels=4)
    levels = [torch.randn(2, C, 3, 3) for _ in range(4)]
    z = torch.randn(2, 5, 3, 3)
    out = fuse(levels, z)
    assert len(out) == 4
    for l, conv in enumerate(fuse.conv_transforms):
        w = conv.weight[:, :, 0, 0]
        ref = torch.einsum("oc,bchw->bohw", w[:, :C], levels[l]) + torch.einsum("oc,bchw->bohw", w[:, C:], z)
        torch.testing.assert_close(out[l], ref + conv.bias[None, :, None, None], rtol=1e-5, atol=1e-5)


def _naive_fpn(fpn: CrossTaskFPN, fused, temb, clean):
    """Spec docs/method.md#decoder-core steps 2-4 written as plain loops."""
    tasks, n = fpn.tasks, len(fpn.tasks)
    v = {t: [] for t in tasks}
    for l in range(fpn.num_levels):
        s = fpn.share_fpn.fpn_conv[l][1](fpn.share_fpn.fpn_conv[l][0](fused[l], temb), temb)
        g = fpn.mask_task[l](s, temb)
        for i, ti in enumerate(tasks):
            u = sum(torch.sigmoid(g[:, i * n + j:i * n + j + 1]) * clean[l][tj] for j, tj in enumerate(tasks))
            v[ti].append(fpn.specific_head[l][ti](u, temb))
    out = {}
    for t in tasks:
        pi = torch.softmax(fpn.fpn_mask[t](torch.cat(v[t], dim=1), temb), dim=1)
        out[t] = sum(pi[:, l:l + 1] * v[t][l] for l in range(fpn.num_levels))
    return out


def test_cross_task_gating_matches_plain_loops():
    torch.manual_seed(3)
    tasks = ["a", "b", "c"]
    fpn = CrossTaskFPN(tasks, C, T_DIM, 4, lambda l: nn.ModuleDict({t: task_feat_block(C) for t in tasks})).eval()
    randomize_bn(fpn, affine=False)
    fused = [torch.randn(2, C, 4, 5) for _ in range(4)]
    clean = [{t: torch.randn(2, C, 4, 5) for t in tasks} for _ in range(4)]
    temb = torch.randn(2, T_DIM)
    out, ref = fpn(fused, temb, clean), _naive_fpn(fpn, fused, temb, clean)
    for t in tasks:
        torch.testing.assert_close(out[t], ref[t], rtol=1e-5, atol=1e-5)
    assert tuple(fpn.mask_task[0].conv_1.weight.shape) == (9, C, 3, 3)
    # the clean task features carry the content: scaling them scales the gated sums before the heads
    assert not torch.allclose(fpn(fused, temb, [{t: 2 * x for t, x in c.items()} for c in clean])["a"], out["a"])
