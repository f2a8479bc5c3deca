"""Generate docs/configs.md: every config key with its type, default, meaning and the modules that read it.

    .venv/bin/python -m tools.gen_config_docs            # (re)write docs/configs.md
    .venv/bin/python -m tools.gen_config_docs --check    # exit 1 with one line if docs/configs.md is stale
    .venv/bin/python -m tools.gen_config_docs --stdout   # print the page instead of writing it
    .venv/bin/python -m tools.gen_config_docs --explain edge_eval.workers   # file:line of each reader

Why generated: the schema (`SCHEMA` in utils/config_schema.py: kind, default, allowed values, doc of every key)
is what the loader enforces, so a hand-written key list would drift from it. The "read by" column is
computed too, by scanning the repository's Python files (tests/, docs/, virtual environments and run
folders excluded) for the places where a key is read from a config object. A config object is a name
`cfg` / `config` / `conf` (also as an attribute: `self.cfg`), or a variable assigned from one
(`ev = cfg.get("edge_eval") or {}`, `kw = dict(_get(cfg, "optimizer_kwargs"))`, `spec.update(cfg_part)`).
A key counts where it is

* subscripted or fetched: `cfg["max_iter"]`, `cfg.get("max_iter")`, `_get(cfg, "max_iter")`,
  `getattr(cfg, "max_iter")`, `"max_iter" in cfg` (also `"a" if x else "b"` in those places, and a loop
  variable running over a literal tuple of names: `for k in ("a", "b"): _get(cfg, k)`);
* an attribute of a config object: `cfg.max_iter`, `self.cfg.edge_eval.workers`;
* named in a declarative table whose keyword or variable name says config
  (`loss_config=(("ignore_invalid", "ignore_invalid_area_depth"),)`).

A nested key (`edge_eval.workers`) counts in a file that reads its leaf and also its parent. Docstrings,
comments and f-string messages never count. In the module that declares the schema every string
constant counts (it is the loader), except the declaration itself (the `SCHEMA = {...}` statement and
the module-level tables it is built from), so a key counts there only where the loader uses it
(cross-checks, derived fields). This is a heuristic on spelling, not a call graph; `--explain KEY`
prints the lines it counted.

The schema is imported from `engine.config` (or, should it move, from one of `SCHEMA_MODULES`); the
renderer only relies on the fields of `utils.config.Spec` it reads with getattr, so new fields do not
break it.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/gen_config_docs.py` works too
    sys.path.insert(0, str(ROOT))

DEFAULT_OUTPUT = Path("docs") / "configs.md"
COMMAND = ".venv/bin/python -m tools.gen_config_docs"
# Where the schema may live (the first that imports and has SCHEMA wins). engine.config first: importing it
# fills the schema's dataset, task and model names (and the include_<task> keys) from their packages.
SCHEMA_MODULES = ("engine.config", "utils.config", "utils.config_schema", "utils.schema", "utils.config.schema",
                  "config_schema")
# Top-level folders never scanned for readers: tests, docs, run outputs, data, weights, caches.
SKIP_TOP = {"tests", "docs", "runs", "outputs", "data_root", "pretrained", "shared", "build", "dist"}
CONFIG_NAMES = {"cfg", "config", "conf"}

__all__ = ["COMMAND", "load_schema", "iter_keys", "scan_readers", "render", "generate", "main"]


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------

class SchemaInfo:
    """SCHEMA plus what the renderer needs from its module: sentinels, derived keys, group titles."""

    def __init__(self, module):
        self.module = module
        self.schema: Mapping[str, Any] = module.SCHEMA
        self.required = getattr(module, "REQUIRED", None)
        self.omit = getattr(module, "OMIT", None)
        self.derived_value = tuple(getattr(module, "DERIVED_VALUE_KEYS", ()))
        self.derived_path = tuple(getattr(module, "DERIVED_PATH_KEYS", ()))
        self.file = Path(inspect.getsourcefile(module) or "").resolve()

    def rel_file(self) -> str:
        try:
            return self.file.relative_to(ROOT).as_posix()
        except ValueError:
            return self.file.name

    def default_label(self, default: Any) -> str | None:
        """'required' / 'unset' for the sentinels, None for an ordinary value."""
        if self.required is not None and default is self.required:
            return "required"
        if self.omit is not None and default is self.omit:
            return "unset"
        if type(default) is object:  # an unknown sentinel: name it after its module-level variable
            for name, value in vars(self.module).items():
                if value is default:
                    return "required" if "REQUIRED" in name.upper() else "unset"
            return "unset"
        return None


def _declares_schema(module) -> bool:
    """Whether the module's source assigns SCHEMA at the top level (not just imports it)."""
    try:
        text = Path(inspect.getsourcefile(module) or "").read_text(encoding="utf-8")
    except (OSError, TypeError):
        return False
    return re.search(r"^SCHEMA\b[^\n=]*=", text, re.M) is not None


