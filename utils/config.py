"""Experiment configuration: load a YAML file, inherit, override, validate, derive.

Why this module is strict: a typo in a YAML key (``trbatch``) or a string where a number belongs
(``lr: 2e-5`` is a *string* in YAML 1.1) silently changes an experiment that then runs for days.
Every key is therefore declared once in ``SCHEMA`` (type, allowed values or range, default, doc)
and a config is checked completely at load time, before any dataset or model is built. Errors
raise ``ConfigError`` with one paragraph naming the file, the dotted key, what is wrong and what
to do; ``main.py`` prints it and exits with status 2.

Pipeline of ``load_config(path, opts, data_root)``:

1. read the YAML file; ``_base_`` (a path relative to the file, or a list of them) names parent
   files that are loaded first and deep-merged underneath (child wins; lists are replaced);
2. apply ``opts`` overrides ``"a.b=value"`` (value parsed by ``yaml.safe_load``, so ``1e-3`` needs a
   dot or becomes a string that float keys still accept, ``true`` is a bool, ``[1,2]`` a list);
3. validate against ``SCHEMA`` and fill defaults;
4. cross-check keys against each other and against the task table ``data/tasks.py``;
5. derive the fields the rest of the code reads (``db_name``, ``TASKS``, ``TRAIN.SCALE``, ...).

The original repository's key names (spec §10.2) are kept unchanged, so its YAML files load.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import yaml
from easydict import EasyDict

from data import tasks as task_table
from utils.io import atomic_write

__all__ = [
    "ConfigError", "Spec", "SCHEMA", "DERIVED_KEYS", "load_config", "save_config",
    "config_to_dict", "parse_opts", "schema_doc", "DATA_ENV_VAR", "PATCH_SIZE", "bf16_autocast",
]

DATA_ENV_VAR = "TASKDIFFUSION_DATA"
PATCH_SIZE = 16  # ViT patch size of every backbone variant (spec §3): crops must be multiples of it
NUM_EXPERTS = 15  # MLoRE experts per block, fixed by the original design (spec §5)
NUM_TAPS = 3  # intermediate backbone taps; with the final map the decoder sees 4 levels (spec §3.3)

# Model wrapper -> the original `head` value it implies (baseline has no diffusion head).
MODEL_HEADS = {"TaskDiffusion": "TaskDiffusion_head", "TaskDiffusion_mlore": "TaskDiffusion_mlore_head",
               "baseline": None}
BACKBONES = ("TaskDiffusion_vitL", "TaskDiffusion_vitB", "TaskDiffusion_vitS", "TaskDiffusion_vitT")
# Depth of the named variants, used only to check `backbone_kwargs.taps` (vitT is defined by models/).
_BACKBONE_DEPTH = {"TaskDiffusion_vitL": 24, "TaskDiffusion_vitB": 12, "TaskDiffusion_vitS": 12}


class ConfigError(Exception):
    """A config cannot be used. ``str(err)`` is a complete one-paragraph message for the user."""

    def __init__(self, message: str, file: str | None = None, key: str | None = None):
        super().__init__(message)
        self.file = file
        self.key = key


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

REQUIRED = object()  # no default: the key must be given
OMIT = object()  # optional and left out of the config when absent (e.g. optimizer extras)


@dataclass(frozen=True)
class Spec:
    """One declared key.

    kind: 'str' | 'int' | 'float' | 'bool' | 'list' | 'dict' (fixed ``children``) |
          'map' (free keys checked by ``key_check``, values by ``value``).
    default: a value, REQUIRED or OMIT. A 'dict' without a default is filled from its children.
    """

    kind: str
    default: Any = None
    doc: str = ""
    choices: tuple | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    nullable: bool = False
    item: "Spec | None" = None
    length: int | None = None
    children: "Mapping[str, Spec] | None" = None
    value: "Spec | None" = None
    key_check: str | None = None  # 'task' | 'task_or_lb' | 'metric' for 'map' kinds
    hint: str = ""


def _int(default=REQUIRED, doc="", **kw) -> Spec:
    return Spec("int", default, doc, **kw)


def _float(default=REQUIRED, doc="", **kw) -> Spec:
    return Spec("float", default, doc, **kw)


def _bool(default=REQUIRED, doc="", **kw) -> Spec:
    return Spec("bool", default, doc, **kw)


def _str(default=REQUIRED, doc="", **kw) -> Spec:
    return Spec("str", default, doc, **kw)


def _dict(children: dict, doc="", default=None, **kw) -> Spec:
    return Spec("dict", default, doc, children=children, **kw)


_TASK_DICTIONARY = {f"include_{t}": _bool(False, f"enable the {t} task") for t in task_table.TASK_ORDER}
_TASK_DICTIONARY["edge_w"] = _float(OMIT, "edge positive-class weight w of the balanced BCE "
                                          "(default per dataset: PASCAL 0.95, NYUD 0.90)", gt=0, lt=1)

SCHEMA: dict[str, Spec] = {
    # ---- experiment and data (original keys) ------------------------------------------------
    "version_name": _str(REQUIRED, "experiment name: output folder <out_dir>/<version_name>/ and result file names"),
    "out_dir": _str("runs", "parent folder of the run folder (joined as a path, not string-concatenated)"),
    "train_db_name": _str(REQUIRED, "dataset: PASCALContext or NYUD (picks crop size, classes, metrics)",
                          choices=task_table.DATASETS),
    "val_db_name": _str(OMIT, "evaluation dataset; must equal train_db_name", choices=task_table.DATASETS),
    "data_cache_dir": _str(None, "cache of derived labels (PASCAL edges, parts); null: $TASKDIFFUSION_CACHE or "
                                 "~/.cache/taskdiffusion (never inside the dataset folder)", nullable=True),
    "db_root": _str("data_root", "folder holding PASCALContext/ or NYUDv2/ (overridden by --data_root, "
                                 f"then by ${DATA_ENV_VAR}); relative paths are relative to the current directory"),
    "trBatch": _int(2, "training batch per process (per GPU)", ge=1),
    "valBatch": _int(6, "evaluation batch per process", ge=1),
    "nworkers": _int(2, "DataLoader workers per process for training", ge=0),
    "eval_workers": _int(None, "DataLoader workers for evaluation (null: nworkers); the boundary matching "
                               "processes are edge_eval.workers", ge=0, nullable=True),
    "ignore_index": _int(255, "label value meaning 'no label' (fixed by the dataset readers)", choices=(255,)),
    "seed": _int(0, "global seed (python, numpy, torch); ranks derive their own streams from it", ge=0),
    "task_dictionary": _dict(_TASK_DICTIONARY, "include_<task>: bool per task, and edge_w", default=REQUIRED),
    "crop_size": Spec("list", None, "network input [H, W] (null: dataset default, PASCAL 512x512, NYUD 448x576)",
                      nullable=True, length=2, item=_int(doc="pixels", ge=PATCH_SIZE)),
    # ---- schedule and optimisation (original keys) -------------------------------------------
    "max_iter": _int(40000, "total training iterations (optimizer steps)", ge=1),
    "epochs": _int(999999, "upper bound on epochs (training stops at max_iter)", ge=1),
    "val_interval": _int(4000, "evaluate (and checkpoint) every this many iterations, and at the end", ge=1),
    "optimizer": _str("adam", "adam (L2 weight decay, as the paper), adamw, or sgd",
                      choices=("adam", "adamw", "sgd")),
    "optimizer_kwargs": _dict({
        "lr": _float(REQUIRED, "base learning rate", gt=0),
        "weight_decay": _float(0.0, "weight decay", ge=0),
        "momentum": _float(OMIT, "SGD momentum", ge=0, lt=1),
        "nesterov": _bool(OMIT, "SGD Nesterov momentum"),
        "betas": Spec("list", OMIT, "Adam/AdamW betas", length=2, item=_float(ge=0, lt=1)),
        "eps": _float(OMIT, "Adam/AdamW epsilon", gt=0),
    }, "optimizer arguments", default=REQUIRED),
    "scheduler": _str("poly", "learning-rate schedule, stepped every iteration: lr = base*(1-k/max_iter)^power",
                      choices=("poly",),
                      hint="The original's 'step' schedule referenced a non-existent torch class and was never usable"),
    "scheduler_kwargs": _dict({
        "power": _float(0.9, "poly exponent", gt=0),
        "min_lr": _float(0.0, "lower bound of the learning rate", ge=0),
    }, "schedule arguments"),
    "warmup_iters": _int(0, "linear learning-rate warm-up iterations (0: none, as the paper)", ge=0),
    "grad_clip_param": _dict({
        "max_norm": _float(10.0, "global gradient-norm clip (null: no clipping)", gt=0, nullable=True),
        "norm_type": _float(2.0, "norm type of the clip", gt=0),
    }, "gradient clipping", nullable=True),
    "grad_accum_steps": _int(1, "micro-batches accumulated per optimizer step", ge=1),
    "no_weight_decay_norm_bias": _bool(False, "exclude norms, biases, pos-embed and embeddings from weight "
                                              "decay (the paper decays every parameter)"),
    "amp": _bool(True, "bfloat16 autocast on CUDA (on CPU only with amp_cpu; the paper trained in fp32)"),
    "amp_cpu": _bool(False, "with amp: bfloat16 autocast on CPU too (about 2x faster inference on CPUs with "
                            "native bf16, AVX512-BF16/AMX; off by default: older CPUs emulate it slowly)"),
    "compile": _bool(False, "torch.compile the model for training and evaluation (see compile_options)"),
    "compile_options": _dict({
        "scope": _str("regions", "regions: backbone, clean task features, one decoder step and the aux heads "
                                 "compiled separately, in place (models/compile.py; much shorter warm-up, "
                                 "used by evaluation too); model: torch.compile of the whole training model",
                      choices=("regions", "model")),
        "backend": _str("inductor", "torch.compile backend ('eager': trace only, for debugging)"),
        "mode": _str(None, "torch.compile mode, e.g. reduce-overhead (CUDA graphs) or max-autotune",
                     nullable=True, choices=(None, "default", "reduce-overhead", "max-autotune",
                                             "max-autotune-no-cudagraphs")),
    }, "torch.compile settings (used when compile: true)"),
    "channels_last": _bool(False, "channels-last memory format for the model and images"),
    "nonfinite_loss": _str("abort", "what to do on a NaN/Inf loss: stop with a message, or skip the step",
                           choices=("abort", "skip")),
    "ckpt_interval": _int(None, "save a checkpoint every this many iterations (null: at every evaluation)",
                          ge=1, nullable=True),
    "keep_checkpoints": _int(None, "periodic iter_XXXXXX.pth copies kept (the newest N; older ones are deleted "
                                   "after each save; last.pth and best.pth are always kept; null: keep all)",
                             ge=1, nullable=True),
    "data_errors": _str("abort", "an unreadable sample (corrupt image/label file) during training or evaluation: "
                                 "abort (save the trained iterations, then stop with the file named) or skip "
                                 "(leave the sample out, count it, summary at the end)", choices=("abort", "skip")),
    "dist_timeout_minutes": _float(30.0, "how long a distributed collective waits for the other ranks before "
                                         "the run stops with an error (a rank that died must not leave the "
                                         "others waiting forever)", gt=0),
    "print_freq": _int(200, "log training losses every this many iterations", ge=1),
    # ---- model (original keys) ------------------------------------------------------------------
    "model": _str(REQUIRED, "whole model: TaskDiffusion, TaskDiffusion_mlore, or baseline (no diffusion)",
                  choices=tuple(MODEL_HEADS)),
    "backbone": _str(REQUIRED, "ViT variant", choices=BACKBONES),
    "head": _str(OMIT, "decoder head; implied by `model` (kept for the original configs)",
                 choices=("TaskDiffusion_head", "TaskDiffusion_mlore_head"),
                 hint="The original's conv/deconv heads referenced a missing module"),
    "backbone_kwargs": _dict({
        "embed_dim": _int(OMIT, "ViT width D", ge=8),
        "depth": _int(OMIT, "number of transformer blocks", ge=1),
        "num_heads": _int(OMIT, "attention heads (must divide embed_dim)", ge=1),
        "mlp_ratio": _float(OMIT, "MLP hidden width / D", gt=0),
        "taps": Spec("list", OMIT, f"{NUM_TAPS} blocks (1-based) whose outputs feed the decoder",
                     length=NUM_TAPS, item=_int(ge=1)),
    }, "overrides of the backbone variant's sizes (tiny test models)"),
    "backbone_weights": _str(None, "pretrained ViT weights: null (random init), a local .safetensors/.pth/.npz "
                                   "path, or 'timm' (timm hub cache, needs the file there or network)",
                             nullable=True),
    "drop_path_rate": _float(0.15, "stochastic depth rate of the last ViT block (linear from 0)", ge=0, lt=1),
    "final_embed_dim": _int(REQUIRED, "decoder width C", ge=4),
    "timesteps": _int(3, "DDIM sampling steps", ge=1),
    "randsteps": _int(1, "parallel samples averaged at inference", ge=1),
    "bit_scales": _dict({"all": _float(0.01, "scale of the label bits", gt=0)}, "label-bit scale"),
    "module_layer": _int(3, "per-task refinement layers", ge=1),
    "with_aux": _bool(True, "auxiliary heads and loss"),
    "aux_weight": _float(0.25, "weight of the auxiliary loss", ge=0),
    "rank_list": Spec("list", None, f"MLoRE: ranks of the {NUM_EXPERTS} low-rank experts", nullable=True,
                      length=NUM_EXPERTS, item=_int(ge=1)),
    "topk": _int(None, f"MLoRE: experts kept per sample (1..{NUM_EXPERTS})", ge=1, le=NUM_EXPERTS, nullable=True),
    "spatial_size": _int(None, "MLoRE: token count h*w (null: derived from the crop size)", ge=1, nullable=True),
    "mlore_router_resize": _bool(False, "MLoRE: resize the router input to the configured token grid so other "
                                        "input sizes run (not the original's behaviour; off = fixed size)"),
    "clamp_returned_depth": _bool(True, "return DDIM depth logits clamped to [0, 80] as the original does "
                                        "(false: raw logits; the sampler re-embeds the clamped values either way)"),
    # ---- losses (original keys) -----------------------------------------------------------------
    "loss_kwargs": _dict({
        "loss_weights": Spec("map", REQUIRED, "per-task loss weight, plus load_balancing (MLoRE cv term)",
                             value=_float(ge=0), key_check="task_or_lb"),
    }, "loss arguments", default=REQUIRED),
    "ignore_invalid_area_depth": _bool(True, "mask depth == 0 (invalid) in the depth loss"),
    # ---- evaluation (new) -----------------------------------------------------------------------
    "edge_eval": _dict({
        "full_thresholds": _int(101, "thresholds of the final boundary odsF (SEISM uses 101)", ge=2),
        "estimate_thresholds": _int(11, "thresholds of the in-training odsF estimate", ge=2),
        "estimate_max_images": _int(50, "images used for the in-training estimate (null: all)", ge=1,
                                    nullable=True),
        "image_list": _str(None, "optional file of image ids to score (e.g. the published 2498-image PASCAL "
                                 "list); null: all val images", nullable=True),
        "workers": _int(None, "processes for boundary matching (null: all cores of this node, shared between "
                              "its ranks; 0 or 1: in the evaluating process)", ge=0, nullable=True),
        "backend": _str("scipy", "boundary matcher: scipy (fast maximum matching), pyedgeeval (SEISM's CSA, "
                                 "~100x slower, optional package) or auto (pyedgeeval when installed)",
                        choices=("scipy", "pyedgeeval", "auto")),
    }, "boundary (edge) evaluation"),
    "delta_m_reference": Spec("map", None, "reference metrics for Delta_m: {task: {metric: value}}",
                              nullable=True, key_check="task",
                              value=Spec("map", REQUIRED, "metric -> value", key_check="metric",
                                         value=_float())),
    # ---- original keys without effect (accepted so the original configs load) ------------------
    "intermediate_supervision": _bool(False, "unused (InvPT leftover)"),
    "pseudo_start": _int(OMIT, "unused"),
}

# Keys computed by load_config. A saved config contains them; on loading they must agree with what
# is derived (value keys) or are recomputed (paths and run state, which depend on where one runs).
DERIVED_VALUE_KEYS = ("db_name", "TASKS", "TRAIN", "TEST", "edge_w", "depth_min", "depth_max")
DERIVED_PATH_KEYS = ("output_dir", "root_dir", "save_dir", "checkpoint", "config_file", "run_mode")
DERIVED_KEYS = DERIVED_VALUE_KEYS + DERIVED_PATH_KEYS


# --------------------------------------------------------------------------------------------
# Reading files, inheritance, overrides
# --------------------------------------------------------------------------------------------

def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}. Pass an existing YAML file to --config_exp "
                          f"(shipped ones are under configs/pascal, configs/nyud and configs/demo).", file=path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {' '.join(str(err).split())}. Fix the syntax "
                          f"at the position shown.", file=path) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not a UTF-8 text file (byte {err.start}: {err.reason}); "
                          f"--config_exp takes a YAML file such as configs/pascal/vitL.yml.", file=path) from None
    except OSError as err:
        raise ConfigError(f"config {path} cannot be read: {err.strerror or err}; check the path and its "
                          f"permissions.", file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping of key: value lines, but its top level is a "
                          f"{type(data).__name__}.", file=path)
    return data


def _record_origins(data: Any, origin: str, prefix: str, origins: dict) -> None:
    """Remember which file (or --opts) set each dotted key, so errors name the right file."""
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}{k}"
            origins[key] = origin
            _record_origins(v, origin, key + ".", origins)


def _deep_merge(base: dict, child: dict) -> dict:
    """Child values win; nested dicts merge key by key; lists and scalars are replaced."""
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_with_bases(path: str, origins: dict, stack: tuple = ()) -> dict:
    path = os.path.abspath(path)
    if path in stack:
        chain = " -> ".join(stack + (path,))
        raise ConfigError(f"config {stack[0]}: `_base_` files include each other in a cycle ({chain}); "
                          f"remove one of the references.", file=stack[0], key="_base_")
    data = _read_yaml(path)
    bases = data.pop("_base_", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"config {path}, key '_base_': expected a file path or a list of file paths "
                          f"(relative to this file), got {bases!r}.", file=path, key="_base_")
    merged: dict = {}
    for b in bases:
        bpath = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        if not os.path.isfile(bpath):
            raise ConfigError(f"config {path}, key '_base_': the base file {bpath} does not exist (paths "
                              f"are relative to the file that names them).", file=path, key="_base_")
        merged = _deep_merge(merged, _load_with_bases(bpath, origins, stack + (path,)))
    _record_origins(data, path, "", origins)
    return _deep_merge(merged, data)


_OPT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_opts(opts: Iterable[str] | Mapping | None) -> list[tuple[str, Any]]:
    """Parse ``["a.b=1", "c=[1,2]"]`` into ``[("a.b", 1), ("c", [1, 2])]`` (values via yaml.safe_load).

    A mapping is taken as already-parsed ``{dotted_key: value}``.
    """
    if opts is None:
        return []
    if isinstance(opts, Mapping):
        return list(opts.items())
    if isinstance(opts, str):
        opts = [opts]
    out = []
    for item in opts:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} in --opts is not of the form key=value (nested keys with "
                              f"dots, e.g. optimizer_kwargs.lr=0.001 or task_dictionary.include_edge=false).",
                              file="--opts", key=str(item))
        key, text = item.split("=", 1)
        key = key.strip()
        if not _OPT_RE.match(key):
            raise ConfigError(f"override {item!r} in --opts has an invalid key {key!r}: use names separated by "
                              f"dots, e.g. optimizer_kwargs.lr=0.001.", file="--opts", key=key)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r} in --opts: the value is not valid YAML "
                              f"({' '.join(str(err).split())}); quote strings that contain ':' or '#'.",
                              file="--opts", key=key) from None
        out.append((key, value))
    return out


def _apply_opts(data: dict, pairs: list, origins: dict, origin: str = "--opts") -> dict:
    for key, value in pairs:
        if key.split(".")[0] == "_base_":
            raise ConfigError("--opts cannot change `_base_`: inheritance is resolved from the files.",
                              file=origin, key=key)
        parts = key.split(".")
        node = data
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
                origins[".".join(parts[:i + 1])] = origin  # created by this override
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {key}={value!r} in {origin}: '{'.'.join(parts[:i + 1])}' holds a "
                                  f"{type(nxt).__name__}, not a mapping, so it has no sub-key '{parts[i + 1]}'.",
                                  file=origin, key=key)
            node = nxt
        node[parts[-1]] = value
        origins[key] = origin
        _record_origins(value, origin, key + ".", origins)
    return data


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _describe(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def _suggest(word: str, options: Iterable[str]) -> str:
    """' Did you mean ...?' from close spellings, or options containing the word ('vitL')."""
    options = [str(o) for o in options]
    word = str(word)
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    if not close and len(word) >= 3:
        close = [o for o in options if word.lower() in o.lower()][:3]
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _nested_paths(schema: Mapping[str, Spec], prefix: str = "") -> list:
    out = []
    for k, s in schema.items():
        out.append(prefix + k)
        if s.kind == "dict" and s.children:
            out.extend(_nested_paths(s.children, prefix + k + "."))
    return out


def _suggest_nested(word: str) -> str:
    """A top-level key that exists one level down ('lr' -> 'optimizer_kwargs.lr')."""
    paths = [p for p in _nested_paths(SCHEMA) if "." in p]
    leaves = {p.rsplit(".", 1)[1]: p for p in paths}
    close = difflib.get_close_matches(str(word), list(leaves), n=2, cutoff=0.75)
    return f" Did you mean {' or '.join(repr(leaves[c]) for c in close)}?" if close else ""


class _Checker:
    """Walks the merged raw dict against SCHEMA; collects nothing, fails on the first problem."""

    def __init__(self, top_file: str, origins: dict):
        self.top_file = top_file
        self.origins = origins

    def file_of(self, key: str) -> str:
        k = re.sub(r"\[\d+\]", "", key)  # list entries belong to their list key
        while k:
            if k in self.origins:
                return self.origins[k]
            k = k.rpartition(".")[0]
        return self.top_file

    def fail(self, key: str, problem: str, hint: str = "") -> None:
        f = self.file_of(key)
        where = f"config {f}" if f != "--opts" else f"override in --opts (config {self.top_file})"
        msg = f"{where}, key '{key}': {problem}"
        if hint:
            msg += " " + hint.strip() + ("" if hint.rstrip().endswith((".", "?", ")")) else ".")
        raise ConfigError(msg, file=f, key=key)

    # -- one value --------------------------------------------------------------------------
    def value(self, key: str, spec: Spec, v: Any) -> Any:
        if v is None:
            if spec.nullable:
                return None
            self.fail(key, "is null but a value is needed.", spec.doc and f"({spec.doc})")
        kind = spec.kind
        if kind == "bool":
            if not isinstance(v, bool):
                self.fail(key, f"expected true or false, got {_describe(v)}.")
        elif kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(key, f"expected an integer, got {_describe(v)}.")
        elif kind == "float":
            if isinstance(v, str) and _FLOAT_RE.match(v.strip()):
                v = float(v)  # YAML 1.1 reads `2e-5` (no dot) as a string
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail(key, f"expected a number, got {_describe(v)}.")
            v = float(v)
        elif kind == "str":
            if not isinstance(v, str):
                self.fail(key, f"expected a string, got {_describe(v)}.")
        elif kind == "list":
            if not isinstance(v, (list, tuple)):
                self.fail(key, f"expected a list, got {_describe(v)}.")
            if spec.length is not None and len(v) != spec.length:
                self.fail(key, f"expected a list of exactly {spec.length} entries, got {len(v)}: {list(v)!r}.",
                          spec.doc and f"({spec.doc})")
            v = [self.value(f"{key}[{i}]", spec.item, x) for i, x in enumerate(v)] if spec.item else list(v)
        elif kind == "dict":
            v = self.mapping(key, spec.children, v)
        elif kind == "map":
            v = self.free_map(key, spec, v)
        if spec.choices is not None and v not in spec.choices:
            self.fail(key, f"{v!r} is not allowed; choose one of: {', '.join(map(str, spec.choices))}."
                      + _suggest(v, map(str, spec.choices)), spec.hint)
        self.range(key, spec, v)
        return v

    def range(self, key: str, spec: Spec, v: Any) -> None:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return
        bad = ((spec.ge is not None and v < spec.ge) or (spec.gt is not None and v <= spec.gt)
               or (spec.le is not None and v > spec.le) or (spec.lt is not None and v >= spec.lt))
        if bad:
            lo = f">= {spec.ge}" if spec.ge is not None else (f"> {spec.gt}" if spec.gt is not None else "")
            hi = f"<= {spec.le}" if spec.le is not None else (f"< {spec.lt}" if spec.lt is not None else "")
            bounds = " and ".join(b for b in (lo, hi) if b)
            self.fail(key, f"value {v!r} is out of range; it must be {bounds}.", spec.doc and f"({spec.doc})")

    # -- mappings -----------------------------------------------------------------------------
    def _need_dict(self, key: str, v: Any) -> dict:
        if not isinstance(v, dict):
            self.fail(key, f"expected a mapping of sub-keys, got {_describe(v)}.")
        return v

    def mapping(self, prefix: str, children: Mapping[str, Spec], raw: Any, top: bool = False) -> dict:
        raw = self._need_dict(prefix, raw) if not top else raw
        out = {}
        pre = f"{prefix}." if prefix else ""
        for k in raw:
            if k in children or (top and k in DERIVED_KEYS):
                continue
            key = f"{pre}{k}"
            if isinstance(k, str) and k.startswith("include_") and prefix == "task_dictionary":
                self.fail(key, f"unknown task {k[len('include_'):]!r}; known tasks: "
                               f"{', '.join(task_table.TASK_ORDER)}." + _suggest(k, children))
            hint = _suggest(k, children) or (_suggest_nested(k) if top else "")
            if not hint:
                hint = f" Known keys {'at the top level' if top else 'here'}: {', '.join(children)}."
            self.fail(key, "unknown key." + hint,
                      "Check the spelling (keys are case-sensitive); the schema is in utils/config.py.")
        for k, spec in children.items():
            key = f"{pre}{k}"
            if k in raw:
                out[k] = self.value(key, spec, raw[k])
            elif spec.default is REQUIRED:
                self.fail(key, "is missing and has no default.", spec.doc and f"Add it ({spec.doc}).")
            elif spec.default is OMIT:
                continue
            elif spec.kind == "dict" and spec.default is None:
                out[k] = self.mapping(key, spec.children, {})  # absent -> children's defaults
            else:
                out[k] = _copy(spec.default)
        return out

    def free_map(self, key: str, spec: Spec, raw: Any) -> dict:
        raw = self._need_dict(key, raw)
        out = {}
        for k, v in raw.items():
            sub = f"{key}.{k}"
            if spec.key_check in ("task", "task_or_lb"):
                allowed = list(task_table.TASK_ORDER) + (["load_balancing"] if spec.key_check == "task_or_lb" else [])
                if k not in allowed:
                    self.fail(sub, f"unknown task {k!r}; known: {', '.join(allowed)}." + _suggest(k, allowed))
            elif spec.key_check == "metric" and not isinstance(k, str):
                self.fail(sub, f"metric names must be strings, got {_describe(k)}.")
            out[k] = self.value(sub, spec.value, v)
        return out


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_copy(x) for x in v]
    return v


# --------------------------------------------------------------------------------------------
# Cross-checks and derived fields
# --------------------------------------------------------------------------------------------

def _check_and_derive(c: dict, raw: dict, chk: _Checker) -> dict:
    db = c["train_db_name"]
    if c.get("val_db_name", db) != db:
        chk.fail("val_db_name", f"{c['val_db_name']!r} differs from train_db_name {db!r}; training and "
                                f"evaluation on different datasets is not supported.", "Remove val_db_name or set it equal.")
    c["val_db_name"] = db
    if not c["version_name"] or os.sep in c["version_name"] or c["version_name"] in (".", ".."):
        chk.fail("version_name", f"{c['version_name']!r} must be a plain folder name (no path separators).",
                 "Use out_dir for the parent folder.")

    # Tasks: canonical order from the table; a task the dataset lacks is an error here.
    td = c["task_dictionary"]
    wanted = [t for t in task_table.TASK_ORDER if td.get(f"include_{t}")]
    if not wanted:
        chk.fail("task_dictionary", "enables no task; set at least one include_<task>: true.",
                 f"Tasks on {db}: {', '.join(task_table.available_tasks(db))}.")
    for t in wanted:
        try:
            task_table.task_info(db, t)
        except ValueError as err:
            chk.fail(f"task_dictionary.include_{t}", f"{err}.", "Set it to false or pick the other dataset.")
    infos = task_table.task_infos(db, wanted)
    names = list(infos)

    # Loss weights for every enabled task (the criterion reads them unconditionally).
    lw = c["loss_kwargs"]["loss_weights"]
    missing = [t for t in names if t not in lw]
    if missing:
        chk.fail("loss_kwargs.loss_weights", f"has no weight for the enabled task(s) {', '.join(missing)}.",
                 "Add e.g. `" + missing[0] + ": 1.0` (paper weights are in configs/_base_).")
    lw.setdefault("load_balancing", 0.0003)

    # Model coherence.
    model = c["model"]
    implied = MODEL_HEADS[model]
    if "head" in c and implied is not None and c["head"] != implied:
        chk.fail("head", f"{c['head']!r} does not match model {model!r}, which uses {implied!r}.",
                 "Remove `head` (the model implies it) or make them agree.")
    c["head"] = implied if implied is not None else c.get("head")

    # Input size.
    scale = tuple(c["crop_size"]) if c["crop_size"] is not None else tuple(task_table.DEFAULT_SCALE[db])
    if any(s % PATCH_SIZE for s in scale):
        chk.fail("crop_size", f"{list(scale)} is not a multiple of the ViT patch size {PATCH_SIZE} in both "
                              f"dimensions.", "Round H and W to multiples of 16.")
    grid = (scale[0] // PATCH_SIZE, scale[1] // PATCH_SIZE)

    if model == "TaskDiffusion_mlore":
        if c["rank_list"] is None:
            chk.fail("rank_list", f"is required for model TaskDiffusion_mlore: a list of {NUM_EXPERTS} expert "
                                  f"ranks (paper PASCAL: 16, 24, ..., 128).")
        if c["topk"] is None:
            chk.fail("topk", f"is required for model TaskDiffusion_mlore: experts kept per sample, 1..{NUM_EXPERTS} "
                             f"(paper: PASCAL 3, NYUD 4).")
        tokens = grid[0] * grid[1]
        if c["spatial_size"] is None:
            c["spatial_size"] = tokens
        elif c["spatial_size"] != tokens:
            chk.fail("spatial_size", f"{c['spatial_size']} must equal the token count h*w = {grid[0]}*{grid[1]} = "
                                     f"{tokens} of the {scale[0]}x{scale[1]} input (the router has a Linear over "
                                     f"the token grid).", "Set it to that value or to null (derived).")

    bk = c["backbone_kwargs"]
    depth = bk.get("depth", _BACKBONE_DEPTH.get(c["backbone"]))
    if "embed_dim" in bk and "num_heads" in bk and bk["embed_dim"] % bk["num_heads"]:
        chk.fail("backbone_kwargs.num_heads", f"{bk['num_heads']} does not divide embed_dim {bk['embed_dim']}.")
    if "taps" in bk:
        taps = bk["taps"]
        if any(b <= a for a, b in zip(taps, taps[1:])):
            chk.fail("backbone_kwargs.taps", f"{taps} must be strictly increasing block numbers.")
        if depth is not None and taps[-1] > depth:
            chk.fail("backbone_kwargs.taps", f"{taps} goes past the backbone depth {depth} (blocks count from 1).")

    opt, ok = c["optimizer"], c["optimizer_kwargs"]
    for k, valid in (("momentum", ("sgd",)), ("nesterov", ("sgd",)), ("betas", ("adam", "adamw")),
                     ("eps", ("adam", "adamw"))):
        if k in ok and opt not in valid:
            chk.fail(f"optimizer_kwargs.{k}", f"applies to optimizer {'/'.join(valid)}, not {opt!r}.",
                     "Remove it or change `optimizer`.")

    ref = c["delta_m_reference"]
    if ref:
        for t in names:
            metric = infos[t].metric
            if t not in ref or metric not in ref[t]:
                chk.fail(f"delta_m_reference.{t}", f"needs the headline metric {metric!r} of the enabled task "
                                                   f"{t!r} (Delta_m averages over all enabled tasks).",
                         "Add it, or set delta_m_reference: null to skip Delta_m.")

    # Derived fields (spec §10.2 and the team contract).
    d = {
        "db_name": db,
        "TASKS": {"NAMES": names,
                  "NUM_OUTPUT": {t: i.num_outputs for t, i in infos.items()},
                  "NUM_CLASSES": {t: i.num_classes for t, i in infos.items()}},
        "TRAIN": {"SCALE": scale},
        "TEST": {"SCALE": scale},
        "edge_w": td.get("edge_w", task_table.DEFAULT_EDGE_W[db]),
    }
    if "depth" in names:
        d["depth_min"], d["depth_max"] = task_table.DEPTH_MIN, task_table.DEPTH_MAX
    for k, v in d.items():
        if k in raw and _plain(raw[k]) != _plain(v):
            src = {"edge_w": "task_dictionary.edge_w", "TRAIN": "crop_size", "TEST": "crop_size",
                   "TASKS": "task_dictionary", "db_name": "train_db_name"}.get(k, "the dataset")
            chk.fail(k, f"is derived ({_plain(v)!r} from {src}) but the config sets {_plain(raw[k])!r}.",
                     f"Remove it and set {src} instead.")
    c.update(d)
    return c


def _plain(v: Any) -> Any:
    """Plain Python containers (dict, list) for YAML output and comparisons."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        return v.item()  # numpy / torch scalars
    return v


