"""Config cross-checks owned by the data layer: the dataset, its enabled tasks, and the keys derived from
them (db_name, TASKS, TRAIN/TEST.SCALE, edge_w, depth_min/depth_max).

Why here: the dataset registry (data/registry.py) and the task table (data/tasks.py) decide which names
exist, which tasks a dataset has and its default crop size and edge weight; the schema
(utils/config_schema.py) only names the `DATASETS` / `TASKS` slots, which this module fills. Importing it
registers `check_data` with utils.config; it must run before the other packages' checks, which read the
keys it derives (they import this module first). engine/config.py imports every such module.
"""
from __future__ import annotations

from data import datasets as dataset_registry
from data import tasks as task_table
from utils.config import Checker, register_config_check
from utils.config_schema import DATASETS, TASKS
from utils.plain import to_plain

__all__ = ["check_data"]

DATASETS.provide(dataset_registry.DATASET_NAMES)
TASKS.provide(task_table.TASK_ORDER)

# The key a user sets instead of each derived key (named when a config sets a derived key differently).
_SOURCE_KEYS = {"edge_w": "task_dictionary.edge_w", "TRAIN": "crop_size", "TEST": "crop_size",
                "TASKS": "task_dictionary", "db_name": "train_db_name"}


def _enabled_tasks(cfg: dict, chk: Checker) -> dict:
    """{task: Task} of the include_<task>: true keys, in the canonical order; each must exist on the dataset."""
    db = cfg["train_db_name"]
    td = cfg["task_dictionary"]
    wanted = [t for t in task_table.TASK_ORDER if td.get(f"include_{t}")]
    if not wanted:
        chk.fail("task_dictionary", "enables no task; set at least one include_<task>: true.",
                 f"Tasks on {db}: {', '.join(task_table.available_tasks(db))}.")
    for t in wanted:
        try:
            task_table.task_info(db, t)
        except ValueError as err:
            chk.fail(f"task_dictionary.include_{t}", f"{err}.", "Set it to false or pick the other dataset.")
    return task_table.task_infos(db, wanted)


READER_OPTION_KEYS = ("input_size", "eval_resolution", "depth_target")  # null unless the dataset reads them


def _check_reader_options(cfg: dict, spec, chk: Checker) -> None:
    """A reader option set for a dataset whose reader does not take it would be silently ignored: refuse it."""
    taken = {key for _, key in spec.reader_config}
    for key in READER_OPTION_KEYS:
        if cfg.get(key) is not None and key not in taken:
            chk.fail(key, f"is not read by the {spec.name} reader (it takes: {', '.join(sorted(taken)) or 'none'}).",
                     "Remove it or set it to null.")
    if cfg.get("eval_resolution") is not None and cfg.get("input_size") is None:
        chk.fail("eval_resolution", "only matters with input_size (images at their own size are scored at it).",
                 "Set input_size or remove eval_resolution.")


def check_data(cfg: dict, raw: dict, chk: Checker) -> None:
    """One dataset for training and evaluation, enabled tasks it has; adds the derived keys, which a
    config (e.g. a saved config.yml) may repeat but not contradict."""
    db = cfg["train_db_name"]
    if cfg.get("val_db_name", db) != db:
        chk.fail("val_db_name", f"{cfg['val_db_name']!r} differs from train_db_name {db!r}; training and "
                                f"evaluation on different datasets is not supported.",
                 "Remove val_db_name or set it equal.")
    cfg["val_db_name"] = db
    infos = _enabled_tasks(cfg, chk)
    spec = dataset_registry.dataset_spec(db)
    _check_reader_options(cfg, spec, chk)
    scale = tuple(cfg["crop_size"]) if cfg["crop_size"] is not None else tuple(spec.crop_size)
    derived = {
        "db_name": db,
        "TASKS": {"NAMES": list(infos),
                  "NUM_OUTPUT": {t: i.num_outputs for t, i in infos.items()},
                  "NUM_CLASSES": {t: i.num_classes for t, i in infos.items()}},
        "TRAIN": {"SCALE": scale},
        "TEST": {"SCALE": scale},
        "edge_w": cfg["task_dictionary"].get("edge_w", spec.edge_w),
    }
    if "depth" in infos:  # the depth task's value range (NYUD 0..80 m; Cityscapes 0..256 m or px)
        rule = infos["depth"].sample_rule
        derived["depth_min"], derived["depth_max"] = ((float(rule[1]), float(rule[2])) if rule[0] == "clamp"
                                                      else (task_table.DEPTH_MIN, task_table.DEPTH_MAX))
    for k, v in derived.items():
        if k in raw and to_plain(raw[k]) != to_plain(v):
            src = _SOURCE_KEYS.get(k, "the dataset")
            chk.fail(k, f"is derived ({to_plain(v)!r} from {src}) but the config sets {to_plain(raw[k])!r}.",
                     f"Remove it and set {src} instead.")
    cfg.update(derived)


register_config_check(check_data, "data")
