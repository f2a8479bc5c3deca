"""Tests of config loading (utils/config.py, the schema in utils/config_schema.py, the packages' cross-checks
loaded by engine/config.py) and main.py's config handling: shipped configs, validation errors, overrides,
inheritance, dataset-root precedence, saving, and main.py's exit status on bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data import tasks as task_table
from engine.config import load_config
from utils.config import DATA_ENV_VAR, SCHEMA, ConfigError, cfg_get, config_to_dict, parse_opts, save_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SHIPPED = sorted(str(p.relative_to(ROOT)) for d in ("pascal", "nyud", "demo") for p in (CONFIGS / d).glob("*.yml")
                 if "cityscapes" not in p.name)  # the Cityscapes configs: tests/data/test_cityscapes.py

# Paper recipe per config (docs/method.md#decoder-sizes, docs/method.md#mlore-variant, docs/method.md#losses, docs/method.md#training-recipe): values the shipped files must carry.
PAPER = {
    "configs/pascal/vitL.yml": dict(final_embed_dim=376, aux_weight=0.25, seed=64, trBatch=2, lr=2e-5,
                                    backbone="TaskDiffusion_vitL", model="TaskDiffusion", val_interval=8000),
    "configs/pascal/vitB.yml": dict(final_embed_dim=576, aux_weight=0.125, seed=64, trBatch=2, lr=2e-5,
                                    backbone="TaskDiffusion_vitB", model="TaskDiffusion", val_interval=8000),
    "configs/pascal/vitL_mlore.yml": dict(final_embed_dim=452, aux_weight=1.0, seed=666, trBatch=4, lr=2e-5,
                                          backbone="TaskDiffusion_vitL", model="TaskDiffusion_mlore",
                                          val_interval=8000, topk=3, spatial_size=1024,
                                          rank_list=list(range(16, 129, 8))),
    "configs/nyud/vitL.yml": dict(final_embed_dim=768, aux_weight=0.25, seed=1919810, trBatch=2, lr=1e-5,
                                  backbone="TaskDiffusion_vitL", model="TaskDiffusion", val_interval=4000),
    "configs/nyud/vitL_mlore.yml": dict(final_embed_dim=768, aux_weight=1.0, seed=64, trBatch=2, lr=1e-5,
                                        backbone="TaskDiffusion_vitL", model="TaskDiffusion_mlore",
                                        val_interval=4000, topk=4, spatial_size=1008,
                                        rank_list=list(range(32, 257, 16))),
}
# Paper recipe with another backbone (backbone: timm): timm tag, decoder stride, decoder width, seed.
TIMM_PAPER = {
    "configs/pascal/swinL.yml": ("swin_large_patch4_window12_384.ms_in22k_ft_in1k", 16, 376, 64),
    "configs/pascal/dinov2L.yml": ("vit_large_patch14_dinov2.lvd142m", 14, 376, 64),
    "configs/pascal/convnextL.yml": ("convnext_large.fb_in22k_ft_in1k_384", 16, 376, 64),
    "configs/nyud/swinL.yml": ("swin_large_patch4_window12_384.ms_in22k_ft_in1k", 16, 768, 1919810),
    "configs/nyud/dinov2L.yml": ("vit_large_patch14_dinov2.lvd142m", 14, 768, 1919810),
}
# Tiny CPU configs per backbone family (tests, demo, learning benchmark): timm architecture, crop size.
TIMM_DEMO = {
    "configs/demo/synthetic_pascal_swin.yml": ("swin_tiny_patch4_window7_224", (128, 128)),
    "configs/demo/synthetic_pascal_convnext.yml": ("convnext_atto", (128, 128)),
    "configs/demo/synthetic_pascal_dinov2.yml": ("vit_small_patch14_dinov2", (140, 140)),
}
LOSS_WEIGHTS = {"PASCALContext": dict(semseg=1.0, human_parts=2.0, sal=5.0, edge=50.0, normals=10.0),
                "NYUD": dict(semseg=1.0, depth=1.0, edge=50.0, normals=10.0)}

MINIMAL = {
    "version_name": "t",
    "train_db_name": "PASCALContext",
    "task_dictionary": {"include_semseg": True},
    "model": "TaskDiffusion",
    "backbone": "TaskDiffusion_vitT",
    "final_embed_dim": 32,
    "optimizer_kwargs": {"lr": 0.001},
    "loss_kwargs": {"loss_weights": {"semseg": 1.0}},
}


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def with_(**changes) -> dict:
    """MINIMAL with top-level keys replaced (None deletes)."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MINIMAL.items()}
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def error_of(path, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)
    return info.value