def _resolve_paths(c: dict, data_root: str | None, output_dir: str | None) -> None:
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    root = data_root or env or c["db_root"]
    c["db_root"] = os.path.abspath(os.path.expanduser(root))
    out = output_dir or os.path.join(c["out_dir"], c["version_name"])
    out = os.path.abspath(os.path.expanduser(out))
    c["output_dir"] = out
    c["root_dir"] = out  # the original's name for the same folder
    c["save_dir"] = os.path.join(out, "results")
    # the original's key for the resume file, pointed at this framework's resume file (utils/checkpoint.py)
    c["checkpoint"] = os.path.join(out, "checkpoints", "last.pth")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def load_config(path: str, opts: Iterable[str] | Mapping | None = None, data_root: str | None = None,
                output_dir: str | None = None) -> EasyDict:
    """Load, inherit, override, validate and derive an experiment config.

    path: YAML file (may name `_base_` files). opts: ["key.sub=value", ...] overrides.
    data_root: dataset root from the command line; precedence data_root > $TASKDIFFUSION_DATA > db_root.
    output_dir: explicit run folder (default <out_dir>/<version_name>).
    Raises ConfigError (one-paragraph message naming file and key) on any problem.
    """
    path = os.fspath(path)
    origins: dict = {}
    raw = _load_with_bases(path, origins)
    raw = _apply_opts(raw, parse_opts(opts), origins)
    chk = _Checker(os.path.abspath(path), origins)
    cfg = chk.mapping("", SCHEMA, raw, top=True)
    cfg = _check_and_derive(cfg, raw, chk)
    _resolve_paths(cfg, data_root, output_dir)
    cfg["config_file"] = os.path.abspath(path)
    cfg["run_mode"] = None  # set by main.py
    return EasyDict(cfg)


