"""Fakes for your own tests: an in-memory board and store you can look into, no server needed.

Example::

    from aioconductor.testing import InMemoryJobBoard, InMemoryStore, drain

    async def test_my_flow():
        async with InMemoryJobBoard() as board, InMemoryStore() as store:
            job = await board.post("j", "my-flow", {"x": 1})
            await drain(board, flows, store=store)
            assert board.job(job.id).result == {"y": 2}
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel

from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.conductor import Conductor
from aioconductor.conductor import ConductorStats
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import LogBook
from aioconductor.registry import FlowRegistry

__all__ = ["FakeClock", "InMemoryJobBoard", "InMemoryStore", "drain"]


class FakeClock:
    """A wall clock that moves only when told, for tests of schedules
    (``Conductor(..., clock=FakeClock(start))``): no test waits for a real minute.

    Example::

        clock = FakeClock(1_767_225_600.0)  # 2026-01-01T00:00:00Z
        conductor = Conductor("c", board, flows=flows, schedules=[...], clock=clock)
        ...
        clock.advance(60)  # the next minute's tick is due: sleepers wake
    """

    def __init__(self, start: float) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def time(self) -> float:
        """Now, on this clock (epoch seconds)."""
        return self._now

    def set(self, now: float) -> None:
        """Move the clock to ``now`` (forward or back) and wake those whose sleep ended."""
        self._now = float(now)
        waking = [event for until, event in self._sleepers if until <= self._now]
        self._sleepers = [(until, e) for until, e in self._sleepers if until > self._now]
        for event in waking:
            event.set()

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.set(self._now + seconds)

    async def sleep_until(self, when: float) -> None:
        """Wait until this clock is moved to ``when`` or later."""
        if when <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._sleepers.append((when, event))
        await event.wait()


class InMemoryJobBoard(MemoryJobBoard):
    """A private memory board with synchronous introspection for assertions."""

    @property
    def jobs(self) -> list[Job]:
        """Every job, in board order (priority, then post order)."""
        return [record.to_job() for record in self._select(None)]

    def job(self, job_id: str) -> Job:
        """The job with that id (raises ``JobNotFound``)."""
        return self._record(job_id).to_job()

    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (as stored: due scheduled jobs count as SCHEDULED)."""
        counts = dict.fromkeys(JobState, 0)
        for record in self._space.jobs.values():
            counts[record.state] += 1
        return counts


class InMemoryStore(MemoryStore):
    """A memory store with synchronous introspection for assertions."""

    @property
    def books(self) -> dict[str, LogBook]:
        """Every logbook by uuid (copies)."""
        return {uuid: book.model_copy(deep=True) for uuid, book in self._books.items()}

    def atom_states(self, book_uuid: str) -> dict[str, AtomState]:
        """The state of every atom of every flow in a logbook, by atom name."""
        book = self._book(book_uuid)
        return {
            name: atom.state for flow in book.flows.values() for name, atom in flow.atoms.items()
        }


async def drain(
    board: MemoryJobBoard,
    flows: FlowRegistry,
    *,
    store: MemoryStore | None = None,
    max_concurrency: int = 8,
    **conductor_kwargs: Any,
) -> ConductorStats:
    """Run a conductor until every job on ``board`` is finished; return what it did.

    Wrap it in ``anyio.fail_after(...)`` to bound it.
    """
    conductor = Conductor(
        "test-conductor",
        board,
        store=store,
        flows=flows,
        max_concurrency=max_concurrency,
        **conductor_kwargs,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(conductor.run)
        pending = [job.id async for job in board.iterjobs() if not job.state.is_final]
        for job_id in pending:
            await board.wait_for(job_id)
        conductor.stop()
    return conductor.stats