# ---------------------------------------------------------------- shipped configs

def test_all_expected_configs_are_shipped():
    demos = {"configs/demo/synthetic_pascal.yml", "configs/demo/synthetic_nyud.yml"}
    assert set(PAPER) | set(TIMM_PAPER) | set(TIMM_DEMO) | demos == set(SHIPPED)


@pytest.mark.parametrize("rel", SHIPPED)
def test_shipped_config_loads_with_derived_fields(rel):
    cfg = load_config(ROOT / rel)
    db = cfg.train_db_name
    assert cfg.db_name == db == cfg.val_db_name
    names = cfg.TASKS.NAMES
    assert names == list(task_table.available_tasks(db))  # every task of the dataset, canonical order
    for t in names:
        info = task_table.task_info(db, t)
        assert cfg.TASKS.NUM_OUTPUT[t] == info.num_outputs
        assert cfg.TASKS.NUM_CLASSES[t] == info.num_classes
    assert cfg.edge_w == task_table.DEFAULT_EDGE_W[db]
    assert cfg.ignore_index == 255
    assert cfg.TRAIN.SCALE == cfg.TEST.SCALE
    assert ("depth_min" in cfg) == ("depth" in names)
    for t, w in LOSS_WEIGHTS[db].items():
        assert cfg.loss_kwargs.loss_weights[t] == w
    assert cfg.loss_kwargs.loss_weights.load_balancing == pytest.approx(3e-4)
    assert cfg.timesteps == 3 and cfg.randsteps == 1 and cfg.bit_scales == {"all": 0.01}
    assert cfg.module_layer == 3 and cfg.with_aux is True
    assert cfg.output_dir == os.path.abspath(os.path.join(cfg.out_dir, cfg.version_name))
    from utils.checkpoint import LAST, checkpoint_dir

    assert cfg.checkpoint == os.path.join(checkpoint_dir(cfg.output_dir), LAST)  # where the trainer resumes from


