"""Official checkpoint converter: every key of the reference JSONs maps; round trip; clear refusals."""
from __future__ import annotations

import json
import os

import pytest
import torch

from engine.config import load_config
from tools.convert_official_checkpoint import (ConversionError, build_reference_model, convert_state_dict,
                                               extract_state_dict, main)


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


class _Planted:
    """Unpickling this object creates `marker`: stands in for code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cli_refuses_a_planted_pickle_with_one_line_and_runs_nothing(tmp_path, repo_root):
    import subprocess
    import sys

    marker, inp, out = tmp_path / "marker_created", tmp_path / "planted.pth", tmp_path / "out.pth"
    torch.save({"model": {"module.w": torch.zeros(1)}, "payload": _Planted(marker)}, inp)
    proc = subprocess.run([sys.executable, "tools/convert_official_checkpoint.py", "--input", str(inp),
                           "--output", str(out), "--config", DEMO], cwd=repo_root, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(inp) in lines[0], proc.stderr
    assert "--trust_checkpoint" in lines[0] and "execute code" in lines[0]
    assert not marker.exists() and not out.exists()


def test_cli_converts_an_original_style_pickle_only_when_trusted(tmp_path, repo_root, capsys):
    import argparse

    from easydict import EasyDict

    src = _tiny(repo_root, 0)
    inp, out = tmp_path / "orig.pth.tar", tmp_path / "conv.pth"
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()},
                "args": argparse.Namespace(lr=0.1), "p": EasyDict({"epochs": 3})}, inp)
    argv = ["--input", str(inp), "--output", str(out), "--config", str(repo_root / DEMO)]
    assert main(argv) == 2 and not out.exists()
    assert "argparse.Namespace" in capsys.readouterr().err
    assert main(argv + ["--trust_checkpoint"]) == 0
    ckpt = torch.load(out, weights_only=True)  # the converted file itself needs no trust
    _tiny(repo_root, 1).load_state_dict(ckpt["model"], strict=True)


def test_cli_reports_an_unreadable_input_without_a_traceback(tmp_path, capsys):
    inp = tmp_path / "junk.pth"
    inp.write_bytes(b"not a checkpoint")
    assert main(["--input", str(inp), "--output", str(tmp_path / "o.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot read" in err and len(err.strip().splitlines()) == 1
