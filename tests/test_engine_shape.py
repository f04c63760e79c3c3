"""The engine's shape: small classes, and no import cycles between its modules or packages.

Imports inside functions and under ``TYPE_CHECKING`` are left out: they run after every
module has loaded, so they cannot form a cycle at import time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from conftest import ENGINE_SRC

ENGINE = ENGINE_SRC / "backbone"
MAX_CLASS_LINES = 300


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ENGINE.rglob("*.py")):
        parts = path.relative_to(ENGINE_SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def top_level_imports(tree: ast.Module) -> Iterator[str]:
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(inner, ast.Import):
                yield from (alias.name for alias in inner.names)
            elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                yield inner.module
                yield from (f"{inner.module}.{alias.name}" for alias in inner.names)


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for imported in top_level_imports(ast.parse(path.read_text())):
            if imported in known and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_class_is_longer_than_300_lines() -> None:
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                # Field declarations (a settings schema grows with its settings) are data;
                # what is measured is the class's behaviour.
                fields = sum(
                    (f.end_lineno or f.lineno) - f.lineno + 1
                    for f in node.body
                    if isinstance(f, ast.AnnAssign)
                )
                lines = (node.end_lineno or node.lineno) - node.lineno + 1 - fields
                if lines > MAX_CLASS_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_no_import_cycle_between_engine_modules() -> None:
    edges = graph()
    assert sum(len(t) for t in edges.values()) > 50, "the import graph looks empty"
    assert cycle(edges) is None, " -> ".join(cycle(edges) or [])


def test_no_import_cycle_between_engine_packages() -> None:
    """``backbone.node`` and ``backbone.http`` each count as one (so do top-level modules)."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph().items():
        source = package_of(module)
        packages.setdefault(source, set()).update(
            package_of(t) for t in targets if package_of(t) != source
        )
    assert cycle(packages) is None, " -> ".join(cycle(packages) or [])


def test_the_checker_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