@pytest.mark.parametrize("rel", sorted(PAPER))
def test_paper_configs_follow_the_paper_recipe(rel):
    cfg = load_config(ROOT / rel)
    want = PAPER[rel]
    assert cfg.TRAIN.SCALE == task_table.DEFAULT_SCALE[cfg.db_name]
    assert cfg.max_iter == 40000 and cfg.optimizer == "adam" and cfg.scheduler == "poly"
    assert cfg.optimizer_kwargs.weight_decay == pytest.approx(1e-6)
    assert cfg.optimizer_kwargs.lr == pytest.approx(want["lr"])
    assert cfg.valBatch == 6 and cfg.grad_clip_param.max_norm == 10
    assert cfg.drop_path_rate == pytest.approx(0.15)
    for k in ("final_embed_dim", "aux_weight", "seed", "trBatch", "backbone", "model", "val_interval"):
        assert cfg[k] == want[k], k
    if cfg.model == "TaskDiffusion_mlore":
        assert cfg.rank_list == want["rank_list"] and len(cfg.rank_list) == 15
        assert cfg.topk == want["topk"]
        h, w = cfg.TRAIN.SCALE
        assert cfg.spatial_size == want["spatial_size"] == (h // 16) * (w // 16)
        assert cfg.head == "TaskDiffusion_mlore_head"
    else:
        assert cfg.head == "TaskDiffusion_head"
    # Delta_m reference = published TaskDiffusion ViT-L numbers, one headline metric per task.
    for t in cfg.TASKS.NAMES:
        assert task_table.task_info(cfg.db_name, t).metric in cfg.delta_m_reference[t]


@pytest.mark.parametrize("rel", sorted(TIMM_PAPER))
def test_timm_paper_configs_change_only_the_backbone(rel):
    """Same recipe as the ViT-L config of the dataset; weights from a local file named after the timm tag."""
    cfg = load_config(ROOT / rel)
    ref = load_config(ROOT / rel.rsplit("/", 1)[0] / "vitL.yml")
    tag, stride, width, seed = TIMM_PAPER[rel]
    assert cfg.backbone == "timm" and cfg.backbone_kwargs.timm_name == tag
    assert cfg.decoder_stride == stride and cfg.final_embed_dim == width and cfg.seed == seed
    assert cfg.backbone_weights == f"pretrained/{tag}.safetensors"
    assert all(s % stride == 0 for s in cfg.TRAIN.SCALE)
    for k in ("max_iter", "optimizer", "optimizer_kwargs", "trBatch", "valBatch", "aux_weight", "drop_path_rate",
              "loss_kwargs", "val_interval", "model", "delta_m_reference"):
        assert cfg[k] == ref[k], k


@pytest.mark.parametrize("rel", sorted(TIMM_DEMO))
def test_timm_demo_configs_are_tiny(rel):
    cfg = load_config(ROOT / rel)
    arch, scale = TIMM_DEMO[rel]
    assert cfg.backbone == "timm" and cfg.backbone_kwargs.timm_name == arch and cfg.backbone_weights is None
    assert tuple(cfg.TRAIN.SCALE) == scale and cfg.final_embed_dim == 32 and cfg.max_iter <= 500
    assert cfg.delta_m_reference is None


def test_timm_choices_in_the_schema_match_the_adapter():
    """The schema (torch-free, below models) repeats the adapter's choices; they must agree."""
    from models.variants import TIMM_APIS, TIMM_KWARG_KEYS, TIMM_RESAMPLE_MODES

    bk = SCHEMA["backbone_kwargs"].children
    assert bk["resample"].choices == TIMM_RESAMPLE_MODES and bk["api"].choices == TIMM_APIS
    assert set(TIMM_KWARG_KEYS) <= set(bk)


@pytest.mark.parametrize("changes,key,words", [
    (dict(backbone_kwargs={"timm_name": "convnext_atto"}), "backbone_kwargs.out_indices", "required"),
    (dict(backbone_kwargs={"out_indices": [0, 1]}), "backbone_kwargs.timm_name", "required"),
    (dict(backbone_kwargs={"timm_name": "convnext_atto", "out_indices": [0], "taps": [1, 2, 3]}),
     "backbone_kwargs.taps", "paper ViTs"),
    (dict(backbone_kwargs={"timm_name": "convnext_atto", "out_indices": [0], "resample": "nearest"}),
     "backbone_kwargs.resample", "area"),
    (dict(backbone_kwargs={"timm_name": "convnext_atto", "out_indices": [0]}, decoder_stride=16,
          crop_size=[120, 128]), "crop_size", "decoder_stride 16"),
])
def test_timm_backbone_keys(tmp_path, changes, key, words):
    err = error_of(write(tmp_path / "c.yml", with_(backbone="timm", **changes)))
    assert err.key == key and words in str(err) and "\n" not in str(err)


def test_vit_rejects_timm_keys_and_other_strides(tmp_path):
    err = error_of(write(tmp_path / "a.yml", with_(backbone_kwargs={"timm_name": "x"})))
    assert err.key == "backbone_kwargs.timm_name" and "TaskDiffusion_vitT" in str(err)
    err = error_of(write(tmp_path / "b.yml", with_(decoder_stride=8, backbone_kwargs={
        "embed_dim": 64, "depth": 4, "num_heads": 2, "taps": [1, 2, 3]})))
    assert err.key == "decoder_stride" and "backbone: timm" in str(err)
    ok = load_config(write(tmp_path / "c.yml", with_(decoder_stride=16)))
    assert ok.decoder_stride == 16


def test_timm_mlore_spatial_size_uses_the_decoder_stride(tmp_path):
    cfg = load_config(write(tmp_path / "c.yml", with_(
        backbone="timm", model="TaskDiffusion_mlore", rank_list=[4] * 15, topk=2, decoder_stride=8,
        crop_size=[64, 96], backbone_kwargs={"timm_name": "convnext_atto", "out_indices": [0, 1],
                                             "model_kwargs": {"dims": [8, 16, 32, 64]}},
        loss_kwargs={"loss_weights": {"semseg": 1.0, "load_balancing": 0.1}})))
    assert cfg.spatial_size == (64 // 8) * (96 // 8)
    assert cfg.backbone_kwargs.model_kwargs == {"dims": [8, 16, 32, 64]}


@pytest.mark.parametrize("rel,scale", [("configs/demo/synthetic_pascal.yml", (128, 128)),
                                       ("configs/demo/synthetic_nyud.yml", (96, 128))])
def test_demo_configs_are_tiny(rel, scale):
    cfg = load_config(ROOT / rel)
    assert cfg.TRAIN.SCALE == scale
    assert cfg.backbone == "TaskDiffusion_vitT" and cfg.backbone_weights is None
    assert cfg.backbone_kwargs == {"embed_dim": 64, "depth": 4, "num_heads": 2, "taps": [1, 2, 3]}
    assert cfg.final_embed_dim == 32 and cfg.max_iter <= 500 and cfg.trBatch <= 4
    assert cfg.delta_m_reference is None
    assert cfg.db_root == os.path.abspath("data_root/synthetic")


# ---------------------------------------------------------------- validation errors

def test_minimal_config_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path / "c.yml", MINIMAL))
    assert cfg.TASKS.NAMES == ["semseg"] and cfg.TRAIN.SCALE == (512, 512)
    assert cfg.amp is True and cfg.grad_accum_steps == 1 and cfg.nonfinite_loss == "abort"
    assert cfg.edge_eval.full_thresholds == 101 and cfg.edge_eval.image_list is None
    assert cfg.out_dir == "runs" and cfg.output_dir == os.path.abspath(os.path.join("runs", "t"))
    assert cfg.optimizer_kwargs == {"lr": 0.001, "weight_decay": 0.0}  # optional extras stay absent
    assert cfg.loss_kwargs.loss_weights.load_balancing == pytest.approx(3e-4)


