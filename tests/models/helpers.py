"""Helpers shared by the model tests."""
import copy

import torch
from torch import nn


def randomize_bn(module: nn.Module, seed: int = 0, affine: bool = True) -> None:
    """Non-trivial BatchNorm running statistics (and affine parameters), so eval-mode BN is exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            dt = m.running_mean.dtype
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=dt) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=dt) + 0.5)
            if affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g, dtype=dt) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=g, dtype=dt) * 0.1)


def close(a, b, what="", rtol=1e-5, atol_floor=0.0):
    """assert_close with an absolute tolerance relative to the reference's largest value."""
    atol = max(rtol * b.abs().max().item(), atol_floor)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def pascal_targets(b, h, w):
    """Random PASCAL-Context ground truths (semseg, parts, sal, edge labels; unit normals), seeded."""
    g = torch.Generator().manual_seed(0)
    t = {k: torch.randint(0, n, (b, 1, h, w), generator=g).float() for k, n in
         (("semseg", 21), ("human_parts", 7), ("sal", 2), ("edge", 2))}
    t["normals"] = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    return t


def fast_and_reference(model: nn.Module, train: bool) -> tuple:
    """(model, an identical copy on the reference path), both in train or eval mode."""
    ref = copy.deepcopy(model)
    ref.heads.set_fast_path(False)
    return model.train(train), ref.train(train)
