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
- ``events``: the pub/sub channel every post, abandon, release and promotion publishes to (a
  retried job is announced by the promotion that makes it claimable).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self, cast

from redis.commands.core import AsyncScript

from aioconductor._backends.base import DueTimer
from aioconductor._backends.base import OverLink
from aioconductor._backends.redis import board_records as records
from aioconductor._backends.redis import scripts
from aioconductor._backends.redis.board_prelude import KEY_NAMES
from aioconductor._backends.redis.board_prelude import PROMOTE_LIMIT
from aioconductor._backends.redis.board_prelude import member_id
from aioconductor._backends.redis.board_retention import Retention
from aioconductor._backends.redis.board_scripts import BoardScripts
from aioconductor._backends.redis.link import RedisLink
from aioconductor._backends.redis.link import fmt_time
from aioconductor._backends.redis.link import hash_tag_prefix
from aioconductor._backends.redis.pubsub import PubSubSubscription
from aioconductor._payload import encode_json
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
from aioconductor.models import Outcome

__all__ = ["RedisJobBoard"]

_CHUNK = 500
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
        return await self._link.call(what, lambda: self._link.script(script, keys, argv))

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

    async def _scored(self, key: str, start: int) -> list[tuple[str, float]]:
        """One chunk of (member, score) of sorted set ``key`` from rank ``start``."""
        chunk = await self._link.client.zrange(key, start, start + _CHUNK - 1, withscores=True)
        return cast(list[tuple[str, float]], chunk)

    async def _members(self, key: str) -> AsyncIterator[tuple[float, str]]:
        """(score, member) of sorted set ``key`` in order, read in chunks."""
        start = 0
        while True:
            chunk = await self._link.read("iterjobs", functools.partial(self._scored, key, start))
            for member, score in chunk:
                yield score, member
            if len(chunk) < _CHUNK:
                return
            start += _CHUNK

    async def _jobs(self, members: list[str]) -> list[Job]:
        async def fetch() -> list[Any]:
            async with self._link.client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(self._job_key(member_id(member)))
                return await pipe.execute()

        found = await self._link.read("iterjobs", fetch)
        return [records.job_from_hash(fields) for fields in found if fields]

    async def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]:
        now = await self._server_time()
        if state is None:
            members = self._members(self._prefix + "all")
        elif state is JobState.UNCLAIMED:
            # Unclaimed as readers see it: the unclaimed set plus scheduled jobs whose time
            # came (filtered below), merged in claim order.
            members = records.merge(
                self._members(self._prefix + "state:UNCLAIMED"),
                self._members(self._prefix + "state:SCHEDULED"),
            )
        else:
            members = self._members(f"{self._prefix}state:{state.value}")
        batch: list[str] = []
        async for _, member in members:
            batch.append(member)
            if len(batch) < _CHUNK:
                continue
            for job in await self._jobs(batch):
                if state is None or visible(job, now).state is state:
                    yield visible(job, now)
            batch = []
        for job in await self._jobs(batch) if batch else []:
            if state is None or visible(job, now).state is state:
                yield visible(job, now)

    async def _job_count(self, state: JobState | None) -> int:
        if state is None:
            count: int = await self._link.read(
                "job_count", lambda: self._link.client.zcard(self._prefix + "all")
            )
            return count
        script = self._scripts.count
        argv = [self._job_prefix, self._channel, state.value]
        reply = await self._link.read("job_count", lambda: script(keys=self._keys, args=argv))
        return int(reply[1])

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
                "sweep", functools.partial(self._scored, self._prefix + "ready", start)
            )
            notes.extend(records.waiting(chunk))
            if len(chunk) < _CHUNK:
                return notes, now
            start += _CHUNK

    def _sweep_delay(self) -> float:
        # Sweep when the earliest delayed job or lease falls due, not only every poll_interval.
        return self._due.delay(self.poll_interval)

    # -- conductors ----------------------------------------------------------------------------

    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None:
        ttl = min(max(ttl, 0.0), 10 * 365 * 86400.0) if math.isfinite(ttl) else 0.0
        keys = [self._prefix + "conductors", f"{self._prefix}conductor:{owner}"]
        data = encode_json("the conductor's meta", meta, 64 * 1024).decode("utf-8")
        script = self._scripts.register
        args = [owner, name, fmt_time(ttl), data]
        # Registering again is harmless, so a lost reply is retried like a read.
        await self._link.read("register_conductor", lambda: script(keys=keys, args=args))

    async def _unregister_conductor(self, owner: str) -> None:
        async def forget() -> None:
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.delete(f"{self._prefix}conductor:{owner}")
                pipe.zrem(self._prefix + "conductors", owner)
                await pipe.execute()

        # Forgetting twice changes nothing, so a lost reply is retried like a read.
        await self._link.read("unregister_conductor", forget)

    async def _conductors(self) -> list[ConductorInfo]:
        now = await self._server_time()

        async def alive() -> list[str]:
            key = self._prefix + "conductors"
            return cast(list[str], await self._link.client.zrangebyscore(key, f"({now}", "+inf"))

        owners = await self._link.read("conductors", alive)

        async def fetch() -> list[Any]:
            async with self._link.client.pipeline(transaction=False) as pipe:
                for owner in owners:
                    pipe.hgetall(f"{self._prefix}conductor:{owner}")
                return await pipe.execute()

        found = await self._link.read("conductors", fetch) if owners else []
        return [
            records.conductor_from_hash(fields)
            for fields in found
            if fields and float(fields["expires_at"]) > now
        ]
