"""tools.prepare_weights: checks a downloaded ViT weight file against timm and writes it where configs look."""
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from tools import prepare_weights as pw

TAG = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tiny_sd():
    """The state dict timm gives a tiny ViT built without pretrained weights (no network)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(TAG, pretrained=False).state_dict()


def _main(capsys, *args):
    rc = pw.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_accepts_a_timm_saved_file_and_the_backbone_loads_it(tmp_path, tiny_sd, capsys, fmt):
    src = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        save_file(tiny_sd, str(src))
    else:  # a training checkpoint: wrapped and DDP-prefixed
        torch.save({"model": {f"module.{k}": v for k, v in tiny_sd.items()}, "epoch": 3}, src)
    rc, out, err = _main(capsys, "--backbone", TAG, "--from", str(src), "--out", str(tmp_path / "pretrained"))
    assert rc == 0, err
    dest = tmp_path / "pretrained" / f"{TAG}.safetensors"
    assert f"backbone_weights: {dest}" in out
    written = load_file(str(dest))
    assert written.keys() == tiny_sd.keys() and all(torch.equal(written[k], tiny_sd[k]) for k in tiny_sd)

    from models.backbone import ViTMultiLevel, load_pretrained

    vit = ViTMultiLevel(img_size=(32, 32), embed_dim=192, depth=12, num_heads=3, taps=(3, 6, 9), out_dim=8)
    load_pretrained(vit, str(dest), {"name": "TaskDiffusion_vitT", "timm_name": None})
    assert torch.equal(vit.blocks[0].attn.qkv.weight, tiny_sd["blocks.0.attn.qkv.weight"])


def test_refuses_a_file_with_a_missing_key(tmp_path, tiny_sd, capsys):
    bad = dict(tiny_sd)
    del bad["blocks.3.mlp.fc1.weight"]
    src = tmp_path / "model.safetensors"
    save_file(bad, str(src))
    rc, out, err = _main(capsys, "--backbone", TAG, "--from", str(src), "--out", str(tmp_path / "pretrained"))
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: --from ")
    assert "1 missing key(s) (blocks.3.mlp.fc1.weight)" in err
    assert not (tmp_path / "pretrained").exists()


def test_refuses_wrong_shapes_and_extra_keys_but_not_another_head(tmp_path, tiny_sd, capsys):
    bad = dict(tiny_sd)
    bad["norm.weight"] = torch.zeros(7)
    bad["extra.weight"] = torch.zeros(1)
    src = tmp_path / "bad.safetensors"
    save_file(bad, str(src))
    rc, _, err = _main(capsys, "--backbone", TAG, "--from", str(src), "--out", str(tmp_path / "o"))
    assert rc == 2 and "1 unexpected key(s) (extra.weight)" in err and "1 wrong shape key(s) (norm.weight" in err
    other_head = {k: v for k, v in tiny_sd.items() if not k.startswith("head.")}
    other_head["head.weight"] = torch.zeros(10, 192)  # fine-tuned for 10 classes: the backbone ignores it
    save_file(other_head, str(src))
    assert _main(capsys, "--backbone", TAG, "--from", str(src), "--out", str(tmp_path / "o"))[0] == 0


def test_config_names_map_to_the_files_the_configs_expect(repo_root):
    for config, backbone in (("configs/pascal/vitL.yml", "TaskDiffusion_vitL"),
                             ("configs/pascal/vitB.yml", "TaskDiffusion_vitB")):
        expected = re.search(r"^backbone_weights:\s*(\S+)", (repo_root / config).read_text(), re.M).group(1)
        assert str(pw.output_path("pretrained/", pw.timm_tag(backbone))) == expected


def test_every_shipped_config_expects_the_file_the_tool_writes(repo_root):
    """backbone_weights of every paper-size config is <out>/<timm tag>.safetensors of its backbone's tag."""
    import yaml

    for config in sorted((repo_root / "configs").glob("*/*.yml")):
        raw = yaml.safe_load(config.read_text())
        weights = raw.get("backbone_weights")
        if not weights or weights == "timm" or "_base_" in config.parts:
            continue
        tag = raw["backbone_kwargs"]["timm_name"] if raw["backbone"] == "timm" else pw.timm_tag(raw["backbone"])
        assert str(pw.output_path("pretrained/", tag)) == weights, config


@pytest.mark.parametrize("arch", ["swin_tiny_patch4_window7_224", "convnext_atto"])
def test_hierarchical_timm_files_pass_and_load_into_the_adapter(tmp_path, capsys, arch):
    """Swin and ConvNeXt files (classifier under head.fc / head.norm) pass the check and load into the
    timm backbone adapter. The check builds the tag's full-size reference, so the file is full-size too."""
    import timm

    from models.timm_backbone import TimmMultiLevel, load_timm_weights

    sd = timm.create_model(arch, pretrained=False).state_dict()
    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src))
    rc, _, err = _main(capsys, "--backbone", arch, "--from", str(src), "--out", str(tmp_path / "p"))
    assert rc == 0, err
    net = TimmMultiLevel(arch, [0, 1, 2, 3], out_dim=8, img_size=(224, 224) if "swin" in arch else (64, 64))
    load_timm_weights(net, str(tmp_path / "p" / f"{arch}.safetensors"))
    name = "layers.0.blocks.0.attn.qkv.weight" if "swin" in arch else "stages.0.blocks.0.conv_dw.weight"
    assert torch.equal(net.model.state_dict()[name], sd[name])


def test_unknown_backbone_unreadable_file_and_offline_hub_are_one_line(tmp_path, capsys, monkeypatch):
    rc, _, err = _main(capsys, "--backbone", "not_a_model", "--out", str(tmp_path))
    assert rc == 2 and err.count("\n") == 1 and "neither a config backbone" in err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    rc, _, err = _main(capsys, "--backbone", TAG, "--from", str(junk), "--out", str(tmp_path))
    assert rc == 2 and err.count("\n") == 1 and "cannot read it as .pth" in err

    import timm

    def offline(name, pretrained=False, **kw):  # what timm does without network: no download here
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'\nmore lines")
        return real(name, pretrained=False, **kw)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    rc, _, err = _main(capsys, "--backbone", TAG, "--out", str(tmp_path))
    assert rc == 2 and err.count("\n") == 1 and "cannot fetch them" in err and "--from" in err
