"""Parity of the MLoRE variant with the original code, and its sizes against the official models.

* tiny_pascal_mlore.pt (golden README beside it): the original's weights, inputs, noise and outputs;
  every output is matched at 1e-5 relative to the tensor's max, in eval and in train mode.
* Parameter counts of the two paper MLoRE configs (docs/method.md#parameter-counts), built on the meta device.
* Every key of the official MLoRE state-dict listings maps onto the built model with equal shapes.
"""
import json

import pytest
import torch
from easydict import EasyDict

from models import build_model
from models.mlore import MLoREHead, RouterNoise
from tools.convert_official_checkpoint import convert_state_dict

GOLDEN = "reference/golden/tiny_pascal_mlore.pt"


def _close(out, ref, what):
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item(), msg=lambda m: f"{what}: {m}")


def _close_dict(out, ref, what):
    assert list(out) == list(ref), f"{what}: tasks {list(out)} vs {list(ref)}"
    for t in ref:
        _close(out[t], ref[t], f"{what}[{t}]")


def _close_route(out, ref, what):
    assert set(out) == {"route_1_prob", "route_2_prob"}
    for name in ("route_1_prob", "route_2_prob"):
        assert len(out[name]) == len(ref[name]) == 4
        for l, (o, r) in enumerate(zip(out[name], ref[name])):
            _close_dict(o, r, f"{what}.{name}[{l}]")


def tiny_cfg(conf: dict) -> EasyDict:
    """The project config equivalent to the golden file's tiny settings."""
    vit, mlore = conf["vit"], conf["mlore"]
    return EasyDict(
        model="TaskDiffusion_mlore", backbone="TaskDiffusion_vitT",
        backbone_kwargs=dict(embed_dim=vit["embed_dim"], depth=vit["depth"], num_heads=vit["num_heads"],
                             taps=vit["select_list"]),
        backbone_weights=None, drop_path_rate=vit["drop_path_rate"], final_embed_dim=conf["final_embed_dim"],
        timesteps=conf["timesteps"], randsteps=conf["randsteps"], bit_scales={"all": conf["bit_scale"]},
        module_layer=conf["module_layer"], with_aux=conf["with_aux"], rank_list=mlore["rank_list"],
        topk=mlore["topk"], spatial_size=mlore["spatial_size"], db_name="PASCALContext",
        TASKS=dict(NAMES=list(conf["tasks"])), TRAIN=dict(SCALE=list(conf["image_size"])),
        ignore_index=conf["ignore_index"])


@pytest.fixture(scope="module")
def golden(shared_dir):
    path = shared_dir / GOLDEN
    if not path.exists():
        pytest.skip(f"{path} not present (the golden parity files are only in the project's CI checkout)")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def model(golden):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the golden files were made with one thread
    m = build_model(tiny_cfg(golden["config"]))
    assert isinstance(m.heads, MLoREHead)
    m.load_state_dict(convert_state_dict(golden["state_dict"], m), strict=True)
    yield m
    torch.set_num_threads(threads)


def test_config_matches_golden(golden):
    conf = golden["config"]
    assert conf["model"] == "TaskDiffusion_mlore" and conf["mlore"]["num_lora"] == 15
    assert conf["mlore"]["low_rank_branch_rank"] == 72 and conf["mlore"]["blocks_per_level"] == 2
    assert conf["mask_shape"] == 40 and conf["num_layer"] == 4


def test_inference(model, golden):
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(golden["x"])
        _close(feats, golden["backbone_feat"], "backbone_feat")
        out = model(golden["x"], noise=golden["infer_noise"], return_intermediates=True)
    assert set(out) == {"pred", "intermediates"}  # no route output at inference
    _close_dict(out["pred"], golden["infer_out"], "infer_out")
    mask_t = out["intermediates"]["mask_t"]
    assert len(mask_t) == len(golden["infer_mask_t"]) == 3
    for s, (a, b) in enumerate(zip(mask_t, golden["infer_mask_t"])):
        _close(a, b, f"infer_mask_t[{s}]")


def test_inference_redraws_original_noise(model, golden):
    """Seeded like the original, the global-RNG draw reproduces infer_noise and the outputs."""
    model.eval()
    torch.manual_seed(golden["seeds"]["infer"])
    with torch.no_grad():
        out = model(golden["x"], return_intermediates=True)
    assert torch.equal(out["intermediates"]["mask_t"][0], golden["infer_noise"])
    _close_dict(out["pred"], golden["infer_out"], "infer_out (redrawn)")


