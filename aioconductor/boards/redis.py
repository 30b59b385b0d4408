"""`RedisJobBoard`: jobs in Redis, shared by conductors on many machines.

``redis://[[user]:password@]host[:port][/db]?namespace=NAME`` (``rediss://`` for TLS). Every
transition (post, claim, claim_next, renew, consume, abandon, release, retry, trash, promotion of
due jobs and expired leases) is one Lua script that checks owner and fencing token on the server
and reads the server's clock, so two conductors never both win a job and a stale claim changes
nothing.

Key layout (all under the namespace's hash tag ``aioc:{NAME}:``, one Redis Cluster slot):

- ``job:<id>``: a hash per job (its fields, ``state``, ``owner``, ``token``, ``expires_at``, ...).
- ``ready``: sorted set of claimable jobs, scored ``-priority``; members are ``<seq as 16 hex
  digits>:<id>``, so equal scores sort by post order and ``ZPOPMIN`` takes the best job.
- ``delayed`` / ``leases``: sorted sets of scheduled jobs by ``not_before`` and claimed jobs by
  ``expires_at``; a script moves those that are due into ``ready`` and announces them.
- ``all`` and ``state:<STATE>``: the same members, for ``iterjobs`` and ``job_count``.
- ``seq``: the post-order counter; ``conductors`` and ``conductor:<owner>``: live conductors.
- ``keys``: a hash of idempotency key -> id of the job holding it (checked and set by the post
  script; the job's hash keeps its key as ``key``).
- ``ticks``: a hash of schedule name -> its last posted tick (checked and advanced by the post
  script that posts the tick's job; purge never touches it).
- ``ended:COMPLETE`` / ``ended:TRASHED``: finished jobs scored by when they ended
  (``updated_at``), for ``purge`` (see :mod:`aioconductor._backends.redis.board_retention`).
- ``limits``: a hash of limit key -> concurrency limit; ``holders:<key>`` and ``parked:<key>``:
  per limit key, its claimed jobs by lease expiry and the claimable jobs claims passed over
  while it was full (see :mod:`aioconductor._backends.redis.board_prelude`).
- ``events``: the pub/sub channel every post, abandon, release and promotion publishes to (a
  retried job is announced by the promotion that makes it claimable), and every cancel of a
  claimed job (``cancel``) and end of a limited claim (``slot_freed``).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

from redis.commands.core import AsyncScript

from aioconductor._backends.base import DueTimer
from aioconductor._backends.base import OverLink
from aioconductor._backends.redis import board_records as records
from aioconductor._backends.redis import scripts
from aioconductor._backends.redis.board_conductors import Conductors
from aioconductor._backends.redis.board_listing import CHUNK
from aioconductor._backends.redis.board_listing import Listing
from aioconductor._backends.redis.board_prelude import KEY_NAMES
from aioconductor._backends.redis.board_prelude import PROMOTE_LIMIT
from aioconductor._backends.redis.board_retention import Retention
from aioconductor._backends.redis.board_scripts import BoardScripts
from aioconductor._backends.redis.link import RedisLink
from aioconductor._backends.redis.link import fmt_time
from aioconductor._backends.redis.link import hash_tag_prefix
from aioconductor._backends.redis.pubsub import PubSubSubscription
from aioconductor._urls import ParsedURL
from aioconductor.boards._support import visible
from aioconductor.boards.base import EncodedObject
from aioconductor.boards.base import JobBoard
from aioconductor.boards.base import PostSpec
from aioconductor.boards.base import Subscription
from aioconductor.errors import BoardClosed
from aioconductor.errors import BoardError
from aioconductor.errors import JobNotFound
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import LimitInfo
from aioconductor.models import Outcome

__all__ = ["RedisJobBoard"]
#: How often a post is sent again whose key's holder is gone when read (each time, a purge won).
_POST_ROUNDS = 5


class RedisJobBoard(OverLink[RedisLink], JobBoard):
    """A job board on Redis: atomic Lua transitions, pub/sub notifications, server-side time.

    Open it with ``open_board("redis://host:6379/0?namespace=NAME")``; the URL's password is
    never shown in reprs, logs or errors. At connect, a warning is logged when Redis may evict
    keys (``maxmemory-policy`` other than ``noeviction``).

    Args:
        driver_url: the Redis URL without the library's options.
        **kwargs: see :class:`~aioconductor.boards.base.JobBoard`.
    """

    def __init__(self, *, driver_url: str = "redis://127.0.0.1:6379/0", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._link = RedisLink(driver_url, BoardClosed)
        self._prefix = hash_tag_prefix(self.namespace)
        self._job_prefix = f"{self._prefix}job:"
        self._channel = f"{self._prefix}events"
        self._ticks = f"{self._prefix}ticks"
        self._keys = [self._prefix + name for name in KEY_NAMES]
        self._scripts = scripts.load(BoardScripts, self._link.client)
        self._retention = Retention(self._link, self._keys, self._prefix)
        self._listing = Listing(self._link, self._keys, self._prefix, self._scripts.count)
        self._registry = Conductors(self._link, self._prefix, self._scripts.register)
        #: When the earliest delayed job or lease falls due, as last seen.
        self._due = DueTimer()

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build the board for a parsed ``redis://`` or ``rediss://`` URL; not yet connected."""
        kwargs.setdefault("driver_url", parsed.driver_url)
        return super().from_url(parsed, **kwargs)

    # -- plumbing ------------------------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return self._job_prefix + job_id

    async def _run(
        self, script: AsyncScript, what: str, args: Sequence[str | int], job_id: str | None = None
    ) -> Any:
        """Run transition ``script`` once (its reply may be lost, so never retried)."""
        keys = self._keys if job_id is None else [*self._keys, self._job_key(job_id)]
        argv = [self._job_prefix, self._channel, *args]
        return await self._link.run_script(what, script, keys, argv)

    # -- transitions ---------------------------------------------------------------------------

    async def _post(self, spec: PostSpec) -> Job:
        (job,) = await self._post_many([spec])
        return job

    async def _post_many(self, specs: list[PostSpec]) -> list[Job]:
        jobs: list[Job | None] = [None] * len(specs)
        todo = list(range(len(specs)))
        for _ in range(_POST_ROUNDS):
            if not todo:
                break
            held: dict[int, str] = {}
            replies = await self._post_specs([specs[at] for at in todo])
            for at, reply in zip(todo, replies, strict=True):
                if reply[0] == "held":
                    held[at] = reply[2]
                else:
                    jobs[at] = self._posted(reply)
            holders = await self._get_many(list(held.values())) if held else []
            for at, holder in zip(held, holders, strict=True):
                jobs[at] = holder
            # A holder purged since is no holder: those specs are posted again.
            todo = [at for at, holder in zip(held, holders, strict=True) if holder is None]
        if todo:
            raise BoardError(f"the key {specs[todo[0]].key!r} names a job that keeps vanishing")
        return [job for job in jobs if job is not None]

    async def _post_tick(self, schedule: str, tick: float, spec: PostSpec) -> Job | None:
        (reply,) = await self._post_specs([spec], (schedule, fmt_time(tick)))
        if reply[0] == "passed":
            return None
        if reply[0] == "held":
            # Unlike a post's, a holder purged since is not posted again: its tick has passed.
            (holder,) = await self._get_many([reply[2]])
            return holder
        return self._posted(reply)

    async def _schedule_ticks(self) -> dict[str, float]:
        client, key = self._link.client, self._ticks
        ticks = await self._link.read("schedule_ticks", lambda: client.hgetall(key))
        return {str(schedule): float(tick) for schedule, tick in ticks.items()}

    def _posted(self, reply: Any) -> Job:
        """The job of the post script's ``ok`` reply, its due time noted for the sweep."""
        status, now, job = records.parse_reply(reply)
        assert status == "ok" and job is not None
        if job.state is JobState.SCHEDULED and job.not_before is not None:
            self._due.note(job.not_before, now)
        return job

    async def _post_specs(
        self, specs: list[PostSpec], tick: tuple[str, str] | None = None
    ) -> list[Any]:
        """Run the post script for each of ``specs``, in order; the replies. With ``tick``
        (schedule, tick), the one spec is that tick's job (see ``POST``)."""
        script = self._scripts.post
        calls = []
        for spec in specs:
            keys = [*self._keys, self._job_key(spec.id)]
            argv = [self._job_prefix, self._channel, *records.post_argv(spec)]
            if tick is not None:
                keys.append(self._ticks)
                argv.extend(tick)
            calls.append((script, keys, argv))
        # The ids are chosen here and the script returns an existing job unchanged, so posts
        # whose replies were lost can be retried without posting twice. One post alone rides
        # in the pipeline of its event-loop turn; several go as one pipeline of their own.
        if len(calls) == 1:
            return [await self._link.read("post", lambda: self._link.script(*calls[0]))]
        return await self._link.read("post", lambda: self._link.scripts(calls))

    async def _claim(self, job_id: str, owner: str, lease: float) -> Job:
        reply = await self._run(self._scripts.claim, "claim", [owner, fmt_time(lease)], job_id)
        return records.checked_job(reply, job_id, "claim", None)

    async def _claim_next(self, owner: str, lease: float) -> Job | None:
        reply = await self._run(self._scripts.claim_next, "claim_next", [owner, fmt_time(lease)])
        status, _, job = records.parse_reply(reply)
        return None if status == "none" else job

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> list[Job]:
        args: list[str | int] = [owner, fmt_time(lease), limit]
        reply = await self._run(self._scripts.claim_batch, "claim_batch", args)
        return records.claimed_jobs(reply)

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        args = [claim.owner, str(claim.token), fmt_time(lease)]
        reply = await self._run(self._scripts.renew, "renew", args, claim.job_id)
        job = records.checked_job(reply, claim.job_id, "renew", claim)
        assert job.claim is not None
        return job.claim

    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job:
        args = [claim.owner, str(claim.token), outcome.value, result_json.decode("utf-8")]
        reply = await self._run(self._scripts.consume, "consume", args, claim.job_id)
        return records.checked_job(reply, claim.job_id, "consume", claim)

    async def _abandon(self, claim: Claim) -> Job:
        args = [claim.owner, str(claim.token)]
        reply = await self._run(self._scripts.abandon, "abandon", args, claim.job_id)
        return records.checked_job(reply, claim.job_id, "abandon", claim)

    async def _release(self, claim: Claim) -> Job:
        args = [claim.owner, str(claim.token)]
        reply = await self._run(self._scripts.release, "release", args, claim.job_id)
        return records.checked_job(reply, claim.job_id, "release", claim)

    async def _retry(self, claim: Claim, delay: float, failure: EncodedObject | None) -> Job:
        failure_text = "" if failure is None else failure.json.decode("utf-8")
        if failure is not None and "\n" in failure_text:
            # The script keeps one failure a line (see RETRY): compact JSON has no raw newline,
            # but an encoder that indents would, so such text is written again compactly.
            failure_text = json.dumps(failure.value, ensure_ascii=False, separators=(",", ":"))
        args = [claim.owner, str(claim.token), fmt_time(delay), failure_text]
        reply = await self._run(self._scripts.retry, "retry", args, claim.job_id)
        job = records.checked_job(reply, claim.job_id, "retry", claim)
        if job.state is JobState.SCHEDULED:
            # This board's sweep then announces the job when it is due (as for a delayed post).
            self._due.note(job.not_before, float(reply[1]))
        return job

    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job:
        if claim is None:
            args = ["0", "", "", reason]
        else:
            args = ["1", claim.owner, str(claim.token), reason]
        reply = await self._run(self._scripts.trash, "trash", args, job_id)
        return records.checked_job(reply, job_id, "trash", claim)

    async def _cancel(self, job_id: str, reason: str) -> Job:
        # A cancel sent again after a lost reply finds the job ended or flagged by the first
        # and answers it as it is: the same job, so it is retried like a read.
        keys = [*self._keys, self._job_key(job_id)]
        argv = [self._job_prefix, self._channel, reason]
        script = self._scripts.cancel
        reply = await self._link.read("cancel", lambda: self._link.script(script, keys, argv))
        _, now, _ = records.parse_reply(reply)
        return visible(records.checked_job(reply, job_id, "cancel", None), now)

    # -- limits --------------------------------------------------------------------------------

    async def _set_limit(self, key: str, limit: int | None) -> None:
        script = self._scripts.set_limit
        argv = [self._job_prefix, self._channel, key, "" if limit is None else str(limit)]
        # Setting a limit twice changes nothing more, so a lost reply is retried like a read.
        await self._link.read("set_limit", lambda: script(keys=self._keys, args=argv))

    async def _limits(self) -> list[LimitInfo]:
        script = self._scripts.limits
        argv = [self._job_prefix, self._channel]
        reply = await self._link.read("limits", lambda: script(keys=self._keys, args=argv))
        rows = reply[1:]
        return [
            LimitInfo(key=str(rows[at]), limit=int(rows[at + 1]), claimed=int(rows[at + 2]))
            for at in range(0, len(rows), 3)
        ]

    # -- reads (idempotent: retried through a restart) -----------------------------------------

    async def _server_time(self) -> float:
        seconds, micros = await self._link.read("read the clock", self._link.client.time)
        return float(seconds) + micros / 1_000_000

    async def _get(self, job_id: str) -> Job:
        (job,) = await self._get_many([job_id])
        if job is None:
            raise JobNotFound(f"no job {job_id!r} on this board")
        return job

    async def _get_many(self, job_ids: list[str]) -> list[Job | None]:
        """The jobs as readers see them now (None for one not on the board), in one read."""

        async def fetch() -> list[Any]:
            async with self._link.client.pipeline(transaction=False) as pipe:
                pipe.time()
                for job_id in job_ids:
                    pipe.hgetall(self._job_key(job_id))
                return await pipe.execute()

        (seconds, micros), *found = await self._link.read("get", fetch)
        now = float(seconds) + micros / 1_000_000
        return [visible(records.job_from_hash(fields), now) if fields else None for fields in found]

    async def _get_by_key(self, key: str) -> Job:
        keys = self._prefix + "keys"
        # A holder purged between the two reads may have left its key to a new job: look again.
        for _ in range(3):
            job_id = await self._link.read("get_by_key", lambda: self._link.client.hget(keys, key))
            if job_id is None:
                break
            (job,) = await self._get_many([str(job_id)])
            if job is not None:
                return job
        raise JobNotFound(f"no job holds the key {key!r} on this board")

    # -- retention -----------------------------------------------------------------------------

    async def _purgeable(
        self, older_than: float, states: tuple[JobState, ...], limit: int
    ) -> list[str]:
        return await self._retention.purgeable(older_than, states, limit)

    async def _purge(self, job_ids: list[str]) -> int:
        return await self._retention.purge(job_ids)

    async def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]:
        now = await self._server_time()
        async for job in self._listing.iterjobs(state, now):
            yield job

    async def _job_count(self, state: JobState | None) -> int:
        return await self._listing.job_count(state)

    # -- notifications -------------------------------------------------------------------------

    def _subscribe(self) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self._registered(PubSubSubscription(self._link, self._channel, self.poll_interval))

    async def _sweep(self, cursor: Any) -> tuple[list[JobNotification], Any]:
        try:
            return await self._sweep_open(cursor)
        except BoardClosed:
            if not self.closed:
                raise
            # Closed while sweeping: the stream ends at its next check, quietly.
            return [], cursor

    async def _sweep_open(self, cursor: Any) -> tuple[list[JobNotification], Any]:
        # Promotions publish to every subscriber, this stream's too, like the memory board's.
        script = self._scripts.promote
        argv = [self._job_prefix, self._channel]
        for _ in range(100):
            # Promoting twice changes nothing, so a lost reply is retried like a read.
            reply = await self._link.read("sweep", lambda: script(keys=self._keys, args=argv))
            now, promoted, due = float(reply[0]), int(reply[1]), reply[2]
            if promoted < PROMOTE_LIMIT:
                break
        self._due.clear()
        self._due.note(float(due) if due else None, now)
        if cursor is not None:
            return [], now
        notes: list[JobNotification] = []
        start = 0
        while True:
            chunk = await self._link.read(
                "sweep", functools.partial(self._listing.scored, self._prefix + "ready", start)
            )
            notes.extend(records.waiting(chunk))
            if len(chunk) < CHUNK:
                return notes, now
            start += CHUNK

    def _sweep_delay(self) -> float:
        # Sweep when the earliest delayed job or lease falls due, not only every poll_interval.
        return self._due.delay(self.poll_interval)

    # -- conductors ----------------------------------------------------------------------------

    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None:
        await self._registry.register(owner, name, ttl, meta)

    async def _unregister_conductor(self, owner: str) -> None:
        await self._registry.unregister(owner)

    async def _conductors(self) -> list[ConductorInfo]:
        return await self._registry.alive(await self._server_time())
