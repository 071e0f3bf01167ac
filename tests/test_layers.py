"""The layers the tree shows hold in the code:

    bus  <  actors.runtime  <  actors.cluster, actors.sessions  <  ops

* nothing imports upward: ``bus`` imports nothing of ``actors`` or ``ops``,
  the runtime nothing of the cluster, the sessions or ``ops``; the cluster
  and the session actors use the runtime and the bus, never each other;
  only ``ops`` (the operator's tools, the demo, the benchmarks) may use
  everything;
* no modules import each other in a loop.

What counts as an import: ``import`` and ``from ... import`` anywhere in a
module (a function-level import is still an import), relative ones
resolved, and a module named by a string that is imported by name
(``import_module("ops.tap")``, or an entry of a list or tuple of module
names such as the CLI's command modules). Not counted: imports under ``if
TYPE_CHECKING:`` (never run) and ``"-m", "ops.cli"`` (a process started,
not a module imported).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("bus", "actors", "ops")  # the top-level packages
#: Each room of the tree, and the rooms it may import.
ROOMS: dict[str, frozenset[str]] = {
    "bus": frozenset(),
    "actors.runtime": frozenset({"bus"}),
    "actors.cluster": frozenset({"bus", "actors.runtime"}),
    "actors.sessions": frozenset({"bus", "actors.runtime"}),
    # The asyncio client for applications: a node of its own, a cluster member on request.
    "actors.client": frozenset({"bus", "actors.runtime", "actors.cluster", "actors.sessions"}),
    "ops": frozenset({"bus", "actors.runtime", "actors.cluster", "actors.sessions", "actors.client"}),
}


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in (REPO / package).rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _module_of(name: str) -> str | None:
    """The module ``name`` is (or is in): ``actors.runtime.node.Node`` -> ``actors.runtime.node``."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules():
            return candidate
    return None


class _Imports(ast.NodeVisitor):
    def __init__(self, package: str) -> None:
        self.package = package
        self.names: list[str] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names += [alias.name for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[:len(parts) - (node.level - 1)] + ([base] if base else []))
        self.names += [base, *(f"{base}.{alias.name}" for alias in node.names)]

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self.names.append(node.args[0].value)
        self.generic_visit(node)

    def visit_List(self, node: ast.List) -> None:
        self._names_in(node.elts)
        self.generic_visit(node)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        self._names_in(node.elts)
        self.generic_visit(node)

    def _names_in(self, items: list[ast.expr]) -> None:
        before = None
        for item in items:
            value = item.value if isinstance(item, ast.Constant) else None
            if isinstance(value, str) and value in modules() and before != "-m":
                self.names.append(value)
            before = value


@cache
def imports() -> dict[str, frozenset[str]]:
    graph = {}
    for name, path in modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        visitor = _Imports(package)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[name] = frozenset(m for n in visitor.names if (m := _module_of(n)) is not None and m != name)
    return graph


def _room(module: str) -> str:
    """The room of ``module``; the ``actors`` package itself (it re-exports
    the pooled runtime) counts as the runtime."""
    for room in sorted(ROOMS, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    if module == "actors":
        return "actors.runtime"
    raise AssertionError(f"{module} is in no room of the tree: add its room to ROOMS")


def test_every_module_is_in_a_room() -> None:
    found = {m.split(".")[0] for m in modules()}
    assert found == set(LAYERS)
    assert {_room(m) for m in modules()} == set(ROOMS)
    assert "ops.cli" in modules() and "actors.runtime.node" in modules() and "bus.envelope" in modules()
    # The checker sees what it must: a function-level import, an import by name.
    assert "ops.tap" in imports()["ops.cli"]  # COMMAND_MODULES, imported by name
    assert "actors.runtime.node" in imports()["ops.cli"]  # inside cmd_node


def test_nothing_imports_upward_or_across() -> None:
    wrong = sorted(f"{a} -> {b}" for a, targets in imports().items() for b in targets
                   if _room(b) != _room(a) and _room(b) not in ROOMS[_room(a)])
    assert wrong == []


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_modules_import_each_other_in_a_loop() -> None:
    assert _cycles(dict(imports())) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}, [["a", "b", "c"]]),
    ({"a": frozenset({"b"}), "b": frozenset(), "c": frozenset({"b"})}, []),
], ids=["a loop of three", "a tree"])
def test_the_cycle_finder_finds_a_loop_and_only_a_loop(graph: dict[str, frozenset[str]],
                                                       expected: list[list[str]]) -> None:
    assert _cycles(graph) == expected


def test_the_readme_tour_names_every_module_of_every_room() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Architecture tour")
    opening = readme.index("```", start)
    tour = readme[opening:readme.index("```", opening + 3)]
    rooms = [REPO / "bus", REPO / "actors", REPO / "actors" / "runtime", REPO / "actors" / "sessions", REPO / "ops"]
    missing = []
    for room in rooms:
        for child in sorted(room.iterdir()):
            if child.name.startswith(("_", ".")) or child.name == "node_modules":
                continue
            if child.is_dir() or child.suffix in (".py", ".md"):
                if child.name not in tour:
                    missing.append(str(child.relative_to(REPO)))
    assert missing == []
