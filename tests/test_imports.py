"""The package's import graph, read from the source (imports inside functions too): no module
imports itself back through others, and a stage imports only the floor and the stages before it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import mixdiff

PACKAGE = Path(mixdiff.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the mixdiff modules it imports}, `from mixdiff.a import b` counting as mixdiff.a.b
    when b is a module, else as mixdiff.a."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("mixdiff")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("mixdiff"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_the_cycle_check_sees_an_import_inside_a_function():
    graph = import_graph()
    graph["mixdiff.runs"] = graph["mixdiff.runs"] | {"mixdiff.pretrain.methods.base"}  # config's old way
    assert cycles(graph)


# The stages in the order data flows through them. The floor (config, runs, errors, io, lock, knn,
# schedules, models) is beneath them all; the drivers (quickstart, cli) are above them all.
STAGES = ("data", "generate", "pretrain", "evaluate", "report")
DRIVERS = ("quickstart", "cli")


def stage_of(module: str) -> int:
    """0 for the floor, 1.. for the stages in order, one more for the drivers."""
    part = module.split(".")[1] if "." in module else ""
    if part in STAGES:
        return 1 + STAGES.index(part)
    return 1 + len(STAGES) if part in DRIVERS else 0


def backward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point to a later stage (the floor is the first, the drivers the last)."""
    found = []
    for name, targets in graph.items():
        for target in targets:
            if stage_of(target) > stage_of(name):
                found.append(f"{name} -> {target}")
    return sorted(found)


def test_a_stage_imports_only_the_floor_and_earlier_stages():
    assert backward_imports(import_graph()) == []


def test_the_stage_check_sees_pretraining_import_evaluation():
    graph = import_graph()
    graph["mixdiff.pretrain.methods.base"] = graph["mixdiff.pretrain.methods.base"] | {
        "mixdiff.evaluate.knn"}  # the old way: the online kNN from evaluate
    assert backward_imports(graph) == ["mixdiff.pretrain.methods.base -> mixdiff.evaluate.knn"]


def test_every_module_has_a_place():
    """A new top-level module joins the floor only if it imports no stage."""
    graph = import_graph()
    floor = [name for name in graph if stage_of(name) == 0]
    for name in floor:
        assert all(stage_of(t) == 0 for t in graph[name]), (name, graph[name])
