"""The package's import graph has no cycle: data flows one way, table -> patcher -> route -> observations / actions.

Every import statement counts, also those inside functions (the lazy imports that keep torch and SB3
out of ``import sb3_tensorpatch``): a cycle through a lazy import is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sb3_tensorpatch

PACKAGE = Path(sb3_tensorpatch.__file__).parent
NAME = "sb3_tensorpatch"


def _modules() -> dict[str, Path]:
    return {path.stem: path for path in PACKAGE.glob("*.py")}


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``path`` imports, by module stem (``__init__`` for the package itself)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == NAME:
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] != NAME:
                continue
            if node.level > 1:
                continue  # nothing imports from above the package
            parts = (node.module or "").split(".") if node.level == 1 else (node.module or "").split(".")[1:]
            parts = [part for part in parts if part]
            if parts:
                found.add(parts[0])
            else:  # "from . import x" or "from sb3_tensorpatch import x": x is a module or a name of __init__
                found.update(alias.name if alias.name in modules else "__init__" for alias in node.names)
    found.discard(path.stem)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert {"routes", "patcher", "wrappers", "table"} <= graph.keys()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_lazy_and_package_level_imports() -> None:
    graph = _graph()
    assert "routes" in graph["patcher"]  # imported inside Patcher._apply
    assert "wrappers" in graph["routes"]
    assert "patcher" not in graph["routes"]  # the route never reaches back into the lifecycle
    assert "patcher" in graph["__init__"]
