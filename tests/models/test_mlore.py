"""Unit tests of the MLoRE building blocks (docs/method.md#mlore-variant): shapes, names, routing, init, gradients."""
import json

import pytest
import torch

from models.mlore import (FpnAux, LoRA, MOEBlock, MoEStack, RouterNoise, SpatialAtt,
                          canonical_noise_order, keep_topk, noise_key)

TASKS = ["semseg", "sal", "edge"]
C = 16  # tiny width: C/4 = 4, router feature 8
RANKS = list(range(1, 16))


def _block(**kw):
    torch.manual_seed(0)
    args = dict(tasks=TASKS, channels=C, spatial_size=9, rank_list=RANKS, topk=3)
    args.update(kw)
    return MOEBlock(**args)


def test_lora_names_and_shape():
    m = LoRA(8, 6, 3, 2)
    assert sorted(k for k, _ in m.named_parameters()) == ["M.bias", "M.weight", "W.bias", "W.weight"]
    assert m.W.weight.shape == (2, 8, 3, 3) and m.M.weight.shape == (6, 2, 1, 1)
    assert m(torch.randn(2, 8, 5, 7)).shape == (2, 6, 5, 7)


def test_spatial_att_shape_and_fixed_size_error():
    att = SpatialAtt(C, C // 4, spatial_size=12)
    assert att(torch.randn(2, C, 3, 4)).shape == (2, 2 * (C // 4), 1, 1)
    with pytest.raises(ValueError, match="spatial_size = 12"):
        att(torch.randn(2, C, 4, 4))


def test_spatial_att_resize_option():
    att = SpatialAtt(C, C // 4, spatial_size=12, resize_to=(3, 4))
    y = torch.randn(2, C, 3, 4)
    assert torch.equal(att(y), SpatialAtt.forward(att, y))  # configured size: no resize
    assert att(torch.randn(2, C, 6, 8)).shape == (2, 8, 1, 1)
    assert att(torch.randn(2, C, 2, 2)).shape == (2, 8, 1, 1)


def test_moe_block_state_dict_names():
    blk = _block()
    names = set(blk.state_dict())
    for t in TASKS:
        for k in (f"conv1.{t}.weight", f"conv3.{t}.bias", f"conv2.{t}.W.weight", f"conv2.{t}.M.bias",
                  f"bn.{t}.running_var", f"bn_all.{t}.num_batches_tracked",
                  f"router_1.{t}.0.conv1.weight", f"router_1.{t}.0.ln.weight", f"router_1.{t}.0.conv3.bias",
                  f"router_1.{t}.0.convsp.weight", f"router_1.{t}.0.ln_sp.bias", f"router_1.{t}.0.conv2.weight",
                  f"router_1.{t}.1.weight"):
            assert k in names, k
    assert blk.router_1["sal"][1].weight.shape == (31, 8, 1, 1)
    assert blk.router_1["sal"][0].convsp.weight.shape == (1, 9)
    assert blk.conv2["edge"].W.weight.shape == (72, C, 3, 3)
    assert blk.lora_list_1[14].W.weight.shape == (15, C, 3, 3)
    assert "share_conv.weight" in names and "lora_list_1.14.M.bias" in names


def test_moe_block_matches_official_key_shapes(shared_dir):
    """Every key of one official MoE block (PASCAL ViT-L MLoRE, C=452) with its shape."""
    path = shared_dir / "reference" / "official_state_dict_pascal_vitLp16_MLoRE.json"
    if not path.exists():
        pytest.skip(f"{path} not present (only in the project's CI checkout)")
    ref = json.load(open(path))
    prefix = "heads.fpn_encoder.feat_task.2.1."
    want = {e["key"][len(prefix):]: tuple(e["shape"]) for e in ref["state_dict"] if e["key"].startswith(prefix)}
    ranks = list(range(16, 129, 8))
    with torch.device("meta"):
        blk = MOEBlock(ref["tasks"], 452, 1024, ranks, 3)
    got = {k: tuple(v.shape) for k, v in blk.state_dict().items()}
    assert got == want


def test_expert_init_rules():
    blk = _block()
    for lora in blk.lora_list_1:
        assert torch.count_nonzero(lora.W.bias) == 0 and torch.count_nonzero(lora.M.bias) == 0
        bound = 1 / lora.W.weight[0].numel() ** 0.5  # kaiming-uniform(a=√5) bound = 1/sqrt(fan_in)
        assert lora.W.weight.abs().max() <= bound and lora.W.weight.abs().max() > 0.5 * bound
    # the per-task low-rank branch keeps PyTorch defaults (non-zero fan-in biases)
    assert torch.count_nonzero(blk.conv2["semseg"].W.bias) > 0


def test_keep_topk_no_renormalisation():
    p = torch.softmax(torch.randn(4, 15, 1, 1, 1), dim=1)
    q = keep_topk(p, 3)
    assert ((q != 0).sum(dim=1) == 3).all()
    top = p.flatten(1).topk(3).values
    assert torch.allclose(q.flatten(1).sort(descending=True).values[:, :3], top)
    assert (q.flatten(1).sum(1) < 1 - 1e-3).all()  # not renormalised


def test_moe_block_forward_shapes_and_topk():
    blk = _block().eval()
    x = torch.randn(2, C, 3, 3)
    out, feat, p = blk(x, "sal")
    assert out.shape == (2, C, 3, 3) and feat.shape == (2, 8, 1, 1) and p.shape == (2, 15, 1, 1, 1)
    assert ((p.flatten(1) > 0).sum(1) == 3).all()
    # the kept values are softmax probabilities of the router logits
    q = blk.router_1["sal"][1](blk.router_1["sal"][0](blk.conv1["sal"](x)))
    ref = keep_topk(torch.softmax(q[:, :15], dim=1), 3)
    torch.testing.assert_close(p.flatten(1), ref.flatten(1))


def test_eval_mode_has_no_router_noise():
    blk = _block().eval()
    x = torch.randn(2, C, 3, 3)
    state = torch.get_rng_state()
    a = blk(x, "edge")
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    b = blk(x, "edge", noise=torch.randn(2, 15, 1, 1, 1) * 100)  # ignored in eval
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_train_mode_noise_is_scaled_by_router_std():
    blk = _block().train()
    x = torch.randn(2, C, 3, 3)
    noise = torch.randn(2, 15, 1, 1, 1)
    _, _, p = blk(x, "semseg", noise=noise)
    with torch.no_grad():
        q = blk.router_1["semseg"][1](blk.router_1["semseg"][0](blk.conv1["semseg"](x))).flatten(1)
    ref = keep_topk(torch.softmax(q[:, :15] + noise.flatten(1) * q[:, 15:30], dim=1), 3)
    torch.testing.assert_close(p.flatten(1), ref)
    # without injected noise the global RNG is used: same seed, same draw
    torch.manual_seed(5)
    _, _, p1 = blk(x, "semseg")
    torch.manual_seed(5)
    _, _, p2 = blk(x, "semseg", noise=torch.randn(2, 15, 1, 1, 1))
    assert torch.equal(p1, p2)


def test_fused_experts_equal_loop():
    blk = _block().double().eval()
    x = torch.randn(2, C, 3, 3, dtype=torch.float64)
    p = keep_topk(torch.softmax(torch.randn(2, 15, 1, 1, 1, dtype=torch.float64), 1), 3)
    y = blk.conv1["sal"](x)
    fused = blk.mix_experts(y, p)
    blk.fused_experts = False
    loop = blk.mix_experts(y, p)
    torch.testing.assert_close(fused, loop, rtol=1e-12, atol=1e-12)


def test_share_conv_input_is_detached_and_grads_flow():
    blk = _block().train()
    seen = {}

    def hook(module, inputs, output):
        seen["rg"] = inputs[0].requires_grad  # returns None: output unchanged

    blk.share_conv.register_forward_hook(hook)
    x = torch.randn(2, C, 3, 3, requires_grad=True)
    out, _, p = blk(x, "sal", noise=torch.zeros(2, 15, 1, 1, 1))
    assert seen["rg"] is False
    (out.square().mean() + p.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert blk.share_conv.weight.grad.abs().sum() > 0
    chosen = p.flatten(1)[0].nonzero().flatten().tolist()
    assert blk.lora_list_1[chosen[0]].W.weight.grad.abs().sum() > 0
    assert blk.router_1["sal"][0].convsp.weight.grad.abs().sum() > 0
    assert blk.conv1["semseg"].weight.grad is None  # other tasks untouched


def test_moe_stack_noise_keys_and_order():
    torch.manual_seed(0)
    stack = MoEStack(TASKS, C, 9, RANKS, 3).train()
    keys = []

    def fn(key, shape, device, dtype):
        keys.append(key)
        return torch.zeros(shape, dtype=dtype)

    x = torch.randn(2, C, 3, 3)
    out, probs = stack(x, "edge", level=2, noise_fn=fn)
    assert keys == ["level2/edge/block0", "level2/edge/block1"]
    assert out.shape == x.shape and len(probs) == 2
    names = [k for k, _ in stack.named_parameters()]
    assert names[0].startswith("0.lora_list_1.0") and any(n.startswith("1.router_1.edge") for n in names)


def test_router_noise_sources():
    order = canonical_noise_order(2, ["a", "b"])
    assert order == ["level0/a/block0", "level0/a/block1", "level0/b/block0", "level0/b/block1",
                     "level1/a/block0", "level1/a/block1", "level1/b/block0", "level1/b/block1"]
    tensors = [torch.full((1, 15, 1, 1, 1), float(i)) for i in range(8)]
    rn = RouterNoise(tensors, order=order)
    assert rn(noise_key(1, "a", 1), (1, 15, 1, 1, 1), "cpu", torch.float32)[0, 0].item() == 5.0
    with pytest.raises(KeyError):
        rn("level9/a/block0", (1, 15, 1, 1, 1), "cpu", torch.float32)
    with pytest.raises(ValueError, match="shape"):
        rn(order[0], (2, 15, 1, 1, 1), "cpu", torch.float32)
    with pytest.raises(ValueError, match="order"):
        RouterNoise(tensors)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = RouterNoise(generator=g1)("k", (2, 15, 1, 1, 1), "cpu", torch.float32)
    assert torch.equal(a, torch.randn((2, 15, 1, 1, 1), generator=g2))


def test_fpn_aux_mixes_levels():
    torch.manual_seed(0)
    aux = FpnAux(C, 4).eval()
    level = torch.randn(2, C, 5, 6)
    y = level.repeat(1, 4, 1, 1)  # four identical levels: any convex mix returns the level
    torch.testing.assert_close(aux(y), level)
    assert aux(torch.randn(2, 4 * C, 5, 6)).shape == (2, C, 5, 6)
    assert [k for k in aux.state_dict() if k.endswith("weight")] == [
        "task_mask.0.weight", "task_mask.1.weight", "task_mask.3.weight"]


# --------------------------------------------------------------------------------------------------
# The whole MLoRE model on a tiny config
# --------------------------------------------------------------------------------------------------

def _tiny_cfg(**kw):
    from easydict import EasyDict

    cfg = EasyDict(model="TaskDiffusion_mlore", backbone="TaskDiffusion_vitT",
                   backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2, taps=[1, 2, 3]),
                   backbone_weights=None, drop_path_rate=0.1, final_embed_dim=16, timesteps=2, randsteps=1,
                   bit_scales={"all": 0.01}, module_layer=2, with_aux=True, rank_list=RANKS, topk=3,
                   spatial_size=None, db_name="PASCALContext",
                   TASKS=dict(NAMES=["semseg", "sal", "normals"]), TRAIN=dict(SCALE=[32, 48]), ignore_index=255)
    cfg.update(kw)
    return cfg


def _targets(b, h, w):
    g = torch.Generator().manual_seed(0)
    semseg = torch.randint(0, 21, (b, 1, h, w), generator=g).float()
    semseg[:, :, :4] = 255
    normals = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    normals[:, :, :, :6] = 255
    return {"semseg": semseg, "sal": torch.randint(0, 2, (b, 1, h, w), generator=g).float(), "normals": normals}


def test_mlore_model_training_forward_backward():
    from models import build_model
    from models.mlore import MLoREHead

    torch.manual_seed(0)
    model = build_model(_tiny_cfg()).train()
    assert isinstance(model.heads, MLoREHead)
    assert "heads.fpn_encoder.feat_task.3.1.router_1.normals.0.convsp.weight" in model.state_dict()
    assert "heads.aux_heads.sal.0.task_mask.3.weight" in model.state_dict()
    x = torch.randn(2, 3, 32, 48)
    out = model(x, _targets(2, 32, 48))
    assert set(out) == {"pred", "aux", "route"}
    assert out["pred"]["semseg"].shape == (2, 21, 32, 48) and out["aux"]["normals"].shape == (2, 3, 32, 48)
    routes = out["route"]
    assert set(routes) == {"route_1_prob", "route_2_prob"}
    for name in routes:
        assert len(routes[name]) == 4
        for level in routes[name]:
            assert list(level) == ["semseg", "sal", "normals"]
            for p in level.values():
                assert p.shape == (2, 15, 1, 1, 1) and ((p.flatten(1) > 0).sum(1) == 3).all()
    loss = sum(v.float().mean() for v in out["pred"].values()) + sum(v.mean() for v in out["aux"].values())
    loss = loss + sum(p.std() for lv in routes["route_1_prob"] for p in lv.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, bad
    assert model.heads.fpn_encoder.feat_task[0][0].router_1["sal"][0].convsp.weight.grad.abs().sum() > 0


def test_mlore_model_inference_and_fixed_size():
    from models import build_model

    torch.manual_seed(0)
    model = build_model(_tiny_cfg()).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 48), generator=torch.Generator().manual_seed(1))
        assert set(out) == {"pred"} and out["pred"]["sal"].shape == (1, 2, 32, 48)
        with pytest.raises(ValueError, match="spatial_size = 6"):
            model(torch.randn(1, 3, 48, 48))
    # opt-in: the router input is resized to the configured 2x3 grid, the rest runs at 3x3
    torch.manual_seed(0)
    resized = build_model(_tiny_cfg(mlore_router_resize=True)).eval()
    resized.load_state_dict(model.state_dict())
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1, 3, 32, 48)
        a = model(x, generator=torch.Generator().manual_seed(1))["pred"]["semseg"]
        b = resized(x, generator=torch.Generator().manual_seed(1))["pred"]["semseg"]
        assert torch.equal(a, b)  # no effect at the configured size
        assert resized(torch.randn(1, 3, 48, 48), generator=g)["pred"]["semseg"].shape == (1, 21, 48, 48)


def test_mlore_config_errors():
    from models.mlore import build_mlore_model

    with pytest.raises(ValueError, match="spatial_size 5 must equal the token count"):
        build_mlore_model(_tiny_cfg(spatial_size=5))
    with pytest.raises(ValueError, match="rank_list"):
        build_mlore_model(_tiny_cfg(rank_list=None))