def load_schema(modules: Iterable[str] = SCHEMA_MODULES) -> SchemaInfo:
    """SCHEMA from the first of `modules` that imports and has it.

    When that module only re-exports it, the module that declares it (that of its Spec class, or another
    of `modules`) supplies the sentinels, the source groups and the file left out of the reader scan."""
    errors = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        schema = getattr(module, "SCHEMA", None)
        if not isinstance(schema, Mapping):
            errors.append(f"{name}: no SCHEMA")
            continue
        if not _declares_schema(module):
            candidates = [type(next(iter(schema.values()), None)).__module__] + list(modules)
            for other in candidates:
                try:
                    mod = importlib.import_module(other)
                except ImportError:
                    continue
                if getattr(mod, "SCHEMA", None) is schema and _declares_schema(mod):
                    module = mod
                    break
        return SchemaInfo(module)
    raise SystemExit("error: cannot find the config schema (tried " + "; ".join(errors)
                     + "); update SCHEMA_MODULES in tools/gen_config_docs.py")


def iter_keys(schema: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, spec) for every key, parents before their children, in declaration order."""
    for key, spec in schema.items():
        yield prefix + key, spec
        children = getattr(spec, "children", None)
        if getattr(spec, "kind", None) == "dict" and children:
            yield from iter_keys(children, prefix + key + ".")


def source_groups(info: SchemaInfo) -> list[tuple[str, list[str]]]:
    """[(title, [top-level keys])] from the `# ---- title ----` comments inside the SCHEMA literal.

    Falls back to one untitled group when the comments are not found (e.g. the schema is built
    programmatically).
    """
    keys = list(info.schema)
    try:
        text = info.file.read_text(encoding="utf-8")
    except OSError:
        return [("", keys)]
    start = re.search(r"^SCHEMA\b[^\n]*=\s*\{", text, re.M)
    if not start:
        return [("", keys)]
    groups: list[tuple[str, list[str]]] = []
    title = ""
    key_re = re.compile(r'^\s{4}"([A-Za-z_][A-Za-z0-9_]*)"\s*:')
    head_re = re.compile(r"^\s*#\s*-{2,}\s*(.+?)\s*-*\s*$")
    for line in text[start.end():].splitlines():
        if line.startswith("}"):
            break
        m = head_re.match(line)
        if m:
            title = m.group(1)
            continue
        m = key_re.match(line)
        if m and m.group(1) in info.schema:
            if not groups or groups[-1][0] != title:
                groups.append((title, []))
            groups[-1][1].append(m.group(1))
    found = [k for _, ks in groups for k in ks]
    if sorted(found) != sorted(keys) or len(found) != len(set(found)):
        return [("", keys)]
    return groups


# --------------------------------------------------------------------------------------------------
# Who reads which key
# --------------------------------------------------------------------------------------------------

def python_files(root: Path = ROOT) -> list[Path]:
    """The repository's .py files, without tests, docs, hidden folders, virtual environments and outputs."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root)
        keep = []
        for d in sorted(dirnames):
            if d.startswith(".") or d == "__pycache__" or (here / d / "pyvenv.cfg").exists():
                continue
            if rel == Path(".") and d in SKIP_TOP:
                continue
            keep.append(d)
        dirnames[:] = keep
        out += [here / f for f in sorted(filenames) if f.endswith(".py")]
    return sorted(out)


def _docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                ids.add(id(body[0].value))
    return ids


def _target_names(stmt: ast.AST) -> set[str]:
    """Base names an assignment writes (`X = ...`, `X[...] = ...`, `X: T = ...`)."""
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    names = set()
    for t in targets:
        while isinstance(t, (ast.Subscript, ast.Attribute)):
            t = t.value
        if isinstance(t, ast.Name):
            names.add(t.id)
    return names


