"""The compiler: turns a tree of patterns into a flat graph of atoms, and validates it.

Every task and every retry controller becomes a :class:`Node` with the nodes it must wait for
(``preds``). A retry controller's node runs before every node of its pattern (its ``members``),
so the value it provides for an attempt is there for them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

from aioconductor.engine.patterns import Flow
from aioconductor.engine.patterns import GraphFlow
from aioconductor.engine.patterns import LinearFlow
from aioconductor.engine.patterns import UnorderedFlow
from aioconductor.engine.retry import Retry
from aioconductor.engine.task import Task
from aioconductor.errors import CompilationError

__all__ = [
    "CompiledFlow",
    "Node",
    "compilation_key",
    "compile_flow",
    "keep_compilation",
]

#: How many compilations a flow keeps (per shape and set of input names): a flow whose
#: factory reuses it compiles once, whatever the number of jobs.
KEPT_COMPILATIONS = 8


@dataclass(eq=False, slots=True)
class Node:
    """One atom of a compiled flow."""

    index: int
    name: str
    atom: Task | Retry
    #: Nodes that must succeed before this one runs.
    preds: list[int] = field(default_factory=list)
    succs: list[int] = field(default_factory=list)
    #: The retry nodes whose patterns hold this node, innermost first.
    scopes: tuple[int, ...] = ()
    #: For a retry node: every node of its pattern.
    members: tuple[int, ...] = ()
    #: (parameter, storage name) pairs bound when the node runs; set by ``validate``.
    args: tuple[tuple[str, str], ...] = ()
    #: Whether this node is a retry controller (asked on every step: an isinstance of an
    #: abstract class each time was a tenth of the engine's own time on a one-task flow).
    is_retry: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_retry = isinstance(self.atom, Retry)


@dataclass(slots=True)
class _Part:
    nodes: list[int]
    sources: list[int]
    sinks: list[int]
    provides: set[str]
    needs: set[str]


@dataclass(eq=False)
class CompiledFlow:
    """A flow as a graph of nodes, ready to validate and run.

    Once validated, nothing changes its nodes: engines running at once share one.
    """

    name: str
    nodes: list[Node]
    #: Whether the flow is a line of tasks (no retry controller): no two nodes ever run at
    #: once, and a failure has nothing else to stop.
    chain: bool = field(init=False)
    #: The node a new run starts with, if it is the only one and a task.
    first: Node | None = field(init=False)

    def __post_init__(self) -> None:
        nodes = self.nodes
        self.chain = all(
            len(node.succs) <= 1 and len(node.preds) <= 1 and not node.is_retry for node in nodes
        )
        roots = [node for node in nodes if not node.preds]
        self.first = roots[0] if len(roots) == 1 and not roots[0].is_retry else None

    def validate(self, inputs: Iterable[str]) -> None:
        """Check that every node's requirements are met, and bind its arguments.

        Args:
            inputs: the names the flow is given.

        Raises:
            CompilationError: a required name is neither an input nor provided by a node that
                runs before the one that needs it.
        """
        given = frozenset(inputs)
        available: dict[int, frozenset[str]] = {}
        problems: list[str] = []
        for index in _topological(self.nodes):
            node = self.nodes[index]
            names: set[str] = set(given)
            for pred in node.preds:
                names |= available[pred]
                names.update(self.nodes[pred].atom.provides)
            available[index] = frozenset(names)
            missing = sorted(node.atom.requires - names)
            if missing:
                what = "retry controller" if node.is_retry else "task"
                problems.append(
                    f"{what} {node.name!r} requires {', '.join(map(repr, missing))}, which no "
                    f"input gives and no task before it provides"
                )
            if isinstance(node.atom, Task):
                node.args = tuple(
                    (param, key)
                    for param, key, required in node.atom.params
                    if required or key in names
                )
            else:
                node.args = tuple((key, key) for key in sorted(node.atom.requires))
        if problems:
            raise CompilationError(f"flow {self.name!r}: " + "; ".join(problems))


def compile_flow(flow: Flow) -> CompiledFlow:
    """Compile ``flow`` (a pattern, or a single task) into a :class:`CompiledFlow`.

    Raises:
        CompilationError: two atoms share a name, two atoms provide the same name, a graph has
            a cycle, or a link names something that is not a child of its graph.
    """
    nodes: list[Node] = []
    _build(flow, (), nodes)
    seen: dict[str, str] = {}
    owners: dict[str, str] = {}
    for node in nodes:
        if node.name in seen:
            raise CompilationError(f"flow {flow.name!r}: two atoms are named {node.name!r}")
        seen[node.name] = node.name
        for name in node.atom.provides:
            if name in owners:
                raise CompilationError(
                    f"flow {flow.name!r}: {owners[name]!r} and {node.name!r} both provide {name!r}"
                )
            owners[name] = node.name
    for node in nodes:
        node.preds = list(dict.fromkeys(node.preds))
        for pred in node.preds:
            nodes[pred].succs.append(node.index)
    return CompiledFlow(flow.name, nodes)


def compilation_key(flow: Flow, inputs: Iterable[str]) -> object:
    """What a compilation of ``flow`` for ``inputs`` depends on, as a hashable value: the
    flow's shape (its atoms by identity, its patterns' kinds, names, children and links) and
    the input names. A flow changed since it was compiled (a child added, a link made) has
    another key. Look a kept compilation up with ``flow.compilations.get(key)``."""
    return (_shape(flow), frozenset(inputs))


def keep_compilation(flow: Flow, key: object, compiled: CompiledFlow) -> None:
    """Keep ``compiled`` (validated for the inputs of ``key``) on ``flow``: engines given the
    same flow and input names share it instead of compiling again."""
    kept = flow.compilations
    if len(kept) >= KEPT_COMPILATIONS:
        kept.clear()
    kept[key] = compiled


def _shape(item: Task | Flow) -> object:
    # Atoms by identity (the kept compilation holds them, so their ids are not reused while it
    # is kept), and by what compiling reads of them, should one be changed after a run.
    if isinstance(item, Task):
        return (id(item), item.name, item.provides, item.params, item.requires, item.optional)
    links: tuple[object, ...] = ()
    if isinstance(item, GraphFlow):
        links = tuple(
            tuple(end if isinstance(end, str) else id(end) for end in link) for link in item.links
        )
    children = tuple(_shape(child) for child in item.children)
    retry = item.retry
    controller = None if retry is None else (id(retry), retry.name, retry.provides, retry.requires)
    return (type(item), item.name, controller, children, links)


def _new(nodes: list[Node], name: str, atom: Task | Retry, scopes: tuple[int, ...]) -> int:
    nodes.append(Node(len(nodes), name, atom, scopes=scopes))
    return len(nodes) - 1


def _build(item: Task | Flow, scopes: tuple[int, ...], nodes: list[Node]) -> _Part:
    if isinstance(item, Task):
        index = _new(nodes, item.name, item, scopes)
        needs = set(item.requires | item.optional)
        return _Part([index], [index], [index], set(item.provides), needs)
    retry_index: int | None = None
    if item.retry is not None:
        retry_name = item.retry.name or f"{item.name}.retry"
        retry_index = _new(nodes, retry_name, item.retry, scopes)
        scopes = (retry_index, *scopes)
    parts = [_build(child, scopes, nodes) for child in item.children]
    if isinstance(item, GraphFlow):
        sources, sinks = _join_graph(item, parts, nodes)
    elif isinstance(item, LinearFlow) or not isinstance(item, UnorderedFlow):
        sources, sinks = _join_linear(parts, nodes)
    else:
        sources = [s for part in parts for s in part.sources]
        sinks = [s for part in parts for s in part.sinks]
    members = [n for part in parts for n in part.nodes]
    provides = {name for part in parts for name in part.provides}
    needs = {name for part in parts for name in part.needs} - provides
    if retry_index is not None:
        retry = nodes[retry_index]
        retry.members = tuple(members)
        for source in sources:
            nodes[source].preds.append(retry_index)
        sources = [retry_index]
        sinks = sinks or [retry_index]
        members.insert(0, retry_index)
        provides |= set(retry.atom.provides)
        needs |= retry.atom.requires
    return _Part(members, sources, sinks, provides, needs)


def _join_linear(parts: list[_Part], nodes: list[Node]) -> tuple[list[int], list[int]]:
    parts = [part for part in parts if part.nodes]
    for before, after in itertools.pairwise(parts):
        for source in after.sources:
            nodes[source].preds.extend(before.sinks)
    if not parts:
        return [], []
    return list(parts[0].sources), list(parts[-1].sinks)


def _join_graph(
    flow: GraphFlow, parts: list[_Part], nodes: list[Node]
) -> tuple[list[int], list[int]]:
    children = flow.children
    by_name = {child.name: i for i, child in enumerate(children)}
    by_id = {id(child): i for i, child in enumerate(children)}

    def position(end: Task | Flow | str) -> int:
        found = by_name.get(end) if isinstance(end, str) else by_id.get(id(end))
        if found is None:
            name = end if isinstance(end, str) else end.name
            raise CompilationError(f"graph {flow.name!r}: link names {name!r}, not a child of it")
        return found

    edges: set[tuple[int, int]] = {(position(a), position(b)) for a, b in flow.links}
    for i, producer in enumerate(parts):
        for j, consumer in enumerate(parts):
            if i != j and producer.provides & consumer.needs:
                edges.add((i, j))
    incoming: dict[int, set[int]] = {j: set() for j in range(len(parts))}
    outgoing: dict[int, set[int]] = {i: set() for i in range(len(parts))}
    for i, j in edges:
        if i == j:
            raise CompilationError(f"graph {flow.name!r}: {children[i].name!r} links to itself")
        incoming[j].add(i)
        outgoing[i].add(j)
    _check_acyclic(flow, incoming)
    for i, j in edges:
        for source in parts[j].sources:
            nodes[source].preds.extend(parts[i].sinks)
    sources = [s for j, part in enumerate(parts) if not incoming[j] for s in part.sources]
    sinks = [s for i, part in enumerate(parts) if not outgoing[i] for s in part.sinks]
    return sources, sinks


def _check_acyclic(flow: GraphFlow, incoming: dict[int, set[int]]) -> None:
    left = {j: set(preds) for j, preds in incoming.items()}
    while True:
        ready = [j for j, preds in left.items() if not preds]
        if not ready:
            break
        for j in ready:
            del left[j]
        for preds in left.values():
            preds.difference_update(ready)
    if left:
        names = ", ".join(repr(flow.children[j].name) for j in sorted(left))
        raise CompilationError(f"graph {flow.name!r} has a cycle between {names}")


def _topological(nodes: list[Node]) -> list[int]:
    waiting = [len(set(node.preds)) for node in nodes]
    succs: list[set[int]] = [set() for _ in nodes]
    for node in nodes:
        for pred in set(node.preds):
            succs[pred].add(node.index)
    order = [node.index for node in nodes if not waiting[node.index]]
    for index in order:
        for succ in succs[index]:
            waiting[succ] -= 1
            if not waiting[succ]:
                order.append(succ)
    return order
