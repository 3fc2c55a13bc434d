"""Every module imports, no two modules import each other (at any distance), and scoring
stays importable without torch."""

import ast
import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import bertml

PACKAGE = os.path.dirname(bertml.__file__)
MODULES = sorted(m.name for m in pkgutil.walk_packages(bertml.__path__, "bertml."))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def _module_file(name: str) -> str | None:
    path = os.path.join(os.path.dirname(PACKAGE), *name.split("."))
    for candidate in (path + ".py", os.path.join(path, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the bertml modules it imports anywhere in its file (top level, functions,
    TYPE_CHECKING blocks): `from bertml import x` counts as importing bertml.x."""
    names = set(MODULES)
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        with open(_module_file(name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        package = name if _module_file(name).endswith("__init__.py") else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from .y import z
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in names]
                deps.update(subs or [base])
        graph[name] = {d for d in deps if d in names and d != name and d != "bertml"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_sees_any_length():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_scoring_imports_without_torch():
    """The driver of `bertml score` never loads torch: only the scoring actors do."""
    target = "bertml.scoring"
    code = f"import sys, {target}; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(PACKAGE)}).stdout
    assert out.strip() == "[]", f"import {target} loads {out.strip()}"