def _schema_declaration(tree: ast.Module) -> set[int]:
    """ids of the module-level statements that declare SCHEMA (and the dicts it is built from)."""
    stmts = [s for s in tree.body if isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign))]
    decl = [s for s in stmts if "SCHEMA" in _target_names(s)]
    if not decl:
        return set()
    used = {n.id for s in decl for n in ast.walk(s) if isinstance(n, ast.Name)}
    assigned = {n for s in stmts for n in _target_names(s)}
    helpers = (used & assigned) - {"SCHEMA"}
    return {id(s) for s in stmts if _target_names(s) & (helpers | {"SCHEMA"})}


_GETTERS = {"get", "pop", "setdefault"}  # X.get("key") on a config object
_CONFIG_WORD = re.compile(r"(cfg|config)", re.I)


class _Mentions:
    """Key names one module uses on config objects (see the module docstring for the forms)."""

    def __init__(self, tree: ast.Module, permissive: bool, skip: set[int]):
        self.keys: dict[str, list[int]] = {}  # key -> line numbers
        self.templates: list[tuple[re.Pattern, int]] = []
        self.skip = skip | _docstring_ids(tree)
        self.nodes = [n for root in tree.body if id(root) not in skip for n in ast.walk(root)]
        self.fstring_parts = {id(v) for n in self.nodes if isinstance(n, ast.JoinedStr) for v in n.values}
        if permissive:  # the config module itself: every string constant and key-like f-string
            for n in self.nodes:
                self._slot(n, anywhere=True)
            return
        self.config_names = set(CONFIG_NAMES)
        self.key_vars: dict[str, list[tuple[set[str], set[int]]]] = {}  # name -> [(values, ids in the loop)]
        self._track()
        for n in self.nodes:
            self._visit(n)

    # -- which expressions are config objects --------------------------------------------------
    def is_config(self, e: ast.AST | None) -> bool:
        if isinstance(e, ast.Name):
            return e.id in self.config_names
        if isinstance(e, ast.Attribute):
            return e.attr in CONFIG_NAMES or self.is_config(e.value)
        if isinstance(e, ast.Subscript):
            return self.is_config(e.value)
        if isinstance(e, ast.BoolOp):
            return any(self.is_config(v) for v in e.values)
        if isinstance(e, ast.IfExp):
            return self.is_config(e.body) or self.is_config(e.orelse)
        if isinstance(e, ast.Call):
            f = e.func
            if isinstance(f, ast.Attribute) and f.attr in _GETTERS and self.is_config(f.value):
                return True  # cfg.get("edge_eval")
            name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
            return bool(e.args) and self.is_config(e.args[0]) and (name.lstrip("_").endswith("get")
                                                                   or name in ("dict", "EasyDict", "copy",
                                                                               "deepcopy", "getattr"))
        return False

    def _track(self) -> None:
        """Names bound to config objects (`kw = dict(_get(cfg, "optimizer_kwargs"))`) and loop variables
        running over literal key tuples (`for k in ("a", "b")`), to a fixed point."""
        for n in self.nodes:
            if isinstance(n, ast.For):
                loops = [(n.target, n.iter)]
                scope = {id(x) for stmt in n.body + n.orelse for x in ast.walk(stmt)}
            elif isinstance(n, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                loops = [(g.target, g.iter) for g in n.generators]
                scope = {id(x) for x in ast.walk(n)}
            else:
                continue
            for target, it in loops:
                if not isinstance(it, (ast.Tuple, ast.List, ast.Set)):
                    continue
                first = target.elts[0] if isinstance(target, ast.Tuple) and target.elts else target
                if not isinstance(first, ast.Name):
                    continue
                values = set()
                for elt in it.elts:
                    if isinstance(target, ast.Tuple) and isinstance(elt, ast.Tuple) and elt.elts:
                        elt = elt.elts[0]
                    if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                        values.add(elt.value)
                if values:
                    self.key_vars.setdefault(first.id, []).append((values, scope))
        changed = True
        while changed:
            changed = False
            for n in self.nodes:
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "update" \
                        and isinstance(n.func.value, ast.Name) and any(self.is_config(a) for a in n.args):
                    targets = [n.func.value]  # spec.update(cfg_part): spec now holds config values
                elif isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None and self.is_config(n.value):
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                else:
                    continue
                for t in targets:
                    if isinstance(t, ast.Name) and t.id not in self.config_names:
                        self.config_names.add(t.id)
                        changed = True

    # -- where a key is read ---------------------------------------------------------------------
    def _slot(self, e: ast.AST | None, anywhere: bool = False) -> None:
        """Record the key(s) an expression in a key position spells."""
        if isinstance(e, ast.Constant) and isinstance(e.value, str):
            if id(e) not in self.skip and id(e) not in self.fstring_parts:
                self._add(e.value, e)
        elif isinstance(e, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else None for v in e.values]
            fixed = "".join(p for p in parts if p)
            # `f"include_{t}"`: starts with a key-like prefix; not a message, not a bare `{a}.{b}`
            if parts[0] and re.match(r"[A-Za-z_]\w{2,}", parts[0]) and not re.search(r"\s", fixed):
                pattern = re.compile("".join(re.escape(p) if p else ".+" for p in parts) + "$")
                self.templates.append((pattern, e.lineno))
        elif isinstance(e, ast.IfExp):  # _get(cfg, "trBatch" if train else "valBatch")
            self._slot(e.body, anywhere)
            self._slot(e.orelse, anywhere)
        elif not anywhere and isinstance(e, ast.Name) and e.id in self.key_vars:
            for values, scope in self.key_vars[e.id]:  # `for k in ("a", "b"): _get(cfg, k)`
                if id(e) in scope:
                    for k in sorted(values):
                        self._add(k, e)

    def _visit(self, n: ast.AST) -> None:
        if isinstance(n, ast.Attribute) and self.is_config(n.value):
            self._add(n.attr, n)  # cfg.max_iter
        elif isinstance(n, ast.Subscript) and self.is_config(n.value):
            self._slot(n.slice)  # cfg["max_iter"]
        elif isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Attribute) and f.attr in _GETTERS and self.is_config(f.value) and n.args:
                self._slot(n.args[0])  # cfg.get("max_iter")
            elif len(n.args) >= 2 and self.is_config(n.args[0]):
                self._slot(n.args[1])  # _get(cfg, "max_iter"), getattr(cfg, "max_iter")
            for kw in n.keywords:  # declarative tables: loss_config=(("edge_w", "edge_w"),)
                if kw.arg and _CONFIG_WORD.search(kw.arg):
                    for c in ast.walk(kw.value):
                        self._slot(c, anywhere=True)
        elif isinstance(n, ast.Compare) and len(n.ops) == 1 and isinstance(n.ops[0], (ast.In, ast.NotIn)) \
                and self.is_config(n.comparators[0]):
            self._slot(n.left)  # "max_iter" in cfg
        elif isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None \
                and any(_CONFIG_WORD.search(t) for t in _target_names(n)):
            for c in ast.walk(n.value):  # CONFIG_KEYS = ("a", "b")
                self._slot(c, anywhere=True)

    def _add(self, key: str, node: ast.AST) -> None:
        self.keys.setdefault(key, []).append(getattr(node, "lineno", 0))

    def lines(self, name: str) -> list[int]:
        """Line numbers where `name` is used (empty: not used)."""
        return sorted(set(self.keys.get(name, []) + [ln for t, ln in self.templates if t.match(name)]))

    def has(self, name: str) -> bool:
        return bool(self.lines(name))


