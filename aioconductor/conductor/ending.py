"""A job's ending in one server call, where the board and the store share a server.

A flow's end is saved with its last task's end (one store write); the job is then consumed (one
board call). When the store can do both at once on the board's server (``store.fused_ending``,
as the Redis store does for a Redis board on the same server and namespace), the conductor runs
each job's engine on a :class:`_DeferringStore`: the write of the flow's end is kept, not sent,
and :meth:`Endings.consume` sends it with the consume, as one atomic call fenced by the claim's
token (a stale claim changes nothing; a refused store write consumes nothing).

Durability is as before: every write up to the flow's end (a task's RUNNING before its
``execute``) is sent when the engine makes it. A crash between the flow's end and the consume
left the flow ended and the job claimed; now it leaves the task RUNNING and the job claimed,
and the next owner runs the task again, as after a crash during the task. A retry first sends
the kept write on its own, as do a release and an abandon if they can; a lost claim drops it.
What the engine tells after the flow's end (the last task's SUCCESS, the flow's end) is held
until the write is saved, and dropped if it is not: an event says what is saved.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from aioconductor._models import evolve
from aioconductor.boards.base import JobBoard
from aioconductor.engine.journal import FINAL
from aioconductor.errors import PayloadError
from aioconductor.events import Notifier
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import Outcome
from aioconductor.persistence.base import Store
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail

__all__ = ["Endings", "FlowEnd", "FusedEnding"]

logger = logging.getLogger("aioconductor.conductor")


class FlowEnd:
    """A flow's end, as the store would be asked to save it."""

    __slots__ = ("atoms", "book_uuid", "events", "flow", "token")

    def __init__(
        self, book_uuid: str, flow: FlowDetail, token: int | None, atoms: tuple[AtomDetail, ...]
    ) -> None:
        self.book_uuid = book_uuid
        self.flow = flow
        self.token = token
        self.atoms = atoms
        #: The events of the run told after the flow's end: held until it is saved.
        self.events: list[tuple[str, Mapping[str, Any]]] = []


#: ``(claim, outcome, result, book_uuid, flow, token, atoms)``: saves the flow's end (as
#: ``store.update_flow_detail(book_uuid, flow, token=token, atoms=atoms)`` would) and consumes
#: the claim's job with ``outcome`` and ``result``, atomically. What it returns is not used
#: (a backend need not read the consumed job back).
FusedEnding = Callable[..., Awaitable[object]]


