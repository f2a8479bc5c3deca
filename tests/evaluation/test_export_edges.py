"""tools/export_edges_for_seism.py: the PNGs the external MATLAB benchmark reads (docs/method.md#edge-prediction-pngs)."""
import numpy as np
import pytest
import torch
from PIL import Image

from tools.export_edges_for_seism import build_parser, edge_png_arrays, save_edge_pngs


def test_save_edge_pngs_crops_padding_and_truncates(tmp_path):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 12, 16, generator=g) * 3
    meta = {"img_name": ["2008_000002", "0001"], "img_size": [torch.tensor([9, 16]), torch.tensor([12, 11])]}
    paths = save_edge_pngs(logits, meta, str(tmp_path))
    assert [p.split("/")[-1] for p in paths] == ["2008_000002.png", "0001.png"]
    assert sorted(f.name for f in (tmp_path / "edge").iterdir()) == ["0001.png", "2008_000002.png"]
    a = np.array(Image.open(tmp_path / "edge" / "2008_000002.png"))
    assert a.dtype == np.uint8 and a.shape == (9, 16)
    expected = (torch.sigmoid(logits[0, 0, 1:10, :]) * 255).to(torch.uint8).numpy()  # top offset (12-9)//2 = 1
    assert np.array_equal(a, expected)
    b = np.array(Image.open(tmp_path / "edge" / "0001.png"))
    assert b.shape == (12, 11)
    assert np.array_equal(b, (torch.sigmoid(logits[1, 0, :, 2:13]) * 255).to(torch.uint8).numpy())


def test_probabilities_input_and_errors():
    meta = {"img_name": ["a"], "img_size": [torch.tensor([2, 2])]}
    (name, arr), = edge_png_arrays(torch.full((1, 2, 2), 0.999), meta, is_logits=False)
    assert name == "a" and arr.tolist() == [[254, 254], [254, 254]]
    with pytest.raises(ValueError, match="one channel"):
        edge_png_arrays(torch.zeros(1, 2, 2, 2), meta)
    with pytest.raises(ValueError, match="meta"):
        edge_png_arrays(torch.zeros(2, 1, 2, 2), meta)


def test_cli_arguments():
    args = build_parser().parse_args(["--config_exp", "c.yml", "--trained_model", "m.pth", "--output", "o"])
    assert args.split == "val" and args.data_root is None


def test_bad_device_is_one_line(tmp_path, capsys):
    """A --device typo ends in one `error:` line before the checkpoint is opened (a missing one here)."""
    from tests.engine.conftest import CONFIG
    from tools.export_edges_for_seism import main

    argv = ["--config_exp", CONFIG, "--trained_model", str(tmp_path / "missing.pth"), "--output", str(tmp_path),
            "--device", "gpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "--device gpu: unknown device name" in lines[0], err