def mentions(path: Path, schema_module: bool = False) -> _Mentions | None:
    """The config keys one file uses (None when it does not parse)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return None
    return _Mentions(tree, permissive=schema_module, skip=_schema_declaration(tree) if schema_module else set())


def scan_files(files: Iterable[Path] | None = None, schema_file: Path | None = None,
               root: Path = ROOT) -> dict[str, _Mentions]:
    """{repository-relative path: its config-key mentions} for the scanned files."""
    files = python_files(root) if files is None else list(files)
    this = Path(__file__).resolve()
    schema_file = schema_file.resolve() if schema_file is not None else None
    seen = {}
    for f in files:
        if f.resolve() == this:
            continue
        m = mentions(f, schema_module=f.resolve() == schema_file)
        if m is not None:
            seen[f.resolve().relative_to(root.resolve()).as_posix()] = m
    return seen


def key_lines(m: _Mentions, key: str) -> list[int]:
    """Lines of one file that read `key`: the dotted path itself, or the leaf when every parent is
    mentioned in the same file (empty: the file does not read it)."""
    parts = key.split(".")
    direct = m.lines(key)
    if direct or len(parts) == 1:
        return direct
    return m.lines(parts[-1]) if all(m.has(p) for p in parts[:-1]) else []


def scan_readers(keys: Iterable[str], files: Iterable[Path] | None = None, schema_file: Path | None = None,
                 root: Path = ROOT) -> dict[str, list[str]]:
    """{dotted key: sorted repository-relative paths of the files that read it}."""
    seen = scan_files(files, schema_file, root)
    return {key: sorted(rel for rel, m in seen.items() if key_lines(m, key)) for key in keys}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

def _yaml(value: Any) -> str:
    """A default value as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    """One table cell: one line, `|` escaped; outside `code` spans also `<`, `>` (read as HTML tags:
    `<out_dir>` would vanish) and `*` (emphasis)."""
    parts = " ".join(str(text).split()).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|")