class Endings:
    """How one conductor run's jobs end: the board's ``consume``, or the fused call."""

    def __init__(
        self,
        board: JobBoard,
        store: Store | None,
        fused: FusedEnding | None,
        notifier: Notifier | None = None,
    ) -> None:
        self.board = board
        self.store = store
        self.fused = fused
        self.notifier = notifier if notifier is not None else Notifier()
        #: Flow ends kept for the consume, by job id (the logbook's uuid) and claim token (a
        #: zombie run of a job, whose claim was taken over, keeps its own apart).
        self.kept: dict[tuple[str, int | None], FlowEnd] = {}

    @classmethod
    def of(cls, board: JobBoard, store: Store, notifier: Notifier) -> Endings:
        """The endings of ``board`` and ``store``: fused when the store says it can."""
        fuse = getattr(store, "fused_ending", None)
        return cls(board, store, None if fuse is None else fuse(board), notifier)

    def store_for(self, job_id: str) -> Store:
        """The store a job's engine saves through."""
        assert self.store is not None, "made without a store"
        if self.fused is None:
            return self.store
        return cast(Store, _DeferringStore(self, self.store, job_id))

    def notifier_for(self, job_id: str, token: int | None) -> Notifier:
        """The notifier a job's engine tells: what it tells after the flow's end is held
        until that end is saved (an event says what is saved), and dropped if it is not."""
        if self.fused is None:
            return self.notifier
        return _HoldingNotifier(self, (job_id, token))

    def forget(self, job_id: str, token: int | None) -> None:
        """Drop what a run kept (its run is over)."""
        self.kept.pop((job_id, token), None)

    async def consume(self, claim: Claim, outcome: Outcome, result: dict[str, Any]) -> None:
        """Consume the job, with its flow's end when one was kept."""
        end = self.kept.pop((claim.job_id, claim.token), None)
        if end is None or self.fused is None:
            await self.board.consume(claim, outcome=outcome, result=result)
            return
        try:
            await self.fused(claim, outcome, result, end.book_uuid, end.flow, end.token, end.atoms)
        except PayloadError:
            # Refused before anything was sent (the result is too large for the board): keep
            # the flow's end, which the abandon that follows saves on its own.
            self.kept[claim.job_id, claim.token] = end
            raise
        await self._tell(end)

    async def retry(self, claim: Claim, *, delay: float, failure: dict[str, Any] | None) -> Job:
        """The board's ``retry``, the run's kept flow end saved first."""
        await self.flush(claim)
        return await self.board.retry(claim, delay=delay, failure=failure)

    async def release(self, claim: Claim) -> Job:
        """The board's ``release``, the run's kept flow end saved first if it can be."""
        await self.flush(claim, quiet=True)
        return await self.board.release(claim)

    async def abandon(self, claim: Claim) -> Job:
        """The board's ``abandon``, the run's kept flow end saved first if it can be."""
        await self.flush(claim, quiet=True)
        return await self.board.abandon(claim)

    async def flush(self, claim: Claim, *, quiet: bool = False) -> None:
        """Save the run's kept flow end on its own (an ending other than consume); with
        ``quiet``, a failure is only logged (a give-back must not wait on the store)."""
        job_id = claim.job_id
        end = self.kept.pop((job_id, claim.token), None)
        if end is None or self.store is None:
            return
        try:
            await self.store.update_flow_detail(
                end.book_uuid, end.flow, token=end.token, atoms=end.atoms
            )
        except Exception as exc:
            if not quiet:
                raise
            logger.warning("job %s: saving its flow's end failed (%r)", job_id, exc)
            return
        await self._tell(end)

    async def _tell(self, end: FlowEnd) -> None:
        """Tell the events held until ``end`` was saved."""
        for event, details in end.events:
            await self.notifier.notify(event, details)


class _HoldingNotifier(Notifier):
    """A job run's notifier: while its flow's end is kept, events are held with it."""

    def __init__(self, endings: Endings, key: tuple[str, int | None]) -> None:
        super().__init__()
        self._endings = endings
        self._key = key
        # Asked of the conductor's notifier, which may be a subclass answering its own way;
        # its bound method, so that the engine's dozen checks a run cost no frame of ours.
        self.has_listeners = endings.notifier.has_listeners  # type: ignore[method-assign]

    async def notify(self, event: str, details: Mapping[str, Any]) -> None:
        end = self._endings.kept.get(self._key)
        if end is not None:
            end.events.append((event, details))
        else:
            await self._endings.notifier.notify(event, details)


class _DeferringStore:
    """A job's store, but for the write of its flow's end: kept for :meth:`Endings.consume`."""

    def __init__(self, endings: Endings, store: Store, job_id: str) -> None:
        self._endings = endings
        self._store = store
        self._job_id = job_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def update_flow_detail(
        self,
        book_uuid: str,
        flow: FlowDetail,
        *,
        token: int | None = None,
        atoms: Sequence[AtomDetail] = (),
    ) -> FlowDetail:
        endings, key = self._endings, (self._job_id, token)
        if flow.state not in FINAL or book_uuid != self._job_id or key in endings.kept:
            return await self._store.update_flow_detail(book_uuid, flow, token=token, atoms=atoms)
        # Kept as given, not copied: the journal never changes what it handed to a write.
        endings.kept[key] = FlowEnd(book_uuid, flow, token, tuple(atoms))
        # What the store would answer: the flow and the atoms written, one version up (shallow
        # copies: a deep copy of each was a tenth of a Redis job's CPU at concurrency 64).
        # (Each written atom's meta a dict of its own: the journal stamps meta in place.)
        written = {
            atom.name: evolve(atom, version=atom.version + 1, meta=dict(atom.meta))
            for atom in atoms
        }
        return evolve(flow, version=flow.version + 1, atoms={**flow.atoms, **written})
