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
- ``events``: the pub/sub channel every post, abandon, release and promotion publishes to (a
  retried job is announced by the promotion that makes it claimable).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self, cast

import anyio

from aioconductor._backends.redis import board_scripts as lua
from aioconductor._backends.redis.link import RedisLink, fmt_time, hash_tag_prefix
from aioconductor._backends.redis.pubsub import PubSubSubscription
from aioconductor._models import build, evolve
from aioconductor._payload import decode_json, encode_json
from aioconductor._urls import ParsedURL
from aioconductor.boards.base import (
    JobBoard,
    PostSpec,
    Subscription,
    lost_message,
    unclaimable_message,
)
from aioconductor.errors import (
    BoardClosed,
    BoardError,
    ClaimLost,
    JobNotFound,
    UnclaimableJob,
)
from aioconductor.models import (
    Claim,
    ConductorInfo,
    Job,
    JobNotification,
    JobState,
    NotificationKind,
    Outcome,
    RetryPolicy,
)

__all__ = ["RedisJobBoard"]

_CHUNK = 500


def _job(fields: dict[str, str]) -> Job:
    """A ``Job`` from its hash fields as the scripts store them."""
    state = JobState(fields["state"])
    claim = None
    if "owner" in fields:
        claim = build(
            Claim,
            job_id=fields["id"],
            owner=fields["owner"],
            token=int(fields["token"]),
            expires_at=float(fields["expires_at"]),
        )
    not_before = fields.get("not_before")
    result = fields.get("result")
    outcome = fields.get("outcome")
    return build(
        Job,
        id=fields["id"],
        name=fields["name"],
        flow=fields["flow"],
        args=decode_json(fields["args"]),
        priority=int(fields["priority"]),
        seq=int(fields["seq"]),
        created_at=float(fields["created_at"]),
        updated_at=float(fields["updated_at"]),
        not_before=None if not_before is None else float(not_before),
        attempts=int(fields["attempts"]),
        max_attempts=int(fields["max_attempts"]),
        state=state,
        claim=claim,
        outcome=None if outcome is None else Outcome(outcome),
        result=None if result is None else decode_json(result),
        trash_reason=fields.get("trash_reason"),
        headers=decode_json(fields.get("headers", "{}")),
        # Absent on jobs that never had them (and on jobs written before they existed).
        releases=int(fields.get("releases", 0)),
        abandons=int(fields.get("abandons", 0)),
        retries=int(fields.get("retries", 0)),
        retry=_policy(retry) if (retry := fields.get("retry")) else None,
        failures=decode_json(failures) if (failures := fields.get("failures")) else [],
    )


@functools.lru_cache(maxsize=256)
def _policy(text: str) -> RetryPolicy:
    """The retry policy stored as ``text``; cached, as jobs of one flow share a few policies
    and a claim reads its job's every time (the policy is frozen, so sharing it is safe)."""
    return RetryPolicy.model_validate_json(text)


