"""The house rules, checked on the source: layers, no import cycles, short functions, doctests.

The import graph is read from the source with :mod:`ast`, so imports inside functions count too.
"""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Each package and the project packages it may import (its own included).
ALLOWED = {
    "geo4d": {"geo4d"},
    "geo4d_model": {"geo4d", "geo4d_model"},
    "storage": {"geo4d", "storage"},
    "pipeline": {"geo4d", "geo4d_model", "storage", "pipeline"},
    "tasks": {"geo4d", "storage", "pipeline", "tasks"},
    "flows": {"geo4d", "storage", "pipeline", "tasks", "flows"},
    "geo4d_cli": {"geo4d", "geo4d_model", "storage", "pipeline", "tasks", "flows", "geo4d_cli"},
}
#: Third-party packages the pure layers (computation and network) never import.
ORCHESTRATION = {"prefect", "prefect_dask", "distributed", "dask", "zarr", "pyarrow", "fsspec", "s3fs"}
PURE = {"geo4d", "geo4d_model"}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ALLOWED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(module: str, level: int, current: str, is_package: bool) -> str:
    if not level:
        return module
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports (top-level names for third parties, full names for ours)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node.module or "", node.level, name, path.name == "__init__.py")
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known)
    return found


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = _modules()
    known = set(mods)
    ours: dict[str, set[str]] = {}
    third: dict[str, set[str]] = {}
    for name, path in mods.items():
        imps = _imports(name, path, known)
        ours[name] = {m for m in imps if m in known and m != name}
        third[name] = {m.split(".")[0] for m in imps if m.split(".")[0] not in ALLOWED}
    return ours, third


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _parent_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges from a module to its own package's ``__init__`` (Python imports it anyway)."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_no_import_cycle():
    ours, _ = _graph()
    assert _cycles(_parent_edges(ours)) == []


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers():
    ours, third = _graph()
    wrong = []
    for mod, deps in ours.items():
        pkg = mod.split(".")[0]
        wrong += [f"{mod} imports {d}" for d in sorted(deps) if d.split(".")[0] not in ALLOWED[pkg]]
        if pkg in PURE:
            wrong += [f"{mod} imports {t}" for t in sorted(third[mod] & ORCHESTRATION)]
    assert wrong == []


def _long_functions(paths) -> list[str]:
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    out.append(f"{where}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_functions_are_short():
    paths = list(_modules().values()) + sorted((ROOT / "benchmarks").glob("*.py"))
    assert _long_functions(paths) == []


def test_long_function_check_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    src = tmp_path / "long.py"
    src.write_text(f"def f():\n{body}\n")
    assert len(_long_functions([src])) == 1


def _doctest_modules() -> list[str]:
    return sorted(name for name, path in _modules().items() if ">>> " in path.read_text())


def _runs_examples(name: str) -> bool:
    """Whether a module has an example that is not marked ``+SKIP`` (needs a network or files)."""
    lines = [ln for ln in _modules()[name].read_text().splitlines() if ln.lstrip().startswith(">>> ")]
    return any("doctest: +SKIP" not in ln for ln in lines)


@pytest.mark.parametrize("name", _doctest_modules())
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0 or not _runs_examples(name)


#: Declared dependencies no module imports: loaded by another library at run time.
RUNTIME_PLUGINS = {"s3fs"}
#: Imported but deliberately not declared (README: an existing CUDA build must be kept).
UNDECLARED = {"torch"}


def _requirement_names(reqs: list[str]) -> set[str]:
    import re

    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _imported_distributions(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """Top-level third-party module → the distributions that provide it."""
    import importlib.metadata as md
    import sys

    dists = md.packages_distributions()
    names = {m for deps in modules.values() for m in deps if m not in sys.stdlib_module_names and m != "__future__"}
    return {m: {d.lower().replace("_", "-") for d in dists.get(m, [m])} for m in names}


def test_dependencies_match_imports():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    _, third = _graph()
    imported = _imported_distributions(third)
    undeclared = sorted(m for m, d in imported.items() if not d & (declared | UNDECLARED))
    assert undeclared == []  # imported, not declared
    provided = set().union(*imported.values())
    assert sorted(declared - provided - RUNTIME_PLUGINS) == []  # declared, never imported
    test_only = _requirement_names(project["optional-dependencies"]["test"])
    tests = {p.stem: _imports(p.stem, p, set()) for p in (ROOT / "tests").glob("*.py")}
    tests = {k: {m.split(".")[0] for m in v} for k, v in tests.items()}
    provided_tests = set().union(*_imported_distributions(tests).values())
    assert sorted(test_only - provided_tests - {"pytest-timeout"}) == []