def test_tasks_follow_the_canonical_order_not_the_yaml_order(tmp_path):
    td = {"include_edge": True, "include_normals": True, "include_sal": True, "include_semseg": True}
    lw = {"edge": 50.0, "normals": 10.0, "sal": 5.0, "semseg": 1.0}
    cfg = load_config(write(tmp_path / "c.yml", with_(task_dictionary=td, loss_kwargs={"loss_weights": lw})))
    assert cfg.TASKS.NAMES == ["semseg", "sal", "normals", "edge"]
    assert list(cfg.TASKS.NUM_OUTPUT) == cfg.TASKS.NAMES and cfg.TASKS.NUM_OUTPUT == {
        "semseg": 21, "sal": 2, "normals": 3, "edge": 1}
    assert cfg.TASKS.NUM_CLASSES == {"semseg": 21, "sal": 2, "normals": -1, "edge": -1}


def test_unknown_key_suggests_the_right_one(tmp_path):
    p = write(tmp_path / "c.yml", with_(trbatch=4))
    err = error_of(p)
    assert "'trbatch'" in str(err) and "'trBatch'" in str(err) and str(p) in str(err)
    assert err.key == "trbatch" and err.file == str(p)


def test_suggestions_for_misplaced_keys_and_short_names(tmp_path):
    err = error_of(write(tmp_path / "c.yml", with_(lr=0.1)))  # belongs under optimizer_kwargs
    assert err.key == "lr" and "'optimizer_kwargs.lr'" in str(err)
    err = error_of(write(tmp_path / "d.yml", with_(backbone="vitL")))
    assert err.key == "backbone" and "'TaskDiffusion_vitL'" in str(err)


def test_unknown_nested_key_names_the_dotted_path(tmp_path):
    err = error_of(write(tmp_path / "c.yml", with_(optimizer_kwargs={"lr": 0.1, "weight_decy": 0.0})))
    assert err.key == "optimizer_kwargs.weight_decy" and "'weight_decay'" in str(err)


@pytest.mark.parametrize("key,value,words", [
    ("trBatch", "two", "expected an integer"),
    ("trBatch", 2.5, "expected an integer"),
    ("with_aux", "yes please", "expected true or false"),
    ("aux_weight", [1], "expected a number"),
    ("version_name", 3, "expected a string"),
    ("crop_size", [128], "exactly 2 entries"),
    ("task_dictionary", [1, 2], "expected a mapping"),
])
def test_wrong_type(tmp_path, key, value, words):
    err = error_of(write(tmp_path / "c.yml", with_(**{key: value})))
    assert words in str(err) and err.key.startswith(key)


