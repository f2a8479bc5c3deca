"""ViT backbone (docs/method.md#backbone): timm modules and names, taps, any-size input, pretrained loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from easydict import EasyDict

from models import backbone as bb
from models.backbone import ViTMultiLevel, build_backbone, load_pretrained, resize_pos_grid



D, DEPTH, HEADS, C = 32, 4, 2, 8


def tiny(img=(64, 64), drop_path=0.0) -> ViTMultiLevel:
    torch.manual_seed(0)
    return ViTMultiLevel(img, D, DEPTH, HEADS, (1, 2, 3), C, drop_path_rate=drop_path).eval()


def reference_forward(m: ViTMultiLevel, x: torch.Tensor) -> torch.Tensor:
    """Spec docs/method.md#multi-level-features written out: taps after blocks 1..3 (un-normalised), final norm, 1×1 convs."""
    b, _, hh, ww = x.shape
    h, w = hh // 16, ww // 16
    tok = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
    pos = m.pos_embed[:, 1:]
    if (h, w) != m.grid_size:
        grid = pos.reshape(1, *m.grid_size, D).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
        pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, D)
    tok = tok + pos
    outs = []
    for i, blk in enumerate(m.blocks):
        tok = blk(tok)
        if i + 1 in m.taps:
            outs.append(tok)
    outs.append(m.norm(tok))
    maps = [conv(o.transpose(1, 2).reshape(b, D, h, w)) for conv, o in zip(m.fea_fuse, outs)]
    return torch.cat(maps, 1)


def test_timm_modules_names_and_fused_attention():
    from timm.models.vision_transformer import Block
    m = tiny()
    assert all(isinstance(b, Block) for b in m.blocks) and all(b.attn.fused_attn for b in m.blocks)
    keys = set(m.state_dict())
    for k in ("pos_embed", "patch_embed.proj.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight",
              "blocks.0.attn.proj.bias", "blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias", "norm.weight",
              "fea_fuse.3.weight"):
        assert k in keys
    assert not any("cls_token" in k or k.startswith("head") for k in keys)
    assert m.pos_embed.shape == (1, 1 + 16, D)  # slot 0: unused class position


def test_output_is_level_major_taps_plus_final_norm():
    m = tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (2, 4 * C, 4, 4)
        torch.testing.assert_close(out, reference_forward(m, x), rtol=1e-5, atol=1e-5)
        m.pos_embed[:, 0] += 5.0  # the class slot is never used
        torch.testing.assert_close(m(x), out)


@pytest.mark.parametrize("size", [(64, 96), (48, 80), (96, 64)])
def test_any_input_size_divisible_by_16(size):
    m = tiny()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (1, 4 * C, size[0] // 16, size[1] // 16)
        torch.testing.assert_close(out, reference_forward(m, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        m(torch.randn(1, 3, 64, 72))


def test_init_and_drop_path():
    m = ViTMultiLevel((64, 64), D, DEPTH, HEADS, (1, 2, 3), C, drop_path_rate=0.15)
    assert all(b.attn.qkv.bias.abs().sum() == 0 and b.mlp.fc2.bias.abs().sum() == 0 for b in m.blocks)
    assert all(torch.equal(b.norm1.weight, torch.ones(D)) for b in m.blocks)
    # trunc-normal(std 0.02) with timm's absolute cut at ±2, i.e. practically a plain N(0, 0.02²)
    assert 0.017 < m.blocks[0].mlp.fc1.weight.std().item() < 0.023
    assert 0.017 < m.pos_embed.std().item() < 0.023
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in m.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.10, 0.15])
    m.set_drop_path(0.0)
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in m.blocks)


def test_resize_pos_grid_is_bicubic_without_antialias():
    pos = torch.randn(1, 24 * 24, D)
    out = resize_pos_grid(pos, (24, 24), (4, 5))
    ref = F.interpolate(pos.reshape(1, 24, 24, D).permute(0, 3, 1, 2), size=(4, 5), mode="bicubic",
                        align_corners=False, antialias=False).permute(0, 2, 3, 1).reshape(1, 20, D)
    assert torch.equal(out, ref)
    assert resize_pos_grid(pos, (24, 24), (24, 24)) is pos