def _bounds(spec: Any) -> str:
    out = []
    for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        v = getattr(spec, attr, None)
        if v is not None:
            out.append(f"{sym} {v:g}" if isinstance(v, (int, float)) else f"{sym} {v}")
    return " and ".join(out)


_MAP_KEYS = {"task": "task", "task_or_lb": "task or `load_balancing`", "metric": "metric"}


def type_label(spec: Any) -> str:
    kind = getattr(spec, "kind", "?")
    if kind == "list":
        item = getattr(spec, "item", None)
        inner = getattr(item, "kind", "any") if item is not None else "any"
        length = getattr(spec, "length", None)
        text = f"list of {length} {inner}" if length else f"list of {inner}"
    elif kind == "dict":
        text = "mapping (sub-keys below)"
    elif kind == "map":
        value = getattr(spec, "value", None)
        inner = type_label(value) if value is not None else "any"
        text = f"map {_MAP_KEYS.get(getattr(spec, 'key_check', None), 'name')} → {inner}"
    else:
        text = str(kind)
    if getattr(spec, "nullable", False):
        text += " or null"
    return text


def allowed_label(spec: Any) -> str:
    parts = []
    choices = getattr(spec, "choices", None)
    if choices:
        parts.append(", ".join(f"`{_yaml(c)}`" for c in choices))
    b = _bounds(spec)
    if b:
        parts.append(b)
    item = getattr(spec, "item", None)
    if item is not None:
        ib = _bounds(item)
        if ib:
            parts.append(f"each {ib}")
    value = getattr(spec, "value", None)
    if value is not None and getattr(spec, "kind", None) == "map":
        vb = allowed_label(value)
        if vb:
            parts.append(f"values {vb}")
    return "; ".join(parts)


def default_label(info: SchemaInfo, spec: Any) -> str:
    default = getattr(spec, "default", None)
    label = info.default_label(default)
    if label == "required":
        return "**required**"
    if label == "unset":
        return "unset"
    if getattr(spec, "kind", None) == "dict" and default is None:
        return "(from sub-keys)"
    return f"`{_yaml(default)}`"


HEADER = f"""<!-- GENERATED by tools/gen_config_docs.py from the config schema. Do not edit by hand:
     after changing the schema or the code that reads a key, run `{COMMAND}`. -->

# Configuration keys

Every key an experiment config may set, generated from the schema that the loader enforces
(`SCHEMA` in `{{schema_file}}`). For what the keys mean for the method see [method.md](method.md);
for the paper configs and commands see [reproducing.md](reproducing.md).

How a config is read (`utils/config.py`, `load_config`):

1. the YAML file is read; `_base_:` (a path relative to the file, or a list of paths) names parent files
   that are loaded first and merged underneath (the child wins; nested mappings merge key by key, lists
   are replaced);
2. `--opts key=value ...` overrides are applied (nested keys with dots, e.g.
   `--opts optimizer_kwargs.lr=1e-4 task_dictionary.include_edge=false`; values are parsed as YAML);
3. every key is checked against the table below and missing keys get their default. An unknown key, a
   wrong type, a value outside the allowed set or range, or a missing **required** key stops the run
   with one message naming the file, the dotted key and what to do;
4. keys are cross-checked (tasks against the dataset, loss weights for every enabled task, `head`
   against `model`, crop size a multiple of the decoder stride (16 for the paper ViTs), `backbone_kwargs`
   against the backbone kind, MLoRE keys, `delta_m_reference` covering the enabled tasks) and the
   [derived keys](#derived-keys) are computed.

The original repository's key names and YAML files load unchanged; its keys without effect are
accepted (last group below). The resolved config, with every default filled in, is saved as
`<run folder>/config.yml` and can be loaded again with `--config_exp`.

Columns: **type** (`or null`: the value may be `null`), **default** (`required`: no default, the
config must set it; `unset`: optional, absent unless given), **allowed** (choices or range),
**meaning**, and **read by**: the modules that read the key from a config object (`cfg["key"]`,
`_get(cfg, "key")`, `cfg.get("key")`, `cfg.key`, ...; a nested key where its parent is read too), found
by scanning the code (rules in `tools/gen_config_docs.py`; `{{command}} --explain KEY` prints the lines).
A key without readers is accepted but has no effect.
"""