def bf16_autocast(cfg: Mapping, device) -> bool:
    """Whether forwards on `device` run under bfloat16 autocast: `amp` on CUDA, `amp` and `amp_cpu` on
    CPU. The one place that reads the two keys (training, evaluation, infer.py and the tools)."""
    if not bool(cfg.get("amp", True)):
        return False
    kind = getattr(device, "type", str(device).split(":")[0])
    return kind == "cuda" or (kind == "cpu" and bool(cfg.get("amp_cpu", False)))


def config_to_dict(cfg: Mapping) -> dict:
    """A plain dict/list/scalar copy of a config (EasyDict and tuples converted), ready for YAML."""
    return _plain(cfg)


def save_config(cfg: Mapping, path: str) -> str:
    """Write the resolved config as YAML, atomically (temporary file in the same folder, then rename)."""
    text = ("# Resolved configuration (defaults filled, derived fields added) written by utils/config.py.\n"
            "# It can be loaded again with --config_exp.\n"
            + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None, width=100))

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(os.fspath(path), write)


def schema_doc(schema: Mapping[str, Spec] = SCHEMA, prefix: str = "") -> str:
    """A plain-text table of every key, its type, default and meaning (for docs and --help)."""
    lines = []
    for k, s in schema.items():
        default = ("required" if s.default is REQUIRED else "optional" if s.default is OMIT
                   else f"default {s.default!r}")
        extra = f"; one of {', '.join(map(str, s.choices))}" if s.choices else ""
        lines.append(f"{prefix}{k}: {s.kind}, {default}{extra} - {s.doc}")
        if s.kind == "dict" and s.children:
            lines.append(schema_doc(s.children, prefix + k + "."))
    return "\n".join(lines)
