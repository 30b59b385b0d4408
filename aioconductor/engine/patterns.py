"""Flow patterns: how tasks (and nested flows) are ordered.

- :func:`linear`: one after the other;
- :func:`unordered`: all at once, in a task group;
- :func:`graph`: by data (a task that requires a name runs after the task that provides it) and
  by explicit ``links``.

Patterns nest, and each may carry a retry controller (``retry=Times(3)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Self

from aioconductor.engine.retry import Retry
from aioconductor.engine.task import Task

__all__ = ["Flow", "GraphFlow", "LinearFlow", "UnorderedFlow", "graph", "linear", "unordered"]


class Flow:
    """The base of patterns: a named, ordered collection of tasks and nested flows.

    Args:
        name: the flow's name (a logbook's flow detail is found by it).
        *children: tasks and nested flows.
        retry: the controller consulted when a task inside this flow fails.
    """

    def __init__(self, name: str, *children: Task | Flow, retry: Retry | None = None) -> None:
        self.name = name
        self.retry = retry
        self.children: list[Task | Flow] = []
        #: The engine's compilations of this flow, by shape and input names (see
        #: :func:`~aioconductor.engine.compiler.compiled_for`).
        self.compilations: dict[object, Any] = {}
        self.add(*children)

    def add(self, *children: Task | Flow) -> Self:
        """Append tasks or flows to this flow.

        Returns:
            The flow itself, so calls chain.

        Raises:
            TypeError: a child is neither a ``Task`` nor a ``Flow``.
        """
        for child in children:
            if not isinstance(child, Task | Flow):
                raise TypeError(f"flow {self.name!r}: {child!r} is neither a Task nor a Flow")
            self.children.append(child)
        return self

    def iter_tasks(self) -> Iterator[Task]:
        """Every task in this flow and its nested flows, depth first."""
        for child in self.children:
            if isinstance(child, Flow):
                yield from child.iter_tasks()
            else:
                yield child

    def __iter__(self) -> Iterator[Task | Flow]:
        return iter(self.children)

    def __len__(self) -> int:
        return len(self.children)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({len(self.children)} children)>"


class LinearFlow(Flow):
    """Runs its children one after the other, in the order given."""


class UnorderedFlow(Flow):
    """Runs its children concurrently; they must not depend on one another's outputs."""


class GraphFlow(Flow):
    """Runs its children in dependency order: data dependencies plus explicit links.

    Args:
        name: the flow's name.
        *children: tasks and nested flows.
        links: ``(a, b)`` pairs meaning ``a`` runs before ``b``; each end is a child or the
            name of one.
        retry: the controller consulted when a task inside this flow fails.
    """

    def __init__(
        self,
        name: str,
        *children: Task | Flow,
        links: Iterable[tuple[Task | Flow | str, Task | Flow | str]] = (),
        retry: Retry | None = None,
    ) -> None:
        super().__init__(name, *children, retry=retry)
        self.links: list[tuple[Task | Flow | str, Task | Flow | str]] = list(links)

    def link(self, before: Task | Flow | str, after: Task | Flow | str) -> Self:
        """Make ``before`` run before ``after`` (children, or their names).

        Returns:
            The flow itself, so calls chain.
        """
        self.links.append((before, after))
        return self


def linear(name: str, *children: Task | Flow, retry: Retry | None = None) -> LinearFlow:
    """A flow that runs ``children`` one after the other.

    Args:
        name: the flow's name.
        *children: tasks and nested flows.
        retry: the controller consulted when a task inside fails.
    """
    return LinearFlow(name, *children, retry=retry)


def unordered(name: str, *children: Task | Flow, retry: Retry | None = None) -> UnorderedFlow:
    """A flow that runs ``children`` concurrently (in one task group).

    Args:
        name: the flow's name.
        *children: tasks and nested flows; they may not depend on one another's outputs.
        retry: the controller consulted when a task inside fails.
    """
    return UnorderedFlow(name, *children, retry=retry)


def graph(
    name: str,
    *children: Task | Flow,
    links: Iterable[tuple[Task | Flow | str, Task | Flow | str]] = (),
    retry: Retry | None = None,
) -> GraphFlow:
    """A flow that runs ``children`` in dependency order, concurrently where it can.

    A child that requires a name runs after the child that provides it; ``links=[(a, b)]`` adds
    "``a`` before ``b``". A cycle is refused when the flow is compiled.

    Args:
        name: the flow's name.
        *children: tasks and nested flows.
        links: extra ordering, as ``(before, after)`` pairs of children or child names.
        retry: the controller consulted when a task inside fails.
    """
    return GraphFlow(name, *children, links=links, retry=retry)
