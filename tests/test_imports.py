"""No two modules of aioconductor import each other, however indirectly.

Every ``.py`` file under ``aioconductor/`` is read with :mod:`ast` (nothing is imported), and
every ``import`` statement in it counts, wherever it stands: at the top, under
``if TYPE_CHECKING:``, inside a function or a ``try``. An import names one module of the
package, the edge's target:

- ``import a.b.c`` names ``a.b.c``;
- ``from a.b import c`` names ``a.b.c`` when that is a module (or package) of its own, else
  ``a.b``, whose namespace ``c`` is read from; ``from a.b import *`` names ``a.b``;
- relative imports are resolved against the importing module's package first.

What is not an edge: the packages above the target. ``import a.b.c`` runs ``a/__init__.py``
and ``a/b/__init__.py`` first, but if one of them is already being imported (it is the one
importing ``a.b.c``, say), Python hands over the part-made package and goes on. So a package
``__init__`` that imports (re-exports) its own submodules is not in a cycle with them. It is
when a submodule reads a name from its package (``from aioconductor.conductor import
Conductor`` inside ``aioconductor/conductor/jobrun.py``): that is an edge to the ``__init__``,
and the name may not be there yet.

A cycle is a strongly connected set of two or more modules (or a module naming itself); the
test fails with one cycle of each such set spelled out, shortest first.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import aioconductor

PACKAGE = Path(aioconductor.__file__).resolve().parent
ROOT = PACKAGE.name


def module_name(path: Path) -> str:
    """The dotted name of the module in ``path`` (a package's ``__init__.py``: the package)."""
    parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _known(name: str, known: set[str]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (None: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The package's modules that module ``name`` (read from ``path``) imports."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, known)
                if target is not None:
                    yield target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # The package the dots count up from: a package's own name, else its parent.
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = _known(f"{base}.{alias.name}", known) if alias.name != "*" else None
                if target != f"{base}.{alias.name}":
                    target = _known(base, known)
                if target is not None:
                    yield target


def import_graph() -> dict[str, set[str]]:
    """Each module of the package, and the modules of the package it imports."""
    found = modules()
    known = set(found)
    return {name: set(imported(name, path, known)) for name, path in found.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
    return components


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One shortest cycle through the members of ``component`` (a breadth-first search)."""
    best: list[str] = []
    for start in sorted(component):
        paths = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for child in sorted(graph[node] & component):
                if child == start:
                    cycle = [*paths[node], start]
                    if not best or len(cycle) < len(best):
                        best = cycle
                    queue = []
                    break
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    queue.append(child)
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle for each set of modules that import each other."""
    found = [
        shortest_cycle(graph, component)
        for component in strongly_connected(graph)
        if len(component) > 1 or any(node in graph[node] for node in component)
    ]
    return sorted(found, key=len)


def test_no_module_of_aioconductor_imports_itself_through_others() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_the_cycle_finder_finds_cycles_and_lets_a_package_re_export_its_modules() -> None:
    # The rule above, on a made-up package: __init__ re-exports a and b; b reads a name from
    # the package: the one cycle is b -> the package -> b.
    graph = {"p": {"p.a", "p.b"}, "p.a": {"p.c"}, "p.b": {"p"}, "p.c": set()}
    assert cycles(graph) == [["p", "p.b", "p"]]
    graph["p.b"] = {"p.a"}
    assert cycles(graph) == []


def test_every_kind_of_import_statement_is_an_edge(tmp_path: Path) -> None:
    known = {"aioconductor", "aioconductor.x", "aioconductor.x.y", "aioconductor.z"}
    source = tmp_path / "__init__.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from aioconductor.z import Thing\n"
        "def late():\n"
        "    from . import y\n"
        "import aioconductor.x.y.nothing\n"
        "from .. import z\n"
    )
    assert set(imported("aioconductor.x", source, known)) == {
        "aioconductor.z",
        "aioconductor.x.y",
    }