def render(info: SchemaInfo, readers: Mapping[str, list[str]]) -> str:
    lines = [HEADER.replace("{schema_file}", info.rel_file()).replace("{command}", COMMAND).rstrip("\n"), ""]
    for title, top_keys in source_groups(info):
        if title:
            lines += [f"## {title[0].upper() + title[1:]}", ""]
        lines += ["| key | type | default | allowed | meaning | read by |",
                  "|---|---|---|---|---|---|"]
        for top in top_keys:
            for key, spec in iter_keys({top: info.schema[top]}):
                doc = getattr(spec, "doc", "") or ""
                hint = getattr(spec, "hint", "") or ""
                if hint:
                    doc = f"{doc}. Note: {hint}" if doc else hint
                mods = readers.get(key, [])
                read_by = ", ".join(f"`{m}`" for m in mods) if mods else "—"
                default = default_label(info, spec).replace("|", "\\|")  # code or **required**: no escaping
                lines.append(f'| <a id="{key}"></a>`{key}` | {_cell(type_label(spec))} | {default} | '
                             f"{_cell(allowed_label(spec))} | {_cell(doc)} | {read_by} |")
        lines.append("")
    lines += ["## Derived keys", "",
              "Computed by `load_config` from the keys above; a config must not set them (a saved "
              "`config.yml` contains them and they are checked or recomputed on loading).", ""]
    if info.derived_value:
        lines.append("* values (must agree with what is derived): "
                     + ", ".join(f"`{k}`" for k in info.derived_value))
    if info.derived_path:
        lines.append("* paths and run state (recomputed where the run starts): "
                     + ", ".join(f"`{k}`" for k in info.derived_path))
    if not (info.derived_value or info.derived_path):
        lines.append("* (the schema module declares none)")
    lines += ["", "`TASKS.NAMES` is the list of enabled tasks in the fixed task order (semseg, depth, "
                  "human_parts, sal, normals, edge), whatever the order in the YAML file; `TRAIN.SCALE` = "
                  "`TEST.SCALE` is `crop_size` or the dataset default (PASCAL-Context 512×512, NYUD-v2 "
                  "448×576); `edge_w` is `task_dictionary.edge_w` or the dataset default (0.95 / 0.90); "
                  "`output_dir` (alias `root_dir`) is `--output_dir` or `<out_dir>/<version_name>`.", ""]
    return "\n".join(lines)


def generate(root: Path = ROOT) -> str:
    info = load_schema()
    keys = [k for k, _ in iter_keys(info.schema)]
    return render(info, scan_readers(keys, python_files(root), info.file, root))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate docs/configs.md from the config schema.")
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs from the generated text")
    p.add_argument("--stdout", action="store_true", help="print the page instead of writing it")
    p.add_argument("--output", default=str(ROOT / DEFAULT_OUTPUT), help="target file (default docs/configs.md)")
    p.add_argument("--explain", metavar="KEY", help="print file:line of every place that counts as reading KEY")
    args = p.parse_args(argv)
    if args.explain:
        info = load_schema()
        known = [k for k, _ in iter_keys(info.schema)]
        if args.explain not in known:
            print(f"error: {args.explain!r} is not a schema key (dotted, e.g. edge_eval.workers)", file=sys.stderr)
            return 2
        for rel, m in scan_files(python_files(ROOT), info.file, ROOT).items():
            for line in key_lines(m, args.explain):
                print(f"{rel}:{line}")
        return 0
    text = generate()
    out = Path(args.output)
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        try:
            current = out.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != text:
            what = "is missing" if current is None else "is stale (the schema or the code reading a key changed)"
            print(f"{out} {what}: run `{COMMAND}` and commit the result", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
