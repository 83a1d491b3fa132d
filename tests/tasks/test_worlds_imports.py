"""The worlds package imports one way: every module alone, and no cycle among its modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import at2po.tasks.worlds

PACKAGE = at2po.tasks.worlds.__name__
SOURCES = {
    PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}": path
    for path in Path(at2po.tasks.worlds.__file__).parent.glob("*.py")
}


def _imported(module: str, path: Path) -> set[str]:
    """Modules of the package that ``module`` imports anywhere, ``TYPE_CHECKING`` blocks included.

    ``from package import name`` counts as importing ``package.name`` when that is a module.
    """
    base = module if path.stem == "__init__" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = base.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(part for part in (parent, node.module) if part)
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return (found & SOURCES.keys()) - {module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first repeated last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_the_modules_of_the_package():
    graph = {module: _imported(module, path) for module, path in SOURCES.items()}
    assert graph[f"{PACKAGE}.questions"], "the import scan found nothing: is it broken?"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_public_import_paths_still_work():
    from at2po.tasks.worlds.generator import Entity, World, WorldConfig, generate_world
    from at2po.tasks.worlds.model import Entity as ModelEntity

    assert Entity is ModelEntity
    world = generate_world(WorldConfig(n_questions=3))
    assert isinstance(world, World) and len(world.questions) == 3
