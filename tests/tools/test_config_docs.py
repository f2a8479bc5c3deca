"""docs/configs.md is generated from the config schema by tools/gen_config_docs.py and must be current.

The comparisons with the committed page run the generator in a fresh interpreter, exactly as a user
would: inside the test session other tests register extra tasks and datasets (plug-in examples), which
add keys and choices to the live schema.
"""
import difflib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools import gen_config_docs as gen

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configs.md"


def _run(*code_or_args: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONHASHSEED="0", PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, *code_or_args], cwd=ROOT, env=env, capture_output=True,
                          encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_configs_md_is_current():
    """A schema change (or a change in which modules read a key) without regenerating fails here."""
    expected = _run("-m", "tools.gen_config_docs", "--stdout")
    current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    if current != expected:
        diff = "".join(list(difflib.unified_diff(current.splitlines(True), expected.splitlines(True),
                                                 "docs/configs.md (committed)", "docs/configs.md (generated)"))[:60])
        pytest.fail(f"docs/configs.md is stale: run `{gen.COMMAND}` and commit the result.\n{diff}", pytrace=False)


def test_every_schema_key_is_documented():
    text = DOC.read_text(encoding="utf-8")
    keys = _run("-c", "from tools import gen_config_docs as g\n"
                      "print('\\n'.join(k for k, _ in g.iter_keys(g.load_schema().schema)))").split()
    assert keys, "empty schema"
    missing = [k for k in keys if f'<a id="{k}"></a>`{k}`' not in text]
    assert not missing, f"keys missing from docs/configs.md: {missing}; run `{gen.COMMAND}`"
    for k in ("max_iter", "optimizer_kwargs.lr", "edge_eval.workers", "task_dictionary.include_edge"):
        assert k in keys


