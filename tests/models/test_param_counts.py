"""Parameter counts of the paper configs equal the table of docs/method.md#parameter-counts (built on the meta device: no memory)."""
from __future__ import annotations

import pytest
import torch

from engine.config import load_config
from tools.convert_official_checkpoint import build_reference_model


# docs/method.md#parameter-counts: config -> (total, backbone, head)
COUNTS = {
    "configs/pascal/vitL.yml": (445_414_626, 305_690_080, 139_724_546),
    "configs/pascal/vitB.yml": (415_377_764, 88_205_568, 327_172_196),
    "configs/nyud/vitL.yml": (784_263_858, 307_280_896, 476_982_962),
}
# docs/method.md#parameter-counts head breakdowns
BREAKDOWN = {
    "configs/pascal/vitL.yml": {
        "aux_heads": 29_106_570, "embedding_tables": 3_666, "invalid_embedding_tables": 188, "pred_heads": 115_090,
        "embed_all": 141_752, "transforms": 1_273_888, "time_mlp": 148_528, "encoders": 25_481_520,
        "fpn_encoder.share_fpn": 13_590_144, "fpn_encoder.mask_task": 414_100, "fpn_encoder.feat_task": 56_610_560,
        "fpn_encoder.specific_head": 8_520_160, "fpn_encoder.fpn_mask": 4_318_380},
    "configs/nyud/vitL.yml": {
        "aux_heads": 97_057_581, "embedding_tables": 9_408, "invalid_embedding_tables": 576, "pred_heads": 311_085,
        "embed_all": 590_592, "transforms": 4_721_664, "time_mlp": 604_424, "encoders": 84_989_952,
        "fpn_encoder.share_fpn": 56_659_968, "fpn_encoder.mask_task": 540_992, "fpn_encoder.feat_task": 188_841_984,
        "fpn_encoder.specific_head": 28_372_992, "fpn_encoder.fpn_mask": 14_281_744},
    "configs/pascal/vitB.yml": {
        "aux_heads": 68_204_770, "embedding_tables": 5_616, "invalid_embedding_tables": 288, "pred_heads": 176_290,
        "embed_all": 332_352, "transforms": 2_988_288, "time_mlp": 342_728, "encoders": 59_771_520,
        "fpn_encoder.share_fpn": 31_878_144, "fpn_encoder.mask_task": 634_100, "fpn_encoder.feat_task": 132_802_560,
        "fpn_encoder.specific_head": 19_964_160, "fpn_encoder.fpn_mask": 10_071_380},
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module", params=sorted(COUNTS))
def built(request, repo_root):
    cfg = load_config(str(repo_root / request.param))
    model = build_reference_model(cfg)  # meta device, backbone_weights ignored
    assert all(p.is_meta for p in model.parameters())
    return request.param, model


def test_totals(built):
    name, model = built
    total, backbone, head = COUNTS[name]
    assert (count(model), count(model.backbone), count(model.heads)) == (total, backbone, head)


def test_head_breakdown(built):
    name, model = built
    got = {k: count(model.heads.get_submodule(k)) for k in BREAKDOWN[name]}
    assert got == BREAKDOWN[name]