@pytest.mark.parametrize("changes,key,words", [
    ({"trBatch": 0}, "trBatch", ">= 1"),
    ({"aux_weight": -1.0}, "aux_weight", ">= 0"),
    ({"drop_path_rate": 1.0}, "drop_path_rate", "< 1"),
    ({"task_dictionary": {"include_semseg": True, "edge_w": 1.5}}, "task_dictionary.edge_w", "< 1"),
    ({"optimizer_kwargs": {"lr": 0}}, "optimizer_kwargs.lr", "> 0"),
    ({"optimizer": "adagrad"}, "optimizer", "adam, adamw, sgd"),
    ({"scheduler": "step"}, "scheduler", "never usable"),
])
def test_out_of_range_or_not_allowed(tmp_path, changes, key, words):
    err = error_of(write(tmp_path / "c.yml", with_(**changes)))
    assert err.key == key and words in str(err), str(err)


def test_unknown_task(tmp_path):
    err = error_of(write(tmp_path / "c.yml", with_(task_dictionary={"include_semseg": True,
                                                                     "include_segmentation": True})))
    assert err.key == "task_dictionary.include_segmentation"
    assert "unknown task 'segmentation'" in str(err) and "include_semseg" in str(err)
    err = error_of(write(tmp_path / "d.yml", with_(loss_kwargs={"loss_weights": {"semseg": 1, "sematic": 2}})))
    assert err.key == "loss_kwargs.loss_weights.sematic" and "semseg" in str(err)


def test_unknown_dataset_suggests(tmp_path):
    err = error_of(write(tmp_path / "c.yml", with_(train_db_name="PASCAL_Context")))
    assert err.key == "train_db_name" and "PASCALContext" in str(err) and "NYUD" in str(err)


def test_task_not_on_dataset_names_file_and_key(tmp_path):
    p = write(tmp_path / "c.yml", with_(train_db_name="NYUD",
                                        task_dictionary={"include_semseg": True, "include_sal": True},
                                        loss_kwargs={"loss_weights": {"semseg": 1.0, "sal": 1.0}}))
    err = error_of(p)
    assert err.key == "task_dictionary.include_sal" and str(p) in str(err) and "not available on NYUD" in str(err)


@pytest.mark.parametrize("changes,key", [
    ({"version_name": None}, "version_name"),
    ({"loss_kwargs": {"loss_weights": {"edge": 1.0}}}, "loss_kwargs.loss_weights"),  # no semseg weight
    ({"task_dictionary": {"include_semseg": False}}, "task_dictionary"),  # no task at all
    ({"val_db_name": "NYUD"}, "val_db_name"),
    ({"crop_size": [100, 128]}, "crop_size"),
    ({"head": "TaskDiffusion_mlore_head"}, "head"),
    ({"backbone_kwargs": {"embed_dim": 64, "num_heads": 3}}, "backbone_kwargs.num_heads"),
    ({"backbone": "TaskDiffusion_vitB", "backbone_kwargs": {"taps": [3, 6, 13]}}, "backbone_kwargs.taps"),
    ({"optimizer": "adam", "optimizer_kwargs": {"lr": 0.1, "momentum": 0.9}}, "optimizer_kwargs.momentum"),
    ({"delta_m_reference": {"semseg": {"maxF": 1.0}}}, "delta_m_reference.semseg"),
    ({"TASKS": {"NAMES": ["edge"]}}, "TASKS"),  # derived keys must agree with what is derived
])
def test_cross_checks(tmp_path, changes, key):
    err = error_of(write(tmp_path / "c.yml", with_(**changes)))
    assert err.key == key, str(err)
    assert "\n" not in str(err).strip()  # one paragraph


@pytest.mark.parametrize("changes,key,words", [
    ({"topk": 3}, "rank_list", "required"),
    ({"rank_list": list(range(1, 15)), "topk": 3}, "rank_list", "exactly 15"),
    ({"rank_list": list(range(1, 16)), "topk": 16}, "topk", "<= 15"),
    ({"rank_list": list(range(1, 16)), "topk": 3, "spatial_size": 16}, "spatial_size", "1024"),
])
def test_mlore_keys(tmp_path, changes, key, words):
    err = error_of(write(tmp_path / "c.yml", with_(model="TaskDiffusion_mlore", **changes)))
    assert err.key == key and words in str(err), str(err)


def test_mlore_spatial_size_is_derived_from_the_crop(tmp_path):
    cfg = load_config(write(tmp_path / "c.yml", with_(model="TaskDiffusion_mlore", crop_size=[64, 80],
                                                      rank_list=list(range(1, 16)), topk=3)))
    assert cfg.spatial_size == 4 * 5 and cfg.head == "TaskDiffusion_mlore_head"


