"""Experiment configuration: load a YAML file, inherit, override, validate against the schema, run the
registered cross-checks.

Why this module is strict: a typo in a YAML key (``trbatch``) or a string where a number belongs
(``lr: 2e-5`` is a *string* in YAML 1.1) silently changes an experiment that then runs for days.
Every key is therefore declared once in ``SCHEMA`` (utils/config_schema.py: type, allowed values or
range, default, doc) and a config is checked completely at load time, before any dataset or model is
built. Errors raise ``ConfigError`` with one paragraph naming the file, the dotted key, what is wrong and
what to do; ``main.py`` prints it and exits with status 2.

Pipeline of ``load_config(path, opts, data_root, output_dir)``:

1. read the YAML file; ``_base_`` (a path relative to the file, or a list of them) names parent
   files that are loaded first and deep-merged underneath (child wins; lists are replaced);
2. apply ``opts`` overrides ``"a.b=value"`` (value parsed by ``yaml.safe_load``, so ``1e-3`` needs a
   dot or becomes a string that float keys still accept, ``true`` is a bool, ``[1,2]`` a list);
3. validate against ``SCHEMA`` and fill defaults;
4. run every cross-check registered with ``register_config_check``, in registration order. The checks
   that concern datasets, tasks, models, losses and metrics live with those packages
   (data/config_checks.py, models/config_checks.py, ...) and derive the fields the rest of the code
   reads (``db_name``, ``TASKS``, ``TRAIN.SCALE``, ...); ``engine.config.load_config`` imports them all,
   which is why every program loads configs through it;
5. resolve the paths (data root, run folder).

The original repository's key names are kept unchanged, so its YAML files load (docs/configs.md).
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Callable, Iterable, Mapping

import yaml
from easydict import EasyDict

from utils.config_schema import (DATA_ENV_VAR, DERIVED_KEYS, OMIT, PATCH_SIZE, REQUIRED, SCHEMA, TASKS, Names,
                                 PrefixedKeys, Spec)
from utils.io import atomic_write
from utils.plain import to_plain

__all__ = [
    "ConfigError", "Spec", "SCHEMA", "DERIVED_KEYS", "Checker", "load_config", "save_config", "config_to_dict",
    "parse_opts", "register_config_check", "registered_checks", "cfg_get", "DATA_ENV_VAR", "PATCH_SIZE",
]


class ConfigError(Exception):
    """A config cannot be used. ``str(err)`` is a complete one-paragraph message for the user."""

    def __init__(self, message: str, file: str | None = None, key: str | None = None):
        super().__init__(message)
        self.file = file
        self.key = key


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


class Checker:
    """Walks the merged raw dict against SCHEMA; collects nothing, fails on the first problem.

    The cross-checks receive it too: `fail(key, problem, hint)` is how every config error is worded (file
    and dotted key first, one paragraph).
    """

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

    def names(self, key: str, slot: Names) -> Names:
        """A `Names` slot of the schema, or a failure saying whose config checks were never imported."""
        if not slot.provided:
            self.fail(key, f"the known {slot.what}s come from the {slot.owner} package, whose config checks are "
                           f"not loaded.", "Load configs with engine.config.load_config, which imports them all")
        return slot

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
        elif kind == "flag":  # true / false or one of the string choices (e.g. 'auto')
            if isinstance(v, str):
                v = v.strip().lower()
            elif not isinstance(v, bool):
                self.fail(key, f"expected true, false or one of the words {[c for c in spec.choices if isinstance(c, str)]}, "
                               f"got {_describe(v)}.")
        choices = self.names(key, spec.choices) if isinstance(spec.choices, Names) else spec.choices
        if choices is not None and v not in choices:
            self.fail(key, f"{v!r} is not allowed; choose one of: {', '.join(map(str, choices))}."
                      + _suggest(v, map(str, choices)), spec.hint)
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
            if isinstance(children, PrefixedKeys) and isinstance(k, str) and k.startswith(children.prefix):
                names = self.names(key, children.names)
                self.fail(key, f"unknown {names.what} {k[len(children.prefix):]!r}; known {names.what}s: "
                               f"{', '.join(names)}." + _suggest(k, children))
            hint = _suggest(k, children) or (_suggest_nested(k) if top else "")
            if not hint:
                hint = f" Known keys {'at the top level' if top else 'here'}: {', '.join(children)}."
            self.fail(key, "unknown key." + hint,
                      "Check the spelling (keys are case-sensitive); every key is listed in docs/configs.md.")
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
                out[k] = to_plain(spec.default)  # a fresh copy: the schema's lists stay untouched
        return out

    def free_map(self, key: str, spec: Spec, raw: Any) -> dict:
        raw = self._need_dict(key, raw)
        out = {}
        for k, v in raw.items():
            sub = f"{key}.{k}"
            if spec.key_check in ("task", "task_or_lb"):
                allowed = list(self.names(sub, TASKS)) + (["load_balancing"] if spec.key_check == "task_or_lb" else [])
                if k not in allowed:
                    self.fail(sub, f"unknown task {k!r}; known: {', '.join(allowed)}." + _suggest(k, allowed))
            elif spec.key_check == "metric" and not isinstance(k, str):
                self.fail(sub, f"metric names must be strings, got {_describe(k)}.")
            out[k] = self.value(sub, spec.value, v) if spec.value is not None else to_plain(v)
        return out


# --------------------------------------------------------------------------------------------
# Cross-checks registered by the packages that own the keys
# --------------------------------------------------------------------------------------------

_CHECKS: dict = {}  # name -> fn(cfg, raw, chk), in registration order


def register_config_check(fn: Callable[[dict, dict, Checker], None], name: str) -> Callable:
    """Run `fn(cfg, raw, chk)` in every load_config after the schema check, in registration order.

    cfg: the validated dict with defaults filled (the check may add derived keys to it); raw: the merged
    YAML as written (to see what the user set); chk: the Checker, whose `fail` words the error. Why a
    registry: the checks need the dataset, task and model tables, which live above utils; each package
    registers its own when its config_checks module is imported (engine/config.py imports them all).
    Registering a name again replaces that check in place. Returns `fn`.
    """
    _CHECKS[name] = fn
    return fn


def registered_checks() -> tuple:
    """Names of the registered cross-checks, in the order they run."""
    return tuple(_CHECKS)


def _check_run_name(cfg: dict, chk: Checker) -> None:
    """version_name becomes one folder under out_dir, so it must not be a path."""
    name = cfg["version_name"]
    if not name or os.sep in name or name in (".", ".."):
        chk.fail("version_name", f"{name!r} must be a plain folder name (no path separators).",
                 "Use out_dir for the parent folder.")


def _resolve_paths(cfg: dict, data_root: str | None, output_dir: str | None) -> None:
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    root = data_root or env or cfg["db_root"]
    cfg["db_root"] = os.path.abspath(os.path.expanduser(root))
    out = output_dir or os.path.join(cfg["out_dir"], cfg["version_name"])
    out = os.path.abspath(os.path.expanduser(out))
    cfg["output_dir"] = out
    cfg["root_dir"] = out  # the original's name for the same folder
    cfg["save_dir"] = os.path.join(out, "results")
    # the original's key for the resume file, pointed at this framework's resume file (utils/checkpoint.py)
    cfg["checkpoint"] = os.path.join(out, "checkpoints", "last.pth")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def load_config(path: str, opts: Iterable[str] | Mapping | None = None, data_root: str | None = None,
                output_dir: str | None = None) -> EasyDict:
    """Load, inherit, override, validate and cross-check an experiment config (the generic loader).

    path: YAML file (may name `_base_` files). opts: ["key.sub=value", ...] overrides.
    data_root: dataset root from the command line; precedence data_root > $TASKDIFFUSION_DATA > db_root.
    output_dir: explicit run folder (default <out_dir>/<version_name>).
    Runs the cross-checks registered so far; programs call engine.config.load_config, which registers
    them all first (without the data package's, the dataset and task names are reported as not loaded).
    Raises ConfigError (one-paragraph message naming file and key) on any problem.
    """
    path = os.fspath(path)
    origins: dict = {}
    raw = _load_with_bases(path, origins)
    raw = _apply_opts(raw, parse_opts(opts), origins)
    chk = Checker(os.path.abspath(path), origins)
    cfg = chk.mapping("", SCHEMA, raw, top=True)
    for check in tuple(_CHECKS.values()):
        check(cfg, raw, chk)
    for key in DERIVED_KEYS:  # derived keys last, in one fixed order, whichever check added them
        if key in cfg:
            cfg[key] = cfg.pop(key)
    _check_run_name(cfg, chk)
    _resolve_paths(cfg, data_root, output_dir)
    cfg["config_file"] = os.path.abspath(path)
    cfg["run_mode"] = None  # set by main.py
    return EasyDict(cfg)


def config_to_dict(cfg: Mapping) -> dict:
    """A plain dict/list/scalar copy of a config (EasyDict and tuples converted), ready for YAML."""
    return to_plain(cfg)


def save_config(cfg: Mapping, path: str) -> str:
    """Write the resolved config as YAML, atomically (temporary file in the same folder, then rename)."""
    text = ("# Resolved configuration (defaults filled, derived fields added) written by utils/config.py.\n"
            "# It can be loaded again with --config_exp.\n"
            + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None, width=100))

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(os.fspath(path), write)


def cfg_get(cfg, key: str, default=None):
    """cfg[key] of a dict-like config (EasyDict, dict, a checkpoint's copy), else the attribute cfg.key;
    `default` when the key is absent OR holds None.

    Why None counts as missing: YAML `key: null` is how a config says "the default" (eval_workers,
    ckpt_interval, ...), so every reader treats a stored None like an absent key. A reader that must tell
    null from absent uses `key in cfg` itself.
    """
    val = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if val is None else val
