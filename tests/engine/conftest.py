"""Helpers for engine tests: tasks that record what they did."""

from __future__ import annotations

from typing import Any

import pytest

from aioconductor.engine import Task
from aioconductor.engine.compiler import compile_flow
from aioconductor.engine.journal import Journal
from aioconductor.events import Event, Notifier
from aioconductor.persistence.base import Store


class Log:
    """What ran and what was reverted, in order."""

    def __init__(self) -> None:
        self.executed: list[str] = []
        self.reverted: list[str] = []


class Step(Task):
    """Appends its name to the log; provides ``<name>`` unless told otherwise."""

    def __init__(self, name: str, log: Log, *, fail: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("provides", name)
        super().__init__(name, **kwargs)
        self.log = log
        self.fail = fail

    async def execute(self) -> str:
        self.log.executed.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        return f"{self.name}-done"

    async def revert(self, **kwargs: Any) -> None:
        self.log.reverted.append(self.name)


@pytest.fixture
def log() -> Log:
    return Log()


def state_changes() -> tuple[Notifier, list[tuple[str, str, str]]]:
    """A notifier, and the (atom or "flow", old state, state) of every change it is told of."""
    notifier = Notifier()
    seen: list[tuple[str, str, str]] = []
    notifier.register(
        Event.ATOM_STATE, lambda e, d: seen.append((d["atom"], d["old_state"], d["state"]))
    )
    notifier.register(
        Event.FLOW_STATE, lambda e, d: seen.append(("flow", d["old_state"], d["state"]))
    )
    return notifier, seen


async def open_journal(
    store: Store, flow: Any, notifier: Notifier, *, first_saved: bool = True
) -> tuple[Journal, Any]:
    """A journal over a new run of ``flow`` (its first node saved RUNNING with the logbook
    when ``first_saved``), loaded, and the compiled flow."""
    compiled = compile_flow(flow)
    compiled.validate(())
    journal = await Journal.open(
        store,
        book_id="job",
        book_name="job",
        detail_name=flow.name,
        token=None,
        notifier=notifier,
        flow_name=flow.name,
        fresh=True,
        first=compiled.nodes[0] if first_saved else None,
    )
    journal.load(compiled.nodes)
    return journal, compiled
