"""Notifications and waits, written once for every board: ``stream()`` (pushes, and a sweep for
what cannot be pushed), ``wait()`` and ``wait_for()``.

A backend gives the primitives: ``_subscribe`` (a subscription to its pushes), ``_sweep`` (what
became claimable without a push) and, where it knows its next deadline, ``_sweep_delay``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio

from aioconductor.boards._part import BoardPart
from aioconductor.boards._support import Subscription
from aioconductor.errors import BoardClosed
from aioconductor.models import Job
from aioconductor.models import JobNotification

__all__ = ["Notifications"]


class Notifications(BoardPart):
    """The notification and wait verbs of :class:`~aioconductor.boards.base.JobBoard`."""

    poll_interval: float
    _closed: bool

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._final_waiters: dict[str, anyio.Event] = {}

    def _end_waits(self) -> None:
        """Open streams end and ``wait_for`` callers wake (to find the board closed)."""
        for subscription in list(self._subscriptions):
            subscription.close()
        for event in self._final_waiters.values():
            event.set()

    async def stream(self) -> AsyncGenerator[JobNotification, None]:
        """Notifications of jobs becoming claimable, for as long as the board is open.

        The stream starts with every job already claimable, then pushes posts and abandons as
        they happen, and sweeps every ``poll_interval`` for expired leases and delays that
        passed. It also carries ``CANCEL`` notifications (a claimed job was cancelled: its
        owner is to stop it), which announce no claimable job. Each call is an independent
        subscription; close it with ``aclose()`` (or iterate
        it inside ``contextlib.aclosing``).
        """
        self._check_open()
        async with self._subscribe() as subscription:
            notes, cursor = await self._sweep(None)
            swept = anyio.current_time()
            for note in notes:
                yield note
            while not self._closed:
                pushed: JobNotification | None = None
                # Sweep every poll_interval even while pushes keep coming (a busy board still
                # learns what only a sweep finds), or sooner when the backend knows a deadline.
                since = anyio.current_time() - swept
                wait = min(self._sweep_delay(), max(0.0, self.poll_interval - since))
                with anyio.move_on_after(wait):
                    try:
                        pushed = await subscription.receive()
                    except anyio.EndOfStream:
                        return
                if pushed is not None:
                    yield pushed
                    if not subscription.lost:
                        continue
                # A timed-out wait sweeps for what no push announces; a lost push (a full
                # buffer, a dropped connection) re-reads every claimable job at once.
                if subscription.lost:
                    subscription.lost = False
                    notes, cursor = await self._sweep(None)
                else:
                    notes, cursor = await self._sweep(cursor)
                swept = anyio.current_time()
                for note in notes:
                    yield note

    @contextlib.asynccontextmanager
    async def _registered(self, subscription: Subscription) -> AsyncIterator[Subscription]:
        """``subscription`` opened, ended when the board closes, and released after use
        (also when opening it failed)."""
        try:
            await subscription.open()
            self._subscriptions.add(subscription)
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            subscription.close()
            subscription.aclose_receiver()
            await subscription.aclose_transport()

    def _local_subscription(self) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """A subscription to the notifications this board object pushes itself."""
        return self._registered(Subscription())

    def _notify_local(self, note: JobNotification) -> None:
        for subscription in self._subscriptions:
            subscription.push(note)

    def _sweep_delay(self) -> float:
        """Seconds until ``stream()`` should sweep again."""
        return self.poll_interval

    # The timeout keywords are the public API DESIGN.md names; they wrap anyio.fail_after.
    async def wait(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once at least one job is claimable.

        Raises:
            TimeoutError: none was within ``timeout`` seconds.
        """
        with anyio.fail_after(timeout):
            async with contextlib.aclosing(self.stream()) as notes:
                async for note in notes:
                    if note.kind.is_claimable:
                        return
            raise BoardClosed()

    async def wait_for(self, job_id: str, *, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """Return the job once it is ``COMPLETE`` or ``TRASHED``.

        Raises:
            TimeoutError: the job was not finished within ``timeout`` seconds.
            JobNotFound: no such job.
        """
        job_id = str(job_id)
        delay = 0.005
        with anyio.fail_after(timeout):
            while True:
                job = await self.get(job_id)
                if job.state.is_final:
                    return job
                event = self._final_waiters.setdefault(job_id, anyio.Event())
                try:
                    # Woken at once when this board object finishes the job; polled (backing
                    # off to 250 ms) when another process or board object does.
                    with anyio.move_on_after(delay):
                        await event.wait()
                finally:
                    if event.is_set() or not event.statistics().tasks_waiting:
                        self._final_waiters.pop(job_id, None)
                delay = min(delay * 2, 0.25)

    def _finished(self, job_id: str) -> None:
        event = self._final_waiters.pop(job_id, None)
        if event is not None:
            event.set()

    # -- what the board gives ------------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job: ...

    @abc.abstractmethod
    def _subscribe(self) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """A subscription to pushed notifications (for backends that cannot push across
        processes, at least those this board object makes: ``_local_subscription``)."""

    @abc.abstractmethod
    async def _sweep(self, cursor: Any) -> tuple[list[JobNotification], Any]:
        """Notifications for jobs that became claimable since ``cursor`` without a push, and
        the next cursor. With ``cursor=None``: every job claimable now, in claim order."""
