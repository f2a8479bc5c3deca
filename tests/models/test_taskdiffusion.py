"""The whole TaskDiffusion model on tiny configs: API, label encoding, DDIM, randsteps, hooks, grads."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from easydict import EasyDict
from torch import nn

from models import build_model
from models.taskdiffusion import TaskDiffusionHead, build_taskdiffusion_model



TASKS = {"PASCALContext": ["semseg", "human_parts", "sal", "normals", "edge"],
         "NYUD": ["semseg", "depth", "normals", "edge"]}
C = 16  # decoder width; E = 4


def tiny_cfg(db="PASCALContext", size=(32, 48), **kw) -> EasyDict:
    cfg = EasyDict(model="TaskDiffusion", db_name=db, TASKS={"NAMES": TASKS[db]}, TRAIN={"SCALE": list(size)},
                   backbone="TaskDiffusion_vitT",
                   backbone_kwargs={"embed_dim": 32, "depth": 3, "num_heads": 2, "taps": [1, 2, 3]},
                   drop_path_rate=0.1, final_embed_dim=C, timesteps=3, randsteps=1, bit_scales={"all": 0.01},
                   module_layer=2, with_aux=True, backbone_weights=None)
    cfg.update(kw)
    return cfg


def tiny_model(db="PASCALContext", seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(db, **kw))


def fake_targets(db, b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    if db == "PASCALContext":
        out["semseg"] = torch.randint(0, 21, (b, 1, h, w), generator=g).float()
        out["human_parts"] = torch.randint(0, 7, (b, 1, h, w), generator=g).float()
        out["sal"] = torch.randint(0, 2, (b, 1, h, w), generator=g).float()
    else:
        out["semseg"] = torch.randint(0, 40, (b, 1, h, w), generator=g).float()
        out["depth"] = torch.rand(b, 1, h, w, generator=g) * 9 + 0.5
    out["normals"] = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    out["edge"] = (torch.rand(b, 1, h, w, generator=g) < 0.2).float()
    for t in out:  # an ignored border, as the loader's padding
        out[t][:, :, :8] = 255.0 if t != "depth" else 0.0
    return out


def test_sizes_are_computed_from_the_task_table():
    p = tiny_model("PASCALContext").heads
    assert p.noisy_channels == 5 * (C // 4) and p.separate_tasks == ["sal"]
    assert tuple(p.embedding_tables["semseg"].weight.shape) == (22, 4)
    assert tuple(p.embedding_tables["normals"].weight.shape) == (4, 3, 1, 1)
    assert tuple(p.embed_all.weight.shape) == (C, 4 * 4, 1, 1)
    assert set(p.invalid_embedding_tables) == {"normals", "edge"}
    n = tiny_model("NYUD").heads
    assert n.noisy_channels == C and n.separate_tasks == []
    assert tuple(n.transforms.conv_transforms[0].weight.shape) == (C, 2 * C, 1, 1)


def test_training_forward_shapes_and_intermediates():
    model = tiny_model().eval()
    x = torch.randn(2, 3, 32, 48)
    tg = fake_targets("PASCALContext", 2, 32, 48)
    out = model(x, tg, return_intermediates=True)
    assert set(out) == {"pred", "aux", "intermediates"}
    for t, k in (("semseg", 21), ("human_parts", 7), ("sal", 2), ("normals", 3), ("edge", 1)):
        assert out["pred"][t].shape == (2, k, 32, 48) and out["aux"][t].shape == (2, k, 32, 48)
    inter = out["intermediates"]
    assert inter["gt_bits"].shape == (2, 20, 2, 3) and inter["gt_bits"].abs().max() <= 0.01
    assert inter["times"].shape == (2,) and inter["noise"].shape == (2, 20, 2, 3)
    assert inter["backbone_feat"].shape == (2, 4 * C, 2, 3)


def test_label_encoding_follows_the_spec():
    """Discrete: the top-left pixel of each patch, 255 -> extra row; continuous: blend with m↓."""
    head = tiny_model("NYUD").heads
    b, hh, ww = 1, 32, 48
    tg = fake_targets("NYUD", b, hh, ww)
    tg["semseg"][0, 0, 16, 16] = 255.0  # the pixel sampled for cell (1, 1)
    embs = {}
    captured = {}
    orig = head._fuse_embeddings
    head._fuse_embeddings = lambda e: (captured.update(e), orig(e))[1]
    head.encode_labels(tg, (2, 3))
    lab = tg["semseg"][0, 0, ::16, ::16].long()
    lab[lab == 255] = 40
    embs["semseg"] = head.embedding_tables["semseg"].weight[lab].permute(2, 0, 1)[None]
    torch.testing.assert_close(captured["semseg"], embs["semseg"])
    # continuous, all valid: bilinear ×1/16 = mean of the 2×2 pixels at rows/cols 16i+7, 16i+8
    e = torch.rand(b, 1, hh, ww)
    captured.clear()
    head.encode_labels(dict(tg, edge=e), (2, 3))
    g = 0.25 * (e[:, :, 7::16, 7::16] + e[:, :, 8::16, 7::16] + e[:, :, 7::16, 8::16] + e[:, :, 8::16, 8::16])
    torch.testing.assert_close(captured["edge"], head.embedding_tables["edge"](g))
    # invalid (255) pixels at the sampling points blend in the learned invalid embedding by m↓
    inv = head.invalid_embedding_tables["edge"].weight[0]
    e2 = e.clone()
    e2[:, :, 7:9, 7:9] = 255.0  # cell (0, 0): m↓ = 1
    e2[:, :, 7, 23:25] = 255.0  # cell (0, 1): m↓ = 0.5, and the 255s enter g↓ (original quirk)
    captured.clear()
    head.encode_labels(dict(tg, edge=e2), (2, 3))
    torch.testing.assert_close(captured["edge"][0, :, 0, 0], inv)
    g01 = 0.25 * (255.0 * 2 + e[0, 0, 8, 23] + e[0, 0, 8, 24])
    conv = head.embedding_tables["edge"]
    ref01 = 0.5 * inv + 0.5 * (conv.weight[:, 0, 0, 0] * g01 + conv.bias)
    torch.testing.assert_close(captured["edge"][0, :, 0, 1], ref01)
    torch.testing.assert_close(captured["edge"][:, :, 1], conv(g)[:, :, 1])  # row 1 untouched


@pytest.mark.parametrize("fast", [True, False])
def test_ddim_shapes_at_every_step(fast):
    model = tiny_model().eval()
    model.heads.set_fast_path(fast)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 48), return_intermediates=True)
    # h×w, h×w, then 4h×4w at the last step
    assert out["intermediates"]["logits_hw"] == [(2, 3), (2, 3), (8, 12)]
    assert [tuple(z.shape) for z in out["intermediates"]["mask_t"]] == [(2, 20, 2, 3)] * 3
    assert set(out) == {"pred", "intermediates"} and out["pred"]["semseg"].shape == (2, 21, 32, 48)


def test_sampling_is_deterministic_given_noise_or_generator():
    model = tiny_model().eval()
    x = torch.randn(2, 3, 32, 48)
    noise = torch.randn(2, 20, 2, 3)
    with torch.no_grad():
        a = model(x, noise=noise)["pred"]
        b = model(x, noise=noise.clone())["pred"]
        g1 = model(x, generator=torch.Generator().manual_seed(3), return_intermediates=True)
        g2 = model(x, generator=torch.Generator().manual_seed(3), return_intermediates=True)
        g3 = model(x, generator=torch.Generator().manual_seed(4), return_intermediates=True)
    for t in a:
        assert torch.equal(a[t], b[t]) and torch.equal(g1["pred"][t], g2["pred"][t])
    ref_noise = torch.randn((2, 20, 2, 3), generator=torch.Generator().manual_seed(3))
    assert torch.equal(g1["intermediates"]["noise"], ref_noise)  # one randn of the full shape
    assert not torch.allclose(g1["intermediates"]["mask_t"][1], g3["intermediates"]["mask_t"][1])
    with pytest.raises(ValueError, match="injected noise has shape"):
        model(x, noise=torch.randn(2, 19, 2, 3))


def test_randsteps_two_averages_the_repeats():
    model2 = tiny_model(randsteps=2).eval()
    model1 = tiny_model(randsteps=1).eval()
    model1.load_state_dict(model2.state_dict())
    x = torch.randn(2, 3, 32, 48)
    n1, n2 = torch.randn(2, 20, 2, 3), torch.randn(2, 20, 2, 3)
    with torch.no_grad():
        both = model2(x, noise=torch.cat([n1, n2]))["pred"]
        one, two = model1(x, noise=n1)["pred"], model1(x, noise=n2)["pred"]
        drawn = model2(x, generator=torch.Generator().manual_seed(0), return_intermediates=True)
    for t in both:
        assert both[t].shape[0] == 2
        torch.testing.assert_close(both[t], (one[t] + two[t]) / 2, rtol=1e-5, atol=1e-5)
    assert drawn["intermediates"]["noise"].shape == (4, 20, 2, 3)


def test_any_input_size_on_a_model_built_for_another():
    model = tiny_model(size=(32, 32)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        tr = model(x, fake_targets("PASCALContext", 1, 64, 96))
    assert out["pred"]["semseg"].shape == (1, 21, 64, 96) and tr["aux"]["edge"].shape == (1, 1, 64, 96)


def test_depth_clamp_option():
    model = tiny_model("NYUD").eval()
    with torch.no_grad():
        model.heads.pred_heads["depth"].bias.fill_(-0.3)  # make negative depth logits likely
    x, noise = torch.randn(2, 3, 32, 48), torch.randn(2, C, 2, 3)
    with torch.no_grad():
        clamped = model(x, noise=noise, return_intermediates=True)
        model.heads.clamp_returned_depth = False
        raw = model(x, noise=noise, return_intermediates=True)
    assert clamped["pred"]["depth"].min() >= 0 and raw["pred"]["depth"].min() < 0
    torch.testing.assert_close(clamped["pred"]["depth"], raw["pred"]["depth"].clamp(0, 80))
    for a, b in zip(clamped["intermediates"]["mask_t"], raw["intermediates"]["mask_t"]):
        assert torch.equal(a, b)  # the sampler always re-embeds the clamped depth
    for t in ("semseg", "normals", "edge"):
        assert torch.equal(clamped["pred"][t], raw["pred"][t])


def test_prediction_rules():
    head = tiny_model().heads
    sal = torch.tensor([[0.0, 0.0], [0.0, 1.8], [0.0, 1.6]]).T.reshape(1, 2, 1, 3)  # p1 = .5, .858, .832
    assert head.prediction_labels("sal", sal).tolist() == [[[0, 1, 0]]]
    seg = torch.randn(1, 21, 2, 2)
    assert torch.equal(head.prediction_labels("semseg", seg), seg.argmax(1))
    nrm = head.prediction_labels("normals", torch.randn(1, 3, 2, 2))
    torch.testing.assert_close(nrm.norm(dim=1), torch.ones(1, 2, 2))
    edge = torch.randn(1, 1, 2, 2)
    torch.testing.assert_close(head.prediction_labels("edge", edge), torch.sigmoid(edge))


def test_training_backward_gives_finite_grads_everywhere():
    """Every parameter gets a finite gradient in the training forward (aux heads included).

    The only exactly-zero gradient expected is pos_embed slot 0 (the unused class position).
    """
    model = tiny_model().train()
    x = torch.randn(2, 3, 32, 48)
    out = model(x, fake_targets("PASCALContext", 2, 32, 48))
    loss = sum(v.square().mean() for v in out["pred"].values()) + sum(v.square().mean() for v in out["aux"].values())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert bad == []
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert zero == []
    assert model.backbone.pos_embed.grad[:, 0].abs().sum() == 0
    # the label path (embedding tables -> bits -> noisy map -> gates) is trained too
    assert model.heads.embedding_tables["sal"].weight.grad.abs().sum() > 0


def test_head_hooks_let_a_subclass_swap_feature_and_aux_modules():
    class Doubler(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.proj = nn.Conv2d(c, c, 1)

        def forward(self, x, task):
            return self.proj(x) * 2, torch.full((x.shape[0], 1), float(len(task)))

    class MyHead(TaskDiffusionHead):
        def build_feat_task(self, level):
            return Doubler(self.embed_dim)

        def build_aux_body(self, task):
            return nn.Conv2d(self.num_levels * self.embed_dim, self.embed_dim, 1)

        def clean_task_features(self, levels, generator=None, marker=None, **kw):
            P, probs = [], []
            for l, x in enumerate(levels):
                feats = {t: self.fpn_encoder.feat_task[l](x, t) for t in self.tasks}
                P.append({t: f for t, (f, _) in feats.items()})
                probs.append({t: p for t, (_, p) in feats.items()})
            return P, {"route_1_prob": probs, "marker": marker}

    torch.manual_seed(0)
    model = build_taskdiffusion_model(tiny_cfg(), head_cls=MyHead).eval()
    keys = set(model.state_dict())
    assert "heads.fpn_encoder.feat_task.0.proj.weight" in keys and "heads.aux_heads.sal.0.weight" in keys
    x, tg = torch.randn(1, 3, 32, 48), fake_targets("PASCALContext", 1, 32, 48)
    out = model(x, tg, marker="hello")
    assert out["marker"] == "hello" and len(out["route_1_prob"]) == 4
    assert out["route_1_prob"][0]["sal"].shape == (1, 1) and out["aux"]["sal"].shape == (1, 2, 32, 48)
    assert set(model(x, marker="x")) == {"pred"}  # sampling returns predictions only
    with pytest.raises(TypeError, match="unexpected"):
        tiny_model()(x, tg, marker="hello")  # the plain head takes no extra arguments


def test_build_model_dispatch_and_api_errors():
    with pytest.raises(ValueError, match="unknown model"):
        build_model(tiny_cfg(model="UNet"))
    model = tiny_model().eval()
    assert model.head is model.heads
    x = torch.randn(1, 3, 32, 48)
    with pytest.raises(ValueError, match="training forward only"):
        model(x, times=torch.tensor([0.5]))
    tg = fake_targets("PASCALContext", 1, 32, 48)
    del tg["edge"]
    with pytest.raises(KeyError, match="edge"):
        model(x, tg)