def _train_forward(model, golden, mode, **kw):
    model.train(mode == "train")
    model.backbone.set_drop_path(0.0)  # as the golden train-mode pass (DropPath draws nothing)
    try:
        with torch.no_grad():
            return model(golden["x"], golden["gt"], return_intermediates=True, **kw)
    finally:
        model.backbone.set_drop_path(golden["config"]["vit"]["drop_path_rate"])
        model.eval()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_training_forward(model, golden, mode):
    noise = dict(zip(golden["train_router_noise_order"], golden["train_router_noise"]))
    out = _train_forward(model, golden, mode, times=golden["train_times"], noise=golden["train_noise"],
                         router_noise=noise)
    inter = out["intermediates"]
    _close(inter["gt_bits"], golden["train_gt_bits"], "train_gt_bits")
    _close(inter["noised_gt"], golden["train_noised_gt"], "train_noised_gt")
    _close_dict(out["pred"], golden[f"train_out_{mode}"], f"train_out_{mode}")
    _close_dict(out["aux"], golden[f"train_aux_{mode}"], f"train_aux_{mode}")
    _close_route(out["route"], golden[f"train_route_{mode}"], f"train_route_{mode}")
    for p in out["route"]["route_1_prob"][0].values():
        assert p.shape == (2, 15, 1, 1, 1) and ((p.flatten(1) > 0).sum(1) == 3).all()


def test_training_forward_redraws_original_noise(model, golden):
    """Seeded like the original (train mode): times, latent noise and the 40 router noises are
    drawn from the global RNG in the original's order, so the outputs repeat without injection."""
    assert golden["train_router_noise_order"] == model.heads.noise_order()
    seen = []
    recorder = RouterNoise(lambda key, shape, device, dtype: seen.append(key) or torch.randn(shape))
    torch.manual_seed(golden["seeds"]["train"])
    out = _train_forward(model, golden, "train", router_noise=recorder)
    assert seen == golden["train_router_noise_order"]
    torch.manual_seed(golden["seeds"]["train"])
    out = _train_forward(model, golden, "train")
    assert torch.equal(out["intermediates"]["times"], golden["train_times"])
    assert torch.equal(out["intermediates"]["noise"], golden["train_noise"])
    _close_dict(out["pred"], golden["train_out_train"], "train_out_train (redrawn)")
    _close_route(out["route"], golden["train_route_train"], "train_route_train (redrawn)")


# --------------------------------------------------------------------------------------------------
# Paper configs: sizes and official key listings
# --------------------------------------------------------------------------------------------------

PAPER = {
    "pascal": ("configs/pascal/vitL_mlore.yml", "official_state_dict_pascal_vitLp16_MLoRE.json",
               (476_487_289, 306_001_680, 170_485_609)),
    "nyud": ("configs/nyud/vitL_mlore.yml", "official_state_dict_nyud_vitLp16_MLoRE.json",
             (750_254_402, 307_280_896, 442_973_506)),
}


def _meta_model(repo_root, name):
    from engine.config import load_config

    cfg = load_config(str(repo_root / PAPER[name][0]), opts=["backbone_weights=null"], data_root=str(repo_root))
    with torch.device("meta"):
        return build_model(cfg)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_parameter_counts(repo_root, name):
    m = _meta_model(repo_root, name)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert (count(m), count(m.backbone), count(m.heads)) == PAPER[name][2]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_official_keys_map_with_equal_shapes(repo_root, shared_dir, name):
    path = shared_dir / "reference" / PAPER[name][1]
    if not path.exists():
        pytest.skip(f"{path} not present (only in the project's CI checkout)")
    ref = json.load(open(path))
    m = _meta_model(repo_root, name)
    fake = {e["checkpoint_key"]: torch.empty(e["shape"], device="meta") for e in ref["state_dict"]}
    converted = convert_state_dict(fake, m)  # raises on unknown / missing / mis-shaped keys
    assert len(converted) == len(ref["state_dict"]) == len(m.state_dict())
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert all(shapes[e["key"]] == tuple(e["shape"]) for e in ref["state_dict"])
