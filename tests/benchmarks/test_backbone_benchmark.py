"""benchmarks/backbones.py runs end to end on the tiny configs of every family and reports what it claims."""
import json

from benchmarks import backbones


def test_backbone_rows_params_flops_and_time(tmp_path):
    out = tmp_path / "bb.json"
    names = ["demo_pascal", "demo_pascal_swin", "demo_pascal_convnext", "demo_pascal_dinov2"]
    assert backbones.main(["--configs", *names, "--repeats", "2", "--warmup", "0", "--json", str(out)]) == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(names) and not [r for r in rows.values() if "error" in r]
    for r in rows.values():
        assert r["params_M"] > r["proj_params_M"] > 0 and r["GFLOP_per_img"] > 0 and r["decoder_GFLOP_per_img"] > 0
        assert r["cpu_s_per_img"]["n"] == 2 and len(r["levels"]) == 4
    assert rows["demo_pascal_swin"]["levels"] == [[16, 4], [32, 8], [64, 16], [128, 32]]
    assert rows["demo_pascal_dinov2"]["decoder_stride"] == 14 and rows["demo_pascal_dinov2"]["decoder_grid"] == [10, 10]
    assert rows["demo_pascal"]["decoder_grid"] == [8, 8]
    assert "| demo_pascal_convnext | convnext_atto | 128x128 | 16 | 8x8 |" in backbones.markdown(list(rows.values()))
