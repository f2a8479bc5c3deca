"""Imports only point down, and no module imports itself back through others.

Layers (docs/extending.md): utils < data < models, losses, evaluation < engine < tools, benchmarks and the
entry points (main.py, infer.py). A module may import its own layer or lower ones. Every import statement
counts, including those inside functions (a lazy import is still a dependency). String references that a
Task resolves on use (data/tasks.py `resolve`) are data, not imports.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"utils": 0, "data": 1, "models": 2, "losses": 2, "evaluation": 2, "engine": 3,
         "tools": 4, "benchmarks": 4, "main": 4, "infer": 4}
SKIP = {".venv", "tests", "docs", "runs", "data_root"}


def _modules() -> dict:
    """{dotted module name: path} of the project's Python files (tests excluded)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or rel.parts[0].startswith("."):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set:
    """Project modules imported anywhere in the file (function bodies included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int | None:
    return LAYER.get(module.split(".")[0])


def test_imports_point_down():
    upward = []
    for mod, deps in _graph().items():
        own = _layer(mod)
        if own is None:
            continue
        for dep in deps:
            other = _layer(dep)
            if other is not None and other > own:
                upward.append(f"{mod} (layer {own}) imports {dep} (layer {other})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + "."):  # a package importing its own submodules is not a cycle
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif state.get(dep) is None:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_walker_sees_imports_inside_functions():
    modules = {"utils.x": None, "engine.y": None}
    path = ROOT / "tests" / "_layer_probe.py"
    path.write_text("def f():\n    from engine import y\n", encoding="utf-8")
    try:
        assert _imports("utils.x", path, modules) == {"engine.y"}
    finally:
        path.unlink()