def test_build_from_config_variants():
    cfg = EasyDict(backbone="TaskDiffusion_vitT", backbone_kwargs={"embed_dim": D, "depth": 2, "num_heads": 2,
                   "taps": [1, 2]}, final_embed_dim=C, TRAIN={"SCALE": [32, 48]}, drop_path_rate=0.1)
    m = build_backbone(cfg)
    assert m.grid_size == (2, 3) and m.num_levels == 3 and len(m.blocks) == 2
    with pytest.raises(ValueError, match="backbone_kwargs"):
        build_backbone(EasyDict(cfg, backbone_kwargs={}))
    spec = bb.backbone_spec(EasyDict(backbone="TaskDiffusion_vitB"))
    assert (spec["embed_dim"], spec["depth"], spec["num_heads"], tuple(spec["taps"])) == (768, 12, 12, (3, 6, 9))
    spec = bb.backbone_spec(EasyDict(backbone="TaskDiffusion_vitL"))
    assert (spec["embed_dim"], spec["depth"], spec["num_heads"], tuple(spec["taps"])) == (1024, 24, 16, (6, 12, 18))
    with pytest.raises(ValueError, match="unknown backbone"):
        bb.backbone_spec(EasyDict(backbone="vit_huge"))


# ------------------------------------------------------------------------------ pretrained weights

def _timm_reference():
    """A timm VisionTransformer with the tiny sizes at the pretrained 384 resolution (24×24 grid)."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(1)
    ref = VisionTransformer(img_size=384, patch_size=16, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                            num_classes=10, qkv_bias=True)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # no zero biases: every copy is visible
    return ref


def _check_loaded(m: ViTMultiLevel, ref) -> None:
    sd = ref.state_dict()
    for k, v in m.state_dict().items():
        if k.startswith("fea_fuse."):
            continue
        if k == "pos_embed":
            torch.testing.assert_close(v[:, :1], sd["pos_embed"][:, :1])
            torch.testing.assert_close(v[:, 1:], resize_pos_grid(sd["pos_embed"][:, 1:], (24, 24), m.grid_size))
        else:
            torch.testing.assert_close(v, sd[k], msg=k)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_load_timm_state_dict_files(tmp_path, fmt):
    ref = _timm_reference()
    path = tmp_path / f"vit.{fmt}"
    if fmt == "pth":
        torch.save(ref.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    m = tiny((64, 80))
    fuse_before = m.fea_fuse[0].weight.clone()
    info = load_pretrained(m, str(path), {"name": "tiny", "timm_name": None})
    _check_loaded(m, ref)
    assert torch.equal(m.fea_fuse[0].weight, fuse_before)
    assert all(k.startswith("fea_fuse.") for k in info["missing"])


def test_load_jax_npz_with_timm_loader(tmp_path):
    """Write the reference weights in the JAX .npz layout; loading them must give them back."""
    ref = _timm_reference()
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    hd = D // HEADS
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(DEPTH):
        p, q = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = p + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = np.split(sd[q + "attn.qkv.weight"], 3), np.split(sd[q + "attn.qkv.bias"], 3)
        for j, n in enumerate(("query", "key", "value")):
            w[att + n + "/kernel"] = qkv_w[j].T.reshape(D, HEADS, hd)
            w[att + n + "/bias"] = qkv_b[j].reshape(HEADS, hd)
        w[att + "out/kernel"] = sd[q + "attn.proj.weight"].T.reshape(HEADS, hd, D)
        w[att + "out/bias"] = sd[q + "attn.proj.bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[p + ln + "/scale"], w[p + ln + "/bias"] = sd[q + name + ".weight"], sd[q + name + ".bias"]
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[q + f"mlp.fc{r + 1}.weight"].T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[q + f"mlp.fc{r + 1}.bias"]
    path = tmp_path / "vit.npz"
    np.savez(path, **w)
    m = tiny((64, 64))
    load_pretrained(m, str(path), {"name": "tiny", "timm_name": None})
    _check_loaded(m, ref)


def test_missing_or_wrong_weights_give_clear_errors(tmp_path, monkeypatch):
    cfg = EasyDict(backbone="TaskDiffusion_vitL", final_embed_dim=C, TRAIN={"SCALE": [64, 64]},
                   backbone_weights=str(tmp_path / "nope.safetensors"))
    spec = bb.backbone_spec(cfg)
    m = tiny()
    with pytest.raises(FileNotFoundError, match="vit_large_patch16_384.augreg_in21k_ft_in1k"):
        load_pretrained(m, cfg.backbone_weights, spec)

    def offline(*a, **k):
        raise OSError("offline and not in the cache")
    import timm
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="vit_large_patch16_384.augreg_in21k_ft_in1k"):
        load_pretrained(m, "timm", spec)
    # a state dict of another width is refused with the mismatching names
    other = ViTMultiLevel((64, 64), 16, DEPTH, HEADS, (1, 2, 3), C)
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_pretrained(m, str(path), spec)
