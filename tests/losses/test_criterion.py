"""The multi-task criterion: weighting, aux, load balancing, term keys, autocast, and golden parity."""
import pytest
import torch
from easydict import EasyDict

from data.tasks import task_info
from losses import MultiTaskCriterion, build_criterion, load_balancing_loss

PASCAL_WEIGHTS = {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "edge": 50.0, "normals": 10.0,
                  "load_balancing": 0.0003}


def _batch(seed=0, b=2, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    gt = {
        "semseg": torch.randint(0, 21, (b, 1, h, w), generator=g).float(),
        "human_parts": torch.randint(0, 7, (b, 1, h, w), generator=g).float(),
        "sal": torch.randint(0, 2, (b, 1, h, w), generator=g).float(),
        "normals": torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1),
        "edge": (torch.rand(b, 1, h, w, generator=g) < 0.2).float(),
    }
    gt["human_parts"][1] = 255  # an image without people
    out = {"pred": {t: torch.randn(b, c, h, w, generator=g) for t, c in
                    (("semseg", 21), ("human_parts", 7), ("sal", 2), ("normals", 3), ("edge", 1))}}
    out["aux"] = {t: torch.randn_like(v) for t, v in out["pred"].items()}
    return out, gt


def _cfg(**kw):
    cfg = EasyDict(db_name="PASCALContext", TASKS={"NAMES": ["semseg", "human_parts", "sal", "normals", "edge"]},
                   loss_kwargs={"loss_weights": dict(PASCAL_WEIGHTS)}, aux_weight=0.25, with_aux=True, edge_w=0.95,
                   ignore_invalid_area_depth=True)
    cfg.update(kw)
    return cfg


def test_total_is_weighted_sum_plus_aux_and_terms_are_logged():
    out, gt = _batch()
    crit = build_criterion(_cfg())
    total, terms = crit(out, gt)
    tasks = ["semseg", "human_parts", "sal", "normals", "edge"]
    main = sum(PASCAL_WEIGHTS[t] * crit.task_loss(t, out["pred"][t], gt[t]) for t in tasks)
    aux = sum(PASCAL_WEIGHTS[t] * crit.task_loss(t, out["aux"][t], gt[t]) for t in tasks)
    assert total.item() == pytest.approx((main + 0.25 * aux).item(), rel=1e-6)
    assert list(terms) == [f"loss/{t}" for t in tasks] + [f"aux/{t}" for t in tasks] + \
        ["loss/main", "loss/aux", "loss/total"]
    assert all(not v.requires_grad for v in terms.values())
    assert terms["loss/main"].item() == pytest.approx(main.item(), rel=1e-6)


def test_all_ignore_task_gives_finite_zero_and_gradients():
    out, gt = _batch()
    gt["human_parts"][:] = 255
    gt["normals"][:] = 255
    for v in out["pred"].values():
        v.requires_grad_(True)
    total, terms = build_criterion(_cfg())(out, gt)
    assert terms["loss/human_parts"].item() == 0.0 and terms["loss/normals"].item() == 0.0
    total.backward()
    assert torch.isfinite(total)
    assert out["pred"]["human_parts"].grad.abs().max().item() == 0.0
    assert out["pred"]["semseg"].grad.abs().max().item() > 0


def test_route_adds_weighted_cv_to_main_only():
    out, gt = _batch()
    g = torch.Generator().manual_seed(5)
    tasks = ["semseg", "human_parts", "sal", "normals", "edge"]
    out["route"] = {k: [{t: torch.rand(2, 15, 1, 1, 1, generator=g) for t in tasks} for _ in range(4)]
                    for k in ("route_1_prob", "route_2_prob")}
    crit = build_criterion(_cfg())
    total, terms = crit(out, gt)
    cv = load_balancing_loss(out["route"]).item()
    assert terms["loss/cv"].item() == pytest.approx(cv, rel=1e-6)
    no_route = {k: v for k, v in out.items() if k != "route"}
    _, terms0 = crit(no_route, gt)
    assert terms["loss/main"].item() == pytest.approx(terms0["loss/main"].item() + 0.0003 * cv, rel=1e-6)
    assert terms["loss/aux"].item() == pytest.approx(terms0["loss/aux"].item(), rel=1e-6)


