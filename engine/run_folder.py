"""The run folder before anything is written to it: can we write there, and is it this experiment's?

Why: `main.py --run_mode train` resumes automatically from `<output_dir>/checkpoints/last.pth`. A NYUD
config pointed (by mistake, or by a reused --output_dir) at a PASCAL run folder would otherwise rewrite
that run's config.yml and then fail while loading weights, leaving a folder whose config describes
another experiment than its checkpoints. These checks run before the model is built and before any file
is written; a mismatch is refused with both experiments described.

An experiment's identity is what its checkpoints depend on: the dataset, the task list and the keys that
shape the parameters (model, backbone and its sizes, decoder width, ...). Other keys (max_iter, lr,
intervals, workers) may change between a run and its resume.
"""
from __future__ import annotations

import os
from typing import Mapping

from utils.plain import to_plain

__all__ = ["RunFolderError", "IDENTITY_KEYS", "experiment_identity", "describe_experiment", "identity_differences",
           "check_writable_folder", "check_run_folder", "infer_folder"]

IDENTITY_KEYS = ("db_name", "tasks", "model", "backbone", "backbone_kwargs", "final_embed_dim", "module_layer",
                 "with_aux", "rank_list", "topk")


class RunFolderError(Exception):
    """The output folder cannot be used for this command (the message says why and what to do)."""


def experiment_identity(config: Mapping | None) -> dict:
    """{key: value} of IDENTITY_KEYS for a config (loaded cfg, saved config.yml or a checkpoint's copy)."""
    if not isinstance(config, Mapping):
        return {}
    tasks = (config.get("TASKS") or {}).get("NAMES") if isinstance(config.get("TASKS"), Mapping) else None
    ident = {"db_name": config.get("db_name") or config.get("train_db_name"), "tasks": to_plain(tasks)}
    for key in IDENTITY_KEYS[2:]:
        ident[key] = to_plain(config.get(key))
    return ident


def describe_experiment(config: Mapping | None) -> str:
    """'NYUD TaskDiffusion/vitL (tasks semseg, depth, normals, edge; C=256)', for messages."""
    ident = experiment_identity(config)
    if not ident.get("db_name") and not ident.get("model"):
        return "an experiment of unknown kind (no config stored)"
    tasks = ", ".join(ident.get("tasks") or []) or "?"
    return (f"{ident.get('db_name')} {ident.get('model')}/{ident.get('backbone')} (tasks {tasks}; "
            f"C={ident.get('final_embed_dim')})")


def identity_differences(stored: Mapping | None, requested: Mapping | None) -> list:
    """['db_name: PASCALContext (run folder) vs NYUD (requested)', ...]; [] when the identities agree."""
    a, b = experiment_identity(stored), experiment_identity(requested)
    if not a:
        return []
    return [f"{k}: {a.get(k)!r} (run folder) vs {b.get(k)!r} (requested)" for k in IDENTITY_KEYS
            if a.get(k) != b.get(k)]


def check_writable_folder(path: str, what: str = "output folder") -> None:
    """Raise RunFolderError unless `path` is, or can be created as, a folder this process can write in.

    Creates nothing: walks up to the nearest existing ancestor and checks it."""
    path = os.path.abspath(path)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise RunFolderError(f"{what} {path}: {probe} is a file, not a folder; pass another --output_dir "
                             f"(or move that file away)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(f"{what} {path}: no permission to write in {probe}; pass an --output_dir you "
                             f"can write to")


def _stored_configs(folder: str) -> list:
    """[(source description, config mapping)] of the run folder's config.yml and last.pth, when present."""
    import yaml

    out = []
    cfg_path = os.path.join(folder, "config.yml")
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as f:
                out.append((cfg_path, yaml.safe_load(f)))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            pass  # an unreadable config.yml identifies nothing; the checkpoint below still may
    last = os.path.join(folder, "checkpoints", "last.pth")
    if os.path.isfile(last):
        config = _checkpoint_config(last)
        if config is not None:
            out.append((last, config))
    return out


def _checkpoint_config(path: str):
    """The config stored in a checkpoint, read lazily (memory-mapped: a multi-GB file costs nothing) and
    safely (weights_only: no code runs); None when it cannot be read that way."""
    import torch

    try:
        ck = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - old or foreign formats: the trainer reports them when it loads
        return None
    if not isinstance(ck, Mapping):
        return None
    config = ck.get("config")
    if isinstance(config, Mapping):
        config = dict(config)
        config["_iteration"] = ck.get("iteration")
    return config


def check_run_folder(cfg) -> None:
    """Refuse a training command whose experiment differs from the one already in cfg.output_dir."""
    check_writable_folder(cfg.output_dir)
    for source, stored in _stored_configs(cfg.output_dir):
        diffs = identity_differences(stored, cfg)
        if diffs:
            it = stored.get("_iteration") if isinstance(stored, Mapping) else None
            at = f" at iteration {it}" if it is not None else ""
            raise RunFolderError(
                f"output folder {cfg.output_dir} holds another experiment: {source}{at} is "
                f"{describe_experiment(stored)}, but this command asks for {describe_experiment(cfg)} "
                f"({'; '.join(diffs)}). Training would auto-resume from that folder's last.pth; pass "
                f"--output_dir for a new run, or resume that run with its own config ({os.path.join(cfg.output_dir, 'config.yml')})")


def infer_folder(output_dir: str, checkpoint: str) -> str:
    """Where `main.py --run_mode infer` writes: `<output_dir>/infer_<checkpoint name>/`, apart from the
    training run's predictions/, metrics/ and config.yml."""
    stem = os.path.splitext(os.path.basename(checkpoint))[0] or "checkpoint"
    stem = stem.replace(".pth", "").replace(".", "_")
    return os.path.join(output_dir, f"infer_{stem}")
