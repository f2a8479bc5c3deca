"""Generic timm backbone (models/timm_backbone.py): declared levels, decoder-grid output at odd sizes,
gradients, local weights in timm's formats (checked against timm's own loader), one-line errors.

Every model is a tiny random-init instance of the real timm architecture (Swin, ConvNeXt, DINOv2 ViT/14,
EVA-02), so the tests run on CPU in seconds and never touch the network.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from models.backbones import Level, backbone_interface, decoder_grid
from models.timm_backbone import TimmMultiLevel, load_timm_weights

C = 8
SWIN = dict(timm_name="swin_tiny_patch4_window7_224", out_indices=[0, 1, 2, 3], img_size=(64, 96),
            model_kwargs=dict(embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 1, 2, 2), window_size=(4, 6)))
CONVNEXT = dict(timm_name="convnext_atto", out_indices=[0, 1, 2, 3], img_size=(64, 96),
                model_kwargs=dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)))
DINOV2 = dict(timm_name="vit_small_patch14_dinov2", out_indices=[0, 1, 2, 3], img_size=(56, 84), decoder_stride=14,
              model_kwargs=dict(embed_dim=32, depth=4, num_heads=2))
# timm's own width-sized source model for each family (what a weight file holds)
SOURCE = {"swin": dict(embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 1, 2, 2)),
          "convnext": CONVNEXT["model_kwargs"], "dinov2": DINOV2["model_kwargs"]}
FAMILIES = {"swin": SWIN, "convnext": CONVNEXT, "dinov2": DINOV2}
LEVELS = {"swin": [(16, 4), (32, 8), (64, 16), (128, 32)], "convnext": [(8, 4), (16, 8), (32, 16), (64, 32)],
          "dinov2": [(32, 14)] * 4}
MULTIPLE = {"swin": 32, "convnext": 32, "dinov2": 14}


def build(family: str, **over) -> TimmMultiLevel:
    torch.manual_seed(0)
    kw = dict(FAMILIES[family], **over)
    return TimmMultiLevel(out_dim=C, **kw).eval()


def image(h: int, w: int, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def save_source(family: str, tmp_path, fmt: str) -> str:
    """A timm model of the family at timm's default input size, saved as timm users save it."""
    import timm
    torch.manual_seed(123)
    src = timm.create_model(FAMILIES[family]["timm_name"], pretrained=False, **SOURCE[family])
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file
        path = tmp_path / f"{family}.safetensors"
        save_file(sd, str(path))
    else:  # a training checkpoint: wrapped and DDP-prefixed
        path = tmp_path / f"{family}.pth"
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, str(path))
    return str(path)