def test_original_unused_keys_load_unchanged(tmp_path):
    cfg = load_config(write(tmp_path / "c.yml", with_(pseudo_start=40000, intermediate_supervision=False,
                                                      epochs=999999, print_freq=200, head="TaskDiffusion_head",
                                                      optimizer="sgd",
                                                      optimizer_kwargs={"lr": 0.1, "momentum": 0.9})))
    assert cfg.pseudo_start == 40000 and cfg.epochs == 999999 and cfg.optimizer_kwargs.momentum == 0.9


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads `2e-5` as the string '2e-5'; float keys accept it as the number the user meant.
    p = write(tmp_path / "c.yml", yaml.safe_dump(with_(optimizer_kwargs={"lr": 1.0})).replace("lr: 1.0", "lr: 2e-5"))
    assert load_config(p).optimizer_kwargs.lr == pytest.approx(2e-5)


def test_bad_files(tmp_path):
    assert "not found" in str(error_of(tmp_path / "missing.yml"))
    assert "not valid YAML" in str(error_of(write(tmp_path / "b.yml", "a: [1, 2\nb: c")))
    assert "mapping" in str(error_of(write(tmp_path / "l.yml", "- 1\n- 2\n")))


# ---------------------------------------------------------------- overrides

def test_opts_nested_and_typed(tmp_path):
    p = write(tmp_path / "c.yml", with_(task_dictionary={"include_semseg": True, "include_edge": True},
                                        loss_kwargs={"loss_weights": {"semseg": 1.0, "edge": 50.0}}))
    cfg = load_config(p, opts=["optimizer_kwargs.lr=1e-3", "max_iter=10", "task_dictionary.include_edge=false",
                               "crop_size=[64, 96]", "backbone_kwargs.taps=[1,2,3]", "amp=false",
                               "edge_eval.image_list=lists/x.txt"])
    assert cfg.optimizer_kwargs.lr == pytest.approx(1e-3) and isinstance(cfg.optimizer_kwargs.lr, float)
    assert cfg.max_iter == 10 and cfg.amp is False and cfg.TASKS.NAMES == ["semseg"]
    assert cfg.TRAIN.SCALE == (64, 96) and cfg.backbone_kwargs.taps == [1, 2, 3]
    assert cfg.edge_eval.image_list == "lists/x.txt" and cfg.edge_eval.full_thresholds == 101


def test_opts_errors_name_opts(tmp_path):
    p = write(tmp_path / "c.yml", MINIMAL)
    err = error_of(p, opts=["max_iter=ten"])
    assert err.key == "max_iter" and err.file == "--opts" and "--opts" in str(err)
    err = error_of(p, opts=["max_itr=10"])
    assert "'max_iter'" in str(err)
    with pytest.raises(ConfigError, match="key=value"):
        parse_opts(["max_iter"])
    with pytest.raises(ConfigError, match="invalid key"):
        parse_opts(["a..b=1"])
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config(p, opts=["version_name.x=1"])
    err = error_of(p, opts=["seed.x=1"])  # creates a mapping where an integer belongs
    assert err.key == "seed" and err.file == "--opts"


def test_parse_opts_values_follow_yaml():
    assert parse_opts(["a=1", "b=1.5", "c=true", "d=null", "e=[1, 2]", "f={x: 1}", "g=hello", "h="]) == [
        ("a", 1), ("b", 1.5), ("c", True), ("d", None), ("e", [1, 2]), ("f", {"x": 1}), ("g", "hello"), ("h", None)]


# ---------------------------------------------------------------- inheritance

def test_base_chain_child_wins_and_merges_deeply(tmp_path):
    write(tmp_path / "base" / "root.yml", with_(max_iter=100, seed=1, optimizer_kwargs={"lr": 0.5, "weight_decay": 0.1}))
    write(tmp_path / "base" / "mid.yml", {"_base_": "root.yml", "seed": 2, "optimizer_kwargs": {"lr": 0.25}})
    p = write(tmp_path / "exp" / "child.yml", {"_base_": "../base/mid.yml", "seed": 3, "crop_size": [64, 64]})
    cfg = load_config(p)
    assert cfg.seed == 3 and cfg.max_iter == 100
    assert cfg.optimizer_kwargs == {"lr": 0.25, "weight_decay": 0.1}  # sibling kept from the root
    assert "_base_" not in cfg


