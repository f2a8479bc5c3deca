"""Official checkpoint converter: every key of the reference JSONs maps; round trip; clear refusals."""
from __future__ import annotations

import json

import pytest
import torch

from tools.convert_official_checkpoint import (ConversionError, build_reference_model, convert_state_dict,
                                               extract_state_dict, main)
from utils.config import load_config


# official reference (non-MLoRE; the MLoRE ones are tested with models/mlore.py) -> our config
REFERENCES = {
    "official_state_dict_pascal_vitLp16.json": "configs/pascal/vitL.yml",
    "official_state_dict_pascal_vitBp16.json": "configs/pascal/vitB.yml",
    "official_state_dict_nyud_vitLp16.json": "configs/nyud/vitL.yml",
}
DEMO = "configs/demo/synthetic_pascal.yml"  # the tiny model


@pytest.mark.parametrize("ref_name", sorted(REFERENCES))
def test_every_official_key_maps_with_equal_shape(ref_name, shared_dir, repo_root):
    path = shared_dir / "reference" / ref_name
    if not path.is_file():
        pytest.skip(f"{path} not found: the ../shared reference data is only in CI and the project workspace")
    ref = json.loads(path.read_text())
    model = build_reference_model(load_config(str(repo_root / REFERENCES[ref_name])))
    sd = {e["checkpoint_key"]: torch.empty(e["shape"], device="meta") for e in ref["state_dict"]}
    assert all(k.startswith("module.") for k in sd)
    out = convert_state_dict(sd, model)
    assert len(out) == ref["num_entries"] == len(model.state_dict())
    for e in ref["state_dict"]:
        assert tuple(out[e["key"]].shape) == tuple(e["shape"])


def _tiny(repo_root, seed):
    torch.manual_seed(seed)
    from models import build_model
    return build_model(load_config(str(repo_root / DEMO)))


def test_round_trip_of_a_random_model(repo_root):
    src = _tiny(repo_root, 0)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)  # differ from any fresh init
    ckpt = {"model": {"module." + k: v.clone() for k, v in src.state_dict().items()}, "epoch": 3}
    dst = _tiny(repo_root, 1)
    dst.load_state_dict(convert_state_dict(extract_state_dict(ckpt), dst), strict=True)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_refuses_with_a_list_of_what_differs(repo_root):
    model = _tiny(repo_root, 0)
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    extra = dict(sd, **{"module.heads.foo.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match="(?s)unknown key.*heads.foo.weight"):
        convert_state_dict(extra, model)
    missing = dict(sd)
    del missing["module.heads.embed_all.bias"]
    with pytest.raises(ConversionError, match="(?s)missing from the checkpoint.*heads.embed_all.bias"):
        convert_state_dict(missing, model)
    wrong = dict(sd, **{"module.heads.embed_all.bias": torch.zeros(3)})
    with pytest.raises(ConversionError, match="(?s)shape mismatch.*heads.embed_all.bias"):
        convert_state_dict(wrong, model)
    with pytest.raises(ConversionError, match="no state dict"):
        extract_state_dict({"epoch": 1})


def test_cli_writes_a_strict_loadable_checkpoint(tmp_path, repo_root, capsys):
    src = _tiny(repo_root, 0)
    inp, out = tmp_path / "orig.pth.tar", tmp_path / "conv.pth"
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}}, inp)
    assert main(["--input", str(inp), "--output", str(out), "--config", str(repo_root / DEMO)]) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["converted_from"] == str(inp)
    _tiny(repo_root, 1).load_state_dict(ckpt["model"], strict=True)
    # a checkpoint of another config is refused (non-zero exit, message on stderr)
    torch.save({"model": {"module." + k: v for k, v in list(src.state_dict().items())[:-3]}}, inp)
    assert main(["--input", str(inp), "--output", str(tmp_path / "x.pth"), "--config", str(repo_root / DEMO)]) == 1
    assert "missing from the checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