# ------------------------------------------------------------------------------------- interface
@pytest.mark.parametrize("family", FAMILIES)
def test_declared_levels_and_decoder_grid_output(family):
    m = build(family)
    spec = backbone_interface(m)
    assert [tuple(lv) for lv in spec.levels] == LEVELS[family] and all(isinstance(lv, Level) for lv in m.levels)
    assert spec.num_levels == m.num_levels == 4 and spec.out_dim == C
    assert spec.input_multiple == m.input_multiple == MULTIPLE[family]
    s = m.decoder_stride
    h, w = FAMILIES[family]["img_size"]
    assert h != w  # odd, non-square, not the timm default
    with torch.no_grad():
        y = m(image(h, w))
        assert y.shape == (2, 4 * C, h // s, w // s) and torch.isfinite(y).all()
        assert decoder_grid(m, (h, w)) == (h // s, w // s)
        # another valid size runs too (dynamic position grid / Swin masks)
        h2, w2 = h + 2 * MULTIPLE[family], w - MULTIPLE[family]
        assert m(image(h2, w2, b=1)).shape == (1, 4 * C, h2 // s, w2 // s)


def test_vit14_on_stride16_decoder_needs_lcm_and_resamples():
    m = build("dinov2", decoder_stride=16, img_size=(112, 224), out_indices=[1, 3])
    assert m.input_multiple == 112 and m.levels == (Level(32, 14), Level(32, 14))
    with torch.no_grad():
        assert m(image(112, 224)).shape == (2, 2 * C, 7, 14)
    with pytest.raises(ValueError, match="multiple of 112"):
        build("dinov2", decoder_stride=16, img_size=(56, 84))


def test_eva_with_rope_runs_at_odd_size():
    m = TimmMultiLevel("eva02_tiny_patch14_224", [1, 3], C, (42, 70), decoder_stride=14,
                       model_kwargs=dict(embed_dim=32, depth=4, num_heads=2))
    with torch.no_grad():
        assert m(image(42, 70)).shape == (2, 2 * C, 3, 5)


@pytest.mark.parametrize("resample", ["area", "bilinear"])
def test_output_is_projected_levels_on_the_decoder_grid(resample):
    """Level-major concat of fea_fuse.{l}(level l) resampled to H/s: area (or bilinear) to shrink the
    stride-4/8 stages, bilinear to enlarge the stride-32 stage, written out in the other order."""
    m = build("swin", resample=resample)
    x = image(64, 96)
    with torch.no_grad():
        y = m(x)
        feats = m.features(x)
        size = (4, 6)
        ref = []
        for conv, f in zip(m.fea_fuse, feats):
            p = conv(f)
            if p.shape[-1] > size[1] and resample == "area":
                p = F.avg_pool2d(p, p.shape[-1] // size[1])
            elif p.shape[-2:] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            ref.append(p)
    torch.testing.assert_close(y, torch.cat(ref, 1), rtol=1e-5, atol=1e-5)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_parameter(family):
    m = build(family).train()
    h, w = FAMILIES[family]["img_size"]
    m(image(h, w)).square().mean().backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a gradient (DDP would fail): {no_grad[:5]}"


def test_input_size_errors_are_one_line():
    m = build("convnext")
    with pytest.raises(ValueError) as err:
        m(image(64, 80))
    msg = str(err.value)
    assert "\n" not in msg and "convnext_atto" in msg and "multiple of 32" in msg and "64x96" in msg
    with pytest.raises(ValueError, match="configured image size 60x96 is not a multiple of 32"):
        build("convnext", img_size=(60, 96))
    with pytest.raises(ValueError, match="unknown to timm"):
        TimmMultiLevel("no_such_model_xyz", [0], C, (64, 64))
    with pytest.raises(ValueError, match="out of range"):
        build("convnext", out_indices=[0, 7])
    with pytest.raises(ValueError, match="resample"):
        build("convnext", resample="nearest")


def test_swin_warns_when_windows_need_padding():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build("swin", model_kwargs=dict(SWIN["model_kwargs"], window_size=7))
    msgs = [str(w.message) for w in caught if "window" in str(w.message)]
    assert len(msgs) == 1 and "\n" not in msgs[0] and "16x24 grid" in msgs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("swin")  # (4, 6) windows divide every stage grid of 64 x 96


def test_meta_device_build_for_benchmarks():
    with torch.device("meta"):
        m = TimmMultiLevel(out_dim=C, **SWIN)
    assert all(p.is_meta for p in m.parameters())
    assert m(torch.empty(1, 3, 64, 96, device="meta")).shape == (1, 4 * C, 4, 6)


# ------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("family", FAMILIES)
def test_local_weights_match_timms_own_loader(family, tmp_path):
    """.safetensors and a wrapped .pth give identical outputs, and the levels equal timm's own loading
    of the same file (pretrained_cfg_overlay file=, the family's filter: position grid, window tables)."""
    import timm
    st, pth = save_source(family, tmp_path, "safetensors"), save_source(family, tmp_path, "pth")
    m = build(family)
    x = image(*FAMILIES[family]["img_size"])
    info = load_timm_weights(m, st)
    assert info["loaded"] == len([k for k in m.state_dict() if k.startswith("model.")])
    with torch.no_grad():
        y_st, f_st = m(x), m.features(x)
    fresh = build(family, pretrained_file=pth)
    fresh.fea_fuse.load_state_dict(m.fea_fuse.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), y_st)
    ref = timm.create_model(m.timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=st), num_classes=0,
                            **m.timm_kwargs).eval()
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=list(m.out_indices), norm=True, intermediates_only=True)
    for a, b in zip(f_st, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_features_only_wrapper_loads_the_same_weights(family, tmp_path):
    """timm's features_only wrappers rename keys (layers.0 -> layers_0, a nested model.); the loader maps
    timm names onto them, and both APIs give the same levels (final norm off: the wrappers skip it)."""
    st = save_source(family, tmp_path, "safetensors")
    a = build(family, api="intermediates", norm=False, pretrained_file=st)
    b = build(family, api="features_only", pretrained_file=st)
    keys = list(b.state_dict())
    if family in ("swin", "convnext"):
        assert any(k.startswith(("model.layers_0.", "model.stages_0.")) for k in keys)
    else:
        assert any(k.startswith("model.model.blocks.0.") for k in keys)
    assert a.levels == b.levels
    x = image(*FAMILIES[family]["img_size"])
    with torch.no_grad():
        for fa, fb in zip(a.features(x), b.features(x)):
            torch.testing.assert_close(fa, fb, rtol=0, atol=0)


def _one_line_error(exc_type, fn, *must):
    with pytest.raises(exc_type) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in must:
        assert part in msg, msg
    return msg


def test_wrong_or_missing_weight_files_are_one_line_errors(tmp_path):
    tag = SWIN["timm_name"]
    m = build("swin")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    missing = tmp_path / "nope.safetensors"
    _one_line_error(FileNotFoundError, lambda: load_timm_weights(m, str(missing)), str(missing), tag,
                    "backbone_weights")
    sd = torch.load(save_source("swin", tmp_path, "pth"), weights_only=True)["state_dict"]
    short = dict(sd)
    short.pop("module.patch_embed.proj.weight")
    torch.save(short, tmp_path / "short.pth")
    _one_line_error(ValueError, lambda: load_timm_weights(m, str(tmp_path / "short.pth")), "short.pth", tag,
                    "1 missing keys", "patch_embed.proj.weight")
    wrong = dict(sd)
    wrong["module.layers.1.blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    _one_line_error(ValueError, lambda: load_timm_weights(m, str(tmp_path / "wrong.pth")), "wrong.pth", tag,
                    "1 shape mismatches", "layers.1.blocks.0.mlp.fc1.weight (3, 3)")
    other = save_source("convnext", tmp_path, "safetensors")  # another family's file
    msg = _one_line_error(ValueError, lambda: load_timm_weights(m, other), "convnext.safetensors", tag)
    assert "missing keys" in msg and "unexpected keys" in msg
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    _one_line_error(ValueError, lambda: load_timm_weights(m, str(tmp_path / "garbage.pth")), "garbage.pth", tag)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # failed loads change nothing
    _one_line_error(ValueError, lambda: build("swin", pretrained_file=str(tmp_path / "short.pth")), tag)


def test_hub_cache_miss_is_one_line_error():
    from huggingface_hub import constants
    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (tests never download)")
    m = build("convnext")
    _one_line_error(RuntimeError, lambda: load_timm_weights(m, "timm", "convnext_atto.d2_in1k"),
                    "convnext_atto.d2_in1k", "hub cache")


# ------------------------------------------------------------------------------------- interface helpers
def test_interface_helpers_and_one_line_errors():
    from types import SimpleNamespace

    from models.backbones import check_input_size, lcm

    assert lcm(14, 16) == 112 and lcm(4, 8, 16, 32, 16) == 32 and lcm() == 1
    assert check_input_size((112, 224), 112) == (112, 224)
    with pytest.raises(ValueError) as err:
        check_input_size((500, 375), 16)
    assert "\n" not in str(err.value) and "use 512x384" in str(err.value)
    with pytest.raises(TypeError, match="does not declare levels, decoder_stride, input_multiple"):
        backbone_interface(torch.nn.Linear(2, 2))
    bad = SimpleNamespace(levels=[(8, 4)], decoder_stride=16, input_multiple=24, num_levels=1, out_dim=8)
    with pytest.raises(ValueError, match="multiple of the decoder stride 16"):
        backbone_interface(bad)
    ok = SimpleNamespace(levels=[(768, 16)] * 4, decoder_stride=16, input_multiple=16, num_levels=4, out_dim=376)
    spec = backbone_interface(ok)  # what the paper ViT/16 declares
    assert spec.num_levels == 4 and spec.levels[0] == Level(768, 16)
    assert decoder_grid(ok, (448, 576)) == (28, 36)


def test_build_from_config_keys(tmp_path):
    """`backbone: timm` config keys -> TimmMultiLevel; the demo config's backbone builds and runs."""
    import yaml

    from models.timm_backbone import build_timm_backbone

    demo = yaml.safe_load(open("configs/demo/synthetic_pascal_swin.yml"))
    cfg = {"backbone": "timm", "backbone_kwargs": demo["backbone_kwargs"], "final_embed_dim": C,
           "decoder_stride": demo["decoder_stride"], "drop_path_rate": 0.1, "TRAIN": {"SCALE": (64, 96)},
           "backbone_weights": None}
    m = build_timm_backbone(cfg)
    assert m.decoder_stride == 16 and m.img_size == (64, 96) and m.timm_kwargs["drop_path_rate"] == 0.1
    assert m(image(64, 96, b=1)).shape == (1, 4 * C, 4, 6)
    with pytest.raises(ValueError, match=r"unknown keys \['taps'\]; missing \['out_indices'\]"):
        build_timm_backbone(dict(cfg, backbone_kwargs={"timm_name": "convnext_atto", "taps": [1]}))
    missing = str(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="swin_tiny_patch4_window7_224"):
        build_timm_backbone(dict(cfg, backbone_weights=missing))