def test_without_aux_and_with_aux_disabled():
    out, gt = _batch()
    crit = build_criterion(_cfg())
    total, terms = crit({"pred": out["pred"]}, gt)
    assert "loss/aux" not in terms and total.item() == pytest.approx(terms["loss/main"].item())
    total2, _ = build_criterion(_cfg(with_aux=False))(out, gt)
    assert total2.item() == pytest.approx(terms["loss/main"].item(), rel=1e-6)


def test_autocast_bf16_outputs_give_float32_loss():
    out, gt = _batch()
    bf = {"pred": {t: v.bfloat16() for t, v in out["pred"].items()}}
    crit = build_criterion(_cfg())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = crit(bf, gt)
    ref, _ = crit({"pred": {t: v.float() for t, v in bf["pred"].items()}}, gt)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)


def test_errors_name_the_problem():
    out, gt = _batch()
    with pytest.raises(ValueError, match="loss_weights"):
        MultiTaskCriterion([task_info("PASCALContext", "semseg")], loss_weights={})
    crit = build_criterion(_cfg())
    del out["pred"]["sal"]
    with pytest.raises(KeyError, match="sal"):
        crit(out, gt)


def test_nyud_depth_uses_zero_mask():
    g = torch.Generator().manual_seed(0)
    cfg = EasyDict(db_name="NYUD", TASKS={"NAMES": ["depth"]}, loss_kwargs={"loss_weights": {"depth": 1.0}},
                   aux_weight=0.25, ignore_invalid_area_depth=True)
    pred = torch.rand(1, 1, 4, 4, generator=g)
    gt = torch.rand(1, 1, 4, 4, generator=g) + 0.5
    gt[0, 0, 0] = 0.0
    total, _ = build_criterion(cfg)({"pred": {"depth": pred}}, {"depth": gt})
    valid = gt != 0
    assert total.item() == pytest.approx((pred - gt).abs()[valid].mean().item(), rel=1e-6)


@pytest.mark.parametrize("name", ["tiny_pascal", "tiny_nyud", "tiny_pascal_mlore"])
def test_golden_losses(shared_dir, name):
    path = shared_dir / "reference" / "golden" / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"golden file {path} not available (shared dir absent in this clone)")
    d = torch.load(path, weights_only=True)
    c = d["config"]
    cfg = EasyDict(db_name="NYUD" if "nyud" in name else "PASCALContext", TASKS={"NAMES": c["tasks"]},
                   loss_kwargs={"loss_weights": c["loss_weights"]}, aux_weight=c["aux_weight"], with_aux=True,
                   edge_w=c["edge_w"], ignore_invalid_area_depth=c["ignore_invalid_area_depth"])
    outputs = {"pred": d["train_out_eval"], "aux": d["train_aux_eval"]}
    if "train_route_eval" in d:
        outputs["route"] = d["train_route_eval"]
    total, terms = build_criterion(cfg)(outputs, d["gt"])
    ref = d["train_losses_eval"]
    pairs = [(f"loss/{t}", f"real_{t}") for t in c["tasks"]] + [(f"aux/{t}", f"aux_{t}") for t in c["tasks"]]
    pairs += [("loss/main", "real_total"), ("loss/aux", "aux_total"), ("loss/total", "loss_all")]
    if "real_cv" in ref:
        pairs.append(("loss/cv", "real_cv"))
    for ours, theirs in pairs:
        torch.testing.assert_close(terms[ours], ref[theirs].float(), rtol=1e-5, atol=0, msg=f"{ours} vs {theirs}")
    torch.testing.assert_close(total.detach(), ref["loss_all"].float(), rtol=1e-5, atol=0)