def test_check_flag(tmp_path, capsys):
    good = tmp_path / "configs.md"
    good.write_text(gen.generate(ROOT), encoding="utf-8")
    assert gen.main(["--check", "--output", str(good)]) == 0
    assert capsys.readouterr().err == ""
    stale = tmp_path / "stale.md"
    stale.write_text("old\n", encoding="utf-8")
    assert gen.main(["--check", "--output", str(stale)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stale" in err and gen.COMMAND in err
    assert gen.main(["--check", "--output", str(tmp_path / "absent.md")]) == 1
    assert "missing" in capsys.readouterr().err


def test_write_then_check(tmp_path):
    out = tmp_path / "docs" / "configs.md"
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0


def test_rows_show_type_default_and_readers():
    text = DOC.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith('| <a id="max_iter">'))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[1] == "int" and cells[2] == "`40000`" and cells[3] == "≥ 1"
    assert "`utils/optim.py`" in cells[5]
    lr = next(line for line in text.splitlines() if line.startswith('| <a id="optimizer_kwargs.lr">'))
    assert "**required**" in lr
    # keys the code never reads are visible as such
    unused = next(line for line in text.splitlines() if line.startswith('| <a id="intermediate_supervision">'))
    assert unused.rstrip().endswith("| — |")


def _write(root: Path, rel: str, code: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def test_reader_scan_forms(tmp_path):
    """Which spellings count as reading a key, on a miniature repository."""
    _write(tmp_path, "pkg/subscript.py", 'def f(cfg):\n    return cfg["alpha"]\n')
    _write(tmp_path, "pkg/getter.py", 'def _get(c, k, d=None):\n    return c.get(k, d)\n\n'
                                      'def f(cfg):\n    return _get(cfg, "beta") or cfg.get("gamma")\n')
    _write(tmp_path, "pkg/attr.py", "def f(self):\n    return self.cfg.delta + self.cfg.eval.workers\n")
    _write(tmp_path, "pkg/loop.py", 'def f(cfg):\n    return {k: cfg[k] for k in ("alpha", "beta")}\n')
    _write(tmp_path, "pkg/derived.py", 'def f(cfg):\n    ev = dict(cfg.get("eval") or {})\n'
                                       '    return ev.get("workers"), ev["threads"]\n')
    _write(tmp_path, "pkg/table.py", 'SPEC = dict(name="x", reader_config=(("cache", "gamma"),))\n')
    _write(tmp_path, "pkg/noise.py", '''\
        """Docstring that says alpha, beta, "delta" and workers."""
        def f(model, state):
            x = state["alpha"]                 # a dict that is not a config
            getattr(model, "beta")             # an attribute of a model
            print(f"set alpha={x}")            # a message
            return {"delta": 1}, ("workers", "eval")
        ''')
    _write(tmp_path, "tests/test_x.py", 'def test(cfg):\n    cfg["alpha"]\n')
    _write(tmp_path, "docs/x.py", 'def f(cfg):\n    cfg["alpha"]\n')
    _write(tmp_path, ".venv/lib/y.py", 'def f(cfg):\n    cfg["alpha"]\n')
    _write(tmp_path, "venv2/pyvenv.cfg", "home = /usr\n")
    _write(tmp_path, "venv2/z.py", 'def f(cfg):\n    cfg["alpha"]\n')
    files = gen.python_files(tmp_path)
    assert {f.relative_to(tmp_path).as_posix() for f in files} == {
        "pkg/subscript.py", "pkg/getter.py", "pkg/attr.py", "pkg/loop.py", "pkg/derived.py", "pkg/table.py",
        "pkg/noise.py"}
    readers = gen.scan_readers(["alpha", "beta", "gamma", "delta", "eval", "eval.workers", "eval.threads",
                                "unused"], files, root=tmp_path)
    assert readers == {
        "alpha": ["pkg/loop.py", "pkg/subscript.py"],
        "beta": ["pkg/getter.py", "pkg/loop.py"],
        "gamma": ["pkg/getter.py", "pkg/table.py"],
        "delta": ["pkg/attr.py"],
        "eval": ["pkg/attr.py", "pkg/derived.py"],
        "eval.workers": ["pkg/attr.py", "pkg/derived.py"],
        "eval.threads": ["pkg/derived.py"],
        "unused": [],
    }


def test_schema_module_declaration_does_not_count(tmp_path):
    schema = _write(tmp_path, "conf/schema.py", '''\
        SUB = {"inner": 1}
        SCHEMA = {"alpha": 1, "beta": 2, "nested": SUB}

        def derive(c):
            return c["alpha"]
        ''')
    readers = gen.scan_readers(["alpha", "beta", "nested.inner"], gen.python_files(tmp_path), schema, tmp_path)
    assert readers == {"alpha": ["conf/schema.py"], "beta": [], "nested.inner": []}


def test_schema_import_fallback():
    info = gen.load_schema(["no_such_module_for_schema", "utils.config"])
    assert "max_iter" in info.schema
    with pytest.raises(SystemExit, match="cannot find the config schema"):
        gen.load_schema(["no_such_module_for_schema", "json"])


def test_explain(capsys):
    assert gen.main(["--explain", "max_iter"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all(":" in line for line in out)
    assert any(line.startswith("utils/optim.py:") for line in out)
    assert gen.main(["--explain", "no_such_key"]) == 2


def test_schema_reexported_from_another_module(tmp_path, monkeypatch):
    """If SCHEMA moves and the old module re-exports it, the declaring module supplies sentinels and groups."""
    _write(tmp_path, "schemapkg/__init__.py", "")
    _write(tmp_path, "schemapkg/decl.py", '''\
        from dataclasses import dataclass

        REQUIRED = object()

        @dataclass(frozen=True)
        class Spec:
            kind: str
            default: object = None
            doc: str = ""

        SCHEMA = {
            # ---- first group ----
            "alpha": Spec("int", REQUIRED, "a required key"),
            # ---- second group ----
            "beta": Spec("str", "x", "an optional key"),
        }
        ''')
    _write(tmp_path, "schemapkg/reexport.py", "from schemapkg.decl import SCHEMA  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    info = gen.load_schema(["schemapkg.reexport"])
    assert info.module.__name__ == "schemapkg.decl"
    assert info.default_label(info.schema["alpha"].default) == "required"
    assert gen.source_groups(info) == [("first group", ["alpha"]), ("second group", ["beta"])]
    page = gen.render(info, {"alpha": ["x/y.py"], "beta": []})
    assert "## First group" in page and '| <a id="alpha"></a>`alpha` | int | **required** |' in page