def _visible(job: Job, now: float) -> Job:
    """``job`` as readers see it at ``now``: a scheduled job whose time came is UNCLAIMED."""
    if job.state is JobState.SCHEDULED and job.is_claimable(now):
        return evolve(job, state=JobState.UNCLAIMED)
    return job


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisJobBoard(JobBoard):
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
        self._keys = [self._prefix + name for name in lua.KEY_NAMES]
        client = self._link.client
        self._scripts = {
            name: client.register_script(getattr(lua, name))
            for name in (
                "POST",
                "CLAIM",
                "CLAIM_BATCH",
                "CLAIM_NEXT",
                "RENEW",
                "CONSUME",
                "ABANDON",
                "RELEASE",
                "RETRY",
                "TRASH",
                "PROMOTE",
                "COUNT",
                "REGISTER",
            )
        }
        #: When (anyio clock) the earliest delayed job or lease falls due, as last seen.
        self._next_due: float | None = None

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build the board for a parsed ``redis://`` or ``rediss://`` URL; not yet connected."""
        kwargs.setdefault("driver_url", parsed.driver_url)
        return super().from_url(parsed, **kwargs)

    def __repr__(self) -> str:
        return f"<RedisJobBoard {self._link.url} namespace={self.namespace!r}>"

    # -- plumbing ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        await self._link.connect()

    async def _aclose(self) -> None:
        await self._link.aclose()

    def _job_key(self, job_id: str) -> str:
        return self._job_prefix + job_id

    async def _run(
        self, name: str, what: str, args: Sequence[str | int], job_id: str | None = None
    ) -> Any:
        """Run transition script ``name`` once (its reply may be lost, so never retried)."""
        keys = self._keys if job_id is None else [*self._keys, self._job_key(job_id)]
        script = self._scripts[name]
        argv = [self._job_prefix, self._channel, *args]
        return await self._link.call(what, lambda: self._link.script(script, keys, argv))

    def _reply(self, reply: Sequence[str]) -> tuple[str, float, Job | None]:
        status, now = reply[0], float(reply[1])
        return status, now, (_job(_pairs(reply[2:])) if len(reply) > 2 else None)

    def _checked(self, reply: Sequence[str], job_id: str, verb: str, claim: Claim | None) -> Job:
        """The job of a verb's reply, or the error its status stands for."""
        status, now, job = self._reply(reply)
        if status == "ok" and job is not None:
            return job
        if status == "notfound":
            raise JobNotFound(f"no job {job_id!r} on this board")
        if job is not None:
            if status == "lost" and claim is not None:
                raise ClaimLost(lost_message(claim, verb, job.state, job.claim))
            if status == "unclaimable":
                raise UnclaimableJob(unclaimable_message(_visible(job, now), now))
            if status == "final":
                raise UnclaimableJob(f"job {job_id} is already {job.state}: it cannot be trashed")
        raise BoardError(f"unexpected reply {status!r} to {verb} of job {job_id}")

    def _note_due(self, due_at: float | None, now: float) -> None:
        if due_at is None:
            return
        at = anyio.current_time() + max(0.0, due_at - now)
        if self._next_due is None or at < self._next_due:
            self._next_due = at

    # -- transitions ---------------------------------------------------------------------------

    async def _post(self, spec: PostSpec) -> Job:
        (job,) = await self._post_many([spec])
        return job

    async def _post_many(self, specs: list[PostSpec]) -> list[Job]:
        script = self._scripts["POST"]
        calls = []
        for spec in specs:
            job_id = str(uuid.uuid4())
            not_before = "" if spec.not_before is None else fmt_time(spec.not_before)
            argv = [
                self._job_prefix,
                self._channel,
                job_id,
                spec.name,
                spec.flow,
                spec.args_json.decode("utf-8"),
                str(spec.priority),
                str(spec.max_attempts),
                fmt_time(spec.delay),
                not_before,
                spec.headers_json.decode("utf-8"),
                "" if spec.retry_json is None else spec.retry_json.decode("utf-8"),
            ]
            calls.append((script, [*self._keys, self._job_key(job_id)], argv))
        # The ids are chosen here and the script returns an existing job unchanged, so posts
        # whose replies were lost can be retried without posting twice. One post alone rides
        # in the pipeline of its event-loop turn; several go as one pipeline of their own.
        if len(calls) == 1:
            replies = [await self._link.read("post", lambda: self._link.script(*calls[0]))]
        else:
            replies = await self._link.read("post", lambda: self._link.scripts(calls))
        jobs = []
        for reply in replies:
            status, now, job = self._reply(reply)
            assert status == "ok" and job is not None
            if job.state is JobState.SCHEDULED and job.not_before is not None:
                self._note_due(job.not_before, now)
            jobs.append(job)
        return jobs

    async def _claim(self, job_id: str, owner: str, lease: float) -> Job:
        reply = await self._run("CLAIM", "claim", [owner, fmt_time(lease)], job_id)
        return self._checked(reply, job_id, "claim", None)

    async def _claim_next(self, owner: str, lease: float) -> Job | None:
        reply = await self._run("CLAIM_NEXT", "claim_next", [owner, fmt_time(lease)])
        status, _, job = self._reply(reply)
        return None if status == "none" else job

    async def _claim_batch(self, owner: str, lease: float, limit: int) -> list[Job]:
        reply = await self._run("CLAIM_BATCH", "claim_batch", [owner, fmt_time(lease), limit])
        jobs: list[Job] = []
        at = 2
        while at < len(reply):
            count = int(reply[at])
            jobs.append(_job(_pairs(reply[at + 1 : at + 1 + count])))
            at += 1 + count
        return jobs

    async def _renew(self, claim: Claim, lease: float) -> Claim:
        args = [claim.owner, str(claim.token), fmt_time(lease)]
        reply = await self._run("RENEW", "renew", args, claim.job_id)
        job = self._checked(reply, claim.job_id, "renew", claim)
        assert job.claim is not None
        return job.claim

    async def _consume(
        self, claim: Claim, outcome: Outcome, result: dict[str, Any], result_json: bytes
    ) -> Job:
        args = [claim.owner, str(claim.token), outcome.value, result_json.decode("utf-8")]
        reply = await self._run("CONSUME", "consume", args, claim.job_id)
        return self._checked(reply, claim.job_id, "consume", claim)

    async def _abandon(self, claim: Claim) -> Job:
        args = [claim.owner, str(claim.token)]
        reply = await self._run("ABANDON", "abandon", args, claim.job_id)
        return self._checked(reply, claim.job_id, "abandon", claim)

    async def _release(self, claim: Claim) -> Job:
        args = [claim.owner, str(claim.token)]
        reply = await self._run("RELEASE", "release", args, claim.job_id)
        return self._checked(reply, claim.job_id, "release", claim)

    async def _retry(
        self,
        claim: Claim,
        delay: float,
        failure: dict[str, Any] | None,
        failure_json: bytes | None,
    ) -> Job:
        failure_text = "" if failure_json is None else failure_json.decode("utf-8")
        if failure is not None and "\n" in failure_text:
            # The script keeps one failure a line (see RETRY): compact JSON has no raw newline,
            # but an encoder that indents would, so such text is written again compactly.
            failure_text = json.dumps(failure, ensure_ascii=False, separators=(",", ":"))
        args = [claim.owner, str(claim.token), fmt_time(delay), failure_text]
        reply = await self._run("RETRY", "retry", args, claim.job_id)
        job = self._checked(reply, claim.job_id, "retry", claim)
        # This board's sweep then announces the job when it is due (as for a delayed post).
        self._note_due(job.not_before, float(reply[1]))
        return job

    async def _trash(self, job_id: str, claim: Claim | None, reason: str) -> Job:
        if claim is None:
            args = ["0", "", "", reason]
        else:
            args = ["1", claim.owner, str(claim.token), reason]
        reply = await self._run("TRASH", "trash", args, job_id)
        return self._checked(reply, job_id, "trash", claim)

    # -- reads (idempotent: retried through a restart) -----------------------------------------

    async def _server_time(self) -> float:
        seconds, micros = await self._link.read("read the clock", self._link.client.time)
        return float(seconds) + micros / 1_000_000

    async def _get(self, job_id: str) -> Job:
        async def fetch() -> list[Any]:
            async with self._link.client.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.hgetall(self._job_key(job_id))
                return await pipe.execute()

        (seconds, micros), fields = await self._link.read("get", fetch)
        if not fields:
            raise JobNotFound(f"no job {job_id!r} on this board")
        return _visible(_job(fields), float(seconds) + micros / 1_000_000)

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
                    pipe.hgetall(self._job_key(member[17:]))
                return await pipe.execute()

        return [_job(fields) for fields in await self._link.read("iterjobs", fetch) if fields]

    async def _iterjobs(self, state: JobState | None) -> AsyncIterator[Job]:
        now = await self._server_time()
        if state is None:
            members = self._members(self._prefix + "all")
        elif state is JobState.UNCLAIMED:
            # Unclaimed as readers see it: the unclaimed set plus scheduled jobs whose time
            # came (filtered below), merged in claim order.
            members = _merge(
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
                if state is None or _visible(job, now).state is state:
                    yield _visible(job, now)
            batch = []
        for job in await self._jobs(batch) if batch else []:
            if state is None or _visible(job, now).state is state:
                yield _visible(job, now)

    async def _job_count(self, state: JobState | None) -> int:
        if state is None:
            count: int = await self._link.read(
                "job_count", lambda: self._link.client.zcard(self._prefix + "all")
            )
            return count
        script = self._scripts["COUNT"]
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
        script = self._scripts["PROMOTE"]
        argv = [self._job_prefix, self._channel]
        for _ in range(100):
            # Promoting twice changes nothing, so a lost reply is retried like a read.
            reply = await self._link.read("sweep", lambda: script(keys=self._keys, args=argv))
            now, promoted, due = float(reply[0]), int(reply[1]), reply[2]
            if promoted < lua.PROMOTE_LIMIT:
                break
        self._next_due = None
        self._note_due(float(due) if due else None, now)
        if cursor is not None:
            return [], now
        notes: list[JobNotification] = []
        start = 0
        while True:
            chunk = await self._link.read(
                "sweep", functools.partial(self._scored, self._prefix + "ready", start)
            )
            notes.extend(
                build(
                    JobNotification,
                    job_id=member[17:],
                    kind=NotificationKind.WAITING,
                    priority=-int(score),
                )
                for member, score in chunk
            )
            if len(chunk) < _CHUNK:
                return notes, now
            start += _CHUNK

    def _sweep_delay(self) -> float:
        # Sweep when the earliest delayed job or lease falls due, not only every poll_interval.
        if self._next_due is None:
            return self.poll_interval
        left = self._next_due - anyio.current_time()
        return max(0.005, min(self.poll_interval, left))

    # -- conductors ----------------------------------------------------------------------------

    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None:
        ttl = min(max(ttl, 0.0), 10 * 365 * 86400.0) if math.isfinite(ttl) else 0.0
        keys = [self._prefix + "conductors", f"{self._prefix}conductor:{owner}"]
        data = encode_json("the conductor's meta", meta, 64 * 1024).decode("utf-8")
        script = self._scripts["REGISTER"]
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
            ConductorInfo(
                owner=fields["owner"],
                name=fields["name"],
                started_at=float(fields["started_at"]),
                heartbeat_at=float(fields["heartbeat_at"]),
                expires_at=float(fields["expires_at"]),
                meta=decode_json(fields["meta"]),
            )
            for fields in found
            if fields and float(fields["expires_at"]) > now
        ]


async def _merge(
    a: AsyncIterator[tuple[float, str]], b: AsyncIterator[tuple[float, str]]
) -> AsyncIterator[tuple[float, str]]:
    """Merge two (score, member) streams that are each in claim order into one."""
    head_a = await anext(a, None)
    head_b = await anext(b, None)
    while head_a is not None or head_b is not None:
        if head_b is None or (head_a is not None and head_a <= head_b):
            assert head_a is not None
            yield head_a
            head_a = await anext(a, None)
        else:
            yield head_b
            head_b = await anext(b, None)
