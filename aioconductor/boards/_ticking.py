"""Schedule ticks, written once for every board: ``post_tick`` posts a schedule's tick once,
whatever the number of conductors asking, and ``schedule_ticks`` reads the last tick of each.

A backend gives two primitives: ``_post_tick`` (in one atomic step: unless the schedule's last
posted tick is at or after this one, advance it and post the job under its key) and
``_schedule_ticks``. The last tick is kept apart from the jobs, so a tick whose job was purged
is still never posted again.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import uuid
from collections.abc import Mapping
from datetime import UTC
from datetime import datetime
from typing import Any, Unpack

from pydantic import BaseModel

from aioconductor._payload import validate_key
from aioconductor._payload import validate_name
from aioconductor.boards._part import BoardPart
from aioconductor.boards._posting import PostOptions
from aioconductor.boards._posting import post_spec
from aioconductor.boards._support import PostSpec
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError
from aioconductor.models import Job

__all__ = ["MAX_SCHEDULE_NAME", "Ticks", "tick_key", "validate_schedule_name"]

_PREFIX = "schedule:"
_STAMP = "%Y-%m-%dT%H:%M:%SZ"
#: The longest schedule name: its tick keys (``schedule:<name>:<YYYY-MM-DDTHH:MM:SSZ>``) must
#: fit the 255 characters of a key.
MAX_SCHEDULE_NAME = 255 - len(_PREFIX) - 1 - len("2026-01-01T00:00:00Z")


def validate_schedule_name(name: object) -> str:
    """Return ``name`` if it can name a schedule (its tick keys are valid keys), else raise
    ``PayloadError``."""
    if isinstance(name, str) and len(name) > MAX_SCHEDULE_NAME:
        raise PayloadError(
            f"a schedule name is at most {MAX_SCHEDULE_NAME} characters (its tick keys must "
            f"fit 255), got {len(name)}"
        )
    checked = validate_key(name)
    return checked


def tick_key(schedule: str, tick: float) -> str:
    """The key of ``schedule``'s job for ``tick`` (epoch seconds, whole):
    ``schedule:<name>:<tick in UTC as YYYY-MM-DDTHH:MM:SSZ>``."""
    return f"{_PREFIX}{schedule}:{datetime.fromtimestamp(tick, UTC).strftime(_STAMP)}"


#: Seeds the ids of tick jobs posted with a ``poster``.
_TICK_IDS = uuid.UUID("6b3f0f8e-3c1a-4f55-9d8e-1f2a7c4e9b10")


def tick_job_id(poster: str, key: str) -> str:
    """The id of the job ``poster`` posts for the tick keyed ``key``: uuid4 text, the same on
    every attempt, different for every poster."""
    return str(uuid.UUID(bytes=uuid.uuid5(_TICK_IDS, f"{poster}\x00{key}").bytes, version=4))


def _check_tick(tick: object) -> float:
    if isinstance(tick, bool) or not isinstance(tick, (int, float)):
        raise PayloadError(f"a tick is epoch seconds, got {tick!r:.80}")
    if not math.isfinite(tick) or tick < 0 or tick != int(tick) or tick >= 253_402_300_800:
        raise PayloadError(f"a tick is whole epoch seconds from 1970 to 9999, got {tick!r}")
    return float(tick)


class Ticks(BoardPart):
    """The schedule verbs of :class:`~aioconductor.boards.base.JobBoard`."""

    max_payload_bytes: int

    async def post_tick(
        self,
        schedule: str,
        tick: float,
        name: str,
        flow: str,
        args: Mapping[str, Any] | BaseModel | None = None,
        *,
        poster: str | None = None,
        **options: Unpack[PostOptions],
    ) -> Job | None:
        """Post the job of ``schedule``'s ``tick``, unless that tick (or a later one) was
        posted already; conductors running the schedule call this, and one of them posts.

        In one atomic step: if the board's last posted tick of ``schedule`` is at or after
        ``tick``, nothing is written and None returned; otherwise the last tick becomes
        ``tick`` and the job is posted with the key ``schedule:<schedule>:<tick in UTC>``
        (:func:`tick_key`) and ``not_before=tick``, or the job already holding that key is
        returned. The last tick outlives the jobs: a tick whose job was purged is never
        posted again.

        Args:
            schedule: the schedule's name (at most :data:`MAX_SCHEDULE_NAME` characters).
            tick: the tick, whole epoch seconds.
            name, flow, args, options: the job, as :meth:`post` takes them (not
                ``not_before`` or ``delay``: the tick is the job's ``not_before``).
            poster: who posts (a conductor's owner id): a call repeated by the same poster
                for the same tick (a retry after a lost reply) returns the job its earlier
                call posted, not None. Two calls of one poster must not run at once.

        Raises:
            PayloadError: a bad schedule name, tick, job or option; nothing was written.
        """
        self._check_open()
        if "not_before" in options or "delay" in options:
            raise PayloadError("a tick's job runs at its tick: give no not_before or delay")
        checked = validate_schedule_name(schedule)
        at = _check_tick(tick)
        timed: PostOptions = {**options, "not_before": at}
        key = tick_key(checked, at)
        spec = post_spec(name, flow, args, self.max_payload_bytes, key=key, **timed)
        if poster is None:
            return await self._post_tick(checked, at, spec)
        # The same id on each attempt of this poster: a retry (its first reply lost)
        # recognises the job its first attempt posted, instead of reporting "not mine".
        spec = dataclasses.replace(spec, id=tick_job_id(validate_name("poster", poster), key))
        job = await self._post_tick(checked, at, spec)
        if job is None:
            with contextlib.suppress(JobNotFound):
                holder = await self._get_by_key(key)
                if holder.id == spec.id:
                    return holder
        return job

    async def schedule_ticks(self) -> dict[str, float]:
        """The last posted tick of every schedule that posted on this board (epoch seconds)."""
        self._check_open()
        return await self._schedule_ticks()

    # -- what the board gives ------------------------------------------------------------------

    @abc.abstractmethod
    async def _post_tick(self, schedule: str, tick: float, spec: PostSpec) -> Job | None:
        """In one atomic step: None if ``schedule``'s last tick is at or after ``tick``;
        otherwise set it to ``tick`` and post ``spec`` (keyed: the holder of its key is
        returned instead of a new job, as ``_post`` does)."""

    @abc.abstractmethod
    async def _get_by_key(self, key: str) -> Job: ...

    @abc.abstractmethod
    async def _schedule_ticks(self) -> dict[str, float]:
        """Every schedule's last posted tick in this namespace."""