def test_base_list_later_wins(tmp_path):
    write(tmp_path / "a.yml", with_(seed=1, max_iter=7))
    write(tmp_path / "b.yml", {"seed": 2})
    cfg = load_config(write(tmp_path / "c.yml", {"_base_": ["a.yml", "b.yml"], "val_interval": 3}))
    assert (cfg.seed, cfg.max_iter, cfg.val_interval) == (2, 7, 3)


def test_base_errors(tmp_path):
    write(tmp_path / "x.yml", {"_base_": "y.yml"})
    write(tmp_path / "y.yml", {"_base_": "x.yml"})
    assert "cycle" in str(error_of(tmp_path / "x.yml"))
    assert "does not exist" in str(error_of(write(tmp_path / "m.yml", {"_base_": "nope.yml"})))
    # A bad key set in a base file is reported against that base file.
    base = write(tmp_path / "bad_base.yml", with_(nworkerz=1))
    err = error_of(write(tmp_path / "child.yml", {"_base_": "bad_base.yml", "seed": 1}))
    assert err.file == str(base) and err.key == "nworkerz"


def test_child_can_null_a_base_mapping():
    cfg = load_config(CONFIGS / "demo" / "synthetic_pascal.yml")  # its base sets delta_m_reference
    assert cfg.delta_m_reference is None and cfg.TASKS.NAMES[0] == "semseg"


# ---------------------------------------------------------------- paths

def test_db_root_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path / "c.yml", with_(db_root="from_config"))
    assert load_config(p).db_root == str(tmp_path / "from_config")
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "from_env"))
    assert load_config(p).db_root == str(tmp_path / "from_env")
    assert load_config(p, data_root="from_arg").db_root == str(tmp_path / "from_arg")
    monkeypatch.setenv(DATA_ENV_VAR, "")
    assert load_config(p).db_root == str(tmp_path / "from_config")


def test_output_dir_is_joined_not_concatenated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path / "c.yml", with_(out_dir=".", version_name="exp"))
    cfg = load_config(p)
    assert cfg.output_dir == str(tmp_path / "exp")  # the original gave './.exp'-style hidden names
    assert cfg.save_dir == str(tmp_path / "exp" / "results")
    assert load_config(p, output_dir="elsewhere").output_dir == str(tmp_path / "elsewhere")
    assert "version_name" in str(error_of(write(tmp_path / "d.yml", with_(version_name="a/b"))))


# ---------------------------------------------------------------- saving

def test_save_config_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "pascal" / "vitL_mlore.yml", opts=["max_iter=123"], data_root=str(tmp_path / "d"))
    out = save_config(cfg, tmp_path / "run" / "config.yml")
    assert os.listdir(tmp_path / "run") == ["config.yml"]  # no temporary file left behind
    plain = yaml.safe_load(Path(out).read_text())
    assert plain["TRAIN"]["SCALE"] == [512, 512] and plain["max_iter"] == 123
    again = load_config(out)
    a, b = config_to_dict(cfg), config_to_dict(again)
    assert a.pop("config_file") != b.pop("config_file")
    assert a == b


def test_config_to_dict_is_plain():
    d = config_to_dict(load_config(CONFIGS / "nyud" / "vitL.yml"))
    stack = [d]
    while stack:
        x = stack.pop()
        assert type(x) in (dict, list, str, int, float, bool, type(None)), type(x)
        stack.extend(x.values() if isinstance(x, dict) else x if isinstance(x, list) else [])


def test_every_key_has_a_doc():
    stack = list(SCHEMA.items())
    while stack:
        key, spec = stack.pop()
        assert spec.doc, key
        if spec.kind == "dict":
            stack.extend((f"{key}.{k}", s) for k, s in spec.children.items())
    assert "lr" in SCHEMA["optimizer_kwargs"].children and "include_edge" in SCHEMA["task_dictionary"].children


def test_the_generic_loader_says_when_the_checks_are_not_loaded(tmp_path):
    """utils.config alone does not know the datasets, tasks or models: it says so instead of rejecting them."""
    code = ("import sys\nfrom utils.config import ConfigError, load_config\n"
            "try:\n    load_config(sys.argv[1])\nexcept ConfigError as err:\n    print(err)\n")
    p = write(tmp_path / "c.yml", MINIMAL)
    out = subprocess.run([sys.executable, "-c", code, str(p)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120).stdout
    assert "'train_db_name'" in out and "data package" in out and "engine.config.load_config" in out


def test_cross_checks_run_in_registration_order_and_may_derive(tmp_path):
    from utils import config as loader

    seen = []

    def probe(cfg, raw, chk):
        seen.append(list(cfg["TASKS"]["NAMES"]))  # derived by the data check, registered before
        cfg["probe"] = raw.get("seed", "unset")

    loader.register_config_check(probe, "probe")
    try:
        names = loader.registered_checks()
        assert names[-1] == "probe" and all(names.index("data") < names.index(n) for n in ("losses", "models", "evaluation"))
        cfg = load_config(write(tmp_path / "c.yml", with_(seed=5)))
    finally:
        loader._CHECKS.pop("probe")
    assert seen == [["semseg"]] and cfg.probe == 5


def test_cfg_get_treats_a_stored_none_as_missing():
    from types import SimpleNamespace

    assert cfg_get({"a": None}, "a", 3) == 3 and cfg_get({"a": 0}, "a", 3) == 0 and cfg_get({}, "a") is None
    assert cfg_get(SimpleNamespace(a=None, b=2), "a", 1) == 1 and cfg_get(SimpleNamespace(b=2), "b") == 2


# ---------------------------------------------------------------- main.py

def _run_main(*args, cwd=ROOT):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop(DATA_ENV_VAR, None)
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_main_exits_2_on_a_broken_config(tmp_path):
    p = write(tmp_path / "broken.yml", with_(trBatch="four"))
    r = _run_main("--config_exp", str(p), "--run_mode", "train", "--output_dir", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "trBatch" in r.stderr and str(p) in r.stderr
    assert not (tmp_path / "out").exists()  # nothing is created for an invalid config


def test_main_exits_2_on_bad_opts_and_missing_checkpoint(tmp_path):
    cfg = str(CONFIGS / "demo" / "synthetic_pascal.yml")
    r = _run_main("--config_exp", cfg, "--run_mode", "train", "--output_dir", str(tmp_path / "o"),
                  "--opts", "max_iter", "--local-rank", "0")
    assert r.returncode == 2 and "key=value" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _run_main("--config_exp", cfg, "--run_mode", "infer", "--output_dir", str(tmp_path / "o"),
                  "--opts", "max_iter=1", "--local_rank", "0")
    assert r.returncode == 2 and "--trained_model" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_main_flow_with_a_stand_in_dataset(tmp_path, monkeypatch, capsys):
    """main() validates, opens both splits and hands the resolved config over to run() (which saves it)."""
    import data
    import main

    opened = []

    class Fake:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    def fake_build(cfg, split, transform=None):
        opened.append(split)
        return Fake({"train": 5, "val": 3}[split])

    monkeypatch.setattr(data, "build_dataset", fake_build, raising=False)
    handed = []
    monkeypatch.setattr(main, "run", lambda cfg, args, datasets: handed.append(cfg) or 0)  # engine: tests/engine
    out = tmp_path / "run"
    rc = main.main(["--config_exp", str(CONFIGS / "demo" / "synthetic_nyud.yml"), "--run_mode", "train",
                    "--output_dir", str(out), "--data_root", str(tmp_path), "--seed", "7", "--eval_workers", "0"])
    text = capsys.readouterr().out
    assert rc == 0 and opened == ["train", "val"]
    assert "train 5, val 3" in text and "semseg, depth, normals, edge" in text and "96x128" in text
    assert not (out / "config.yml").exists()  # written by the engine once the model is built, not before
    saved = handed[0]
    assert saved.seed == 7 and saved.eval_workers == 0 and saved.db_root == str(tmp_path)

    def broken(cfg, split, transform=None):
        raise FileNotFoundError(f"{cfg.db_root}/NYUDv2 does not exist")

    monkeypatch.setattr(data, "build_dataset", broken)
    rc = main.main(["--config_exp", str(CONFIGS / "demo" / "synthetic_nyud.yml"), "--run_mode", "train",
                    "--output_dir", str(out), "--data_root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and "NYUDv2 does not exist" in err and "train split" in err


def test_main_rejects_missing_pretrained_file(tmp_path, capsys):
    import main

    rc = main.main(["--config_exp", str(CONFIGS / "pascal" / "vitB.yml"), "--run_mode", "train",
                    "--output_dir", str(tmp_path / "o"), "--opts", f"backbone_weights={tmp_path}/none.safetensors"])
    err = capsys.readouterr().err
    assert rc == 2 and "backbone_weights" in err and "none.safetensors" in err

