"""The Redis board's records: a job to post as the post script's arguments; read back, a job or
a conductor from its hash, a notification from a member of the ``ready`` set, the replies of the
board's scripts (see :mod:`aioconductor._backends.redis.board_scripts`) and the errors their
statuses stand for."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from itertools import islice

from aioconductor._backends.redis.board_prelude import member_id
from aioconductor._backends.redis.link import fmt_time
from aioconductor._backends.redis.link import pairs
from aioconductor._models import build
from aioconductor._models import build_from
from aioconductor._payload import decode_json
from aioconductor.boards._support import PostSpec
from aioconductor.boards._support import conductor_from_row
from aioconductor.boards._support import visible
from aioconductor.boards.base import lost_message
from aioconductor.boards.base import unclaimable_message
from aioconductor.errors import BoardError
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import UnclaimableJob
from aioconductor.models import Claim
from aioconductor.models import ConductorInfo
from aioconductor.models import Job
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import NotificationKind
from aioconductor.models import Outcome
from aioconductor.models import RetryPolicy

__all__ = [
    "checked_job",
    "claimed_jobs",
    "conductor_from_hash",
    "job_from_hash",
    "merge",
    "parse_reply",
    "post_argv",
    "waiting",
]


def job_from_hash(fields: dict[str, str]) -> Job:
    """A ``Job`` from its hash fields as the scripts store them."""
    # Every claim reads its job back: the models are built from dicts (keyword arguments cost
    # a dict of their own, about a microsecond for a Job's), and ``get`` is looked up once.
    get = fields.get
    name = fields["state"]
    state = _STATES[name] if name in _STATES else JobState(name)  # unknown: the enum's error
    cancel_reason = get("cancel_reason")
    owner = get("owner")
    claim = None
    if owner is not None:
        claim = build_from(
            Claim,
            {
                "job_id": fields["id"],
                "owner": owner,
                "token": int(fields["token"]),
                "expires_at": float(fields["expires_at"]),
                "cancel_requested": cancel_reason is not None and not state.is_final,
            },
        )
    not_before = get("not_before")
    result = get("result")
    outcome = get("outcome")
    headers = get("headers")
    retry = get("retry")
    failures = get("failures")
    return build_from(
        Job,
        {
            "id": fields["id"],
            "name": fields["name"],
            "flow": fields["flow"],
            "args": decode_json(fields["args"]),
            "key": get("key"),
            "priority": int(fields["priority"]),
            "seq": int(fields["seq"]),
            "created_at": float(fields["created_at"]),
            "updated_at": float(fields["updated_at"]),
            "not_before": None if not_before is None else float(not_before),
            "attempts": int(fields["attempts"]),
            "max_attempts": int(fields["max_attempts"]),
            "state": state,
            "claim": claim,
            "outcome": None if outcome is None else _outcome(outcome),
            "result": None if result is None else decode_json(result),
            "trash_reason": get("trash_reason"),
            # Absent on most jobs: a new dict for none, rather than decoding "{}" for each.
            "headers": decode_json(headers) if headers else {},
            # Absent on jobs that never had them (and on jobs written before they existed).
            "releases": int(get("releases", 0)),
            "abandons": int(get("abandons", 0)),
            "retries": int(get("retries", 0)),
            "retry": _policy(retry) if retry else None,
            "failures": decode_json(failures) if failures else [],
            "cancel_reason": cancel_reason,
            "limit_key": get("limit_key"),
        },
    )


#: States and outcomes by their stored names: the enums' own lookup by value costs some ten
#: times a dict's, and every job read (each claim's) makes it.
_STATES = {state.value: state for state in JobState}
_OUTCOMES = {outcome.value: outcome for outcome in Outcome}


def _outcome(name: str) -> Outcome:
    """The outcome stored as ``name`` (an unknown one: the enum's own error)."""
    return _OUTCOMES[name] if name in _OUTCOMES else Outcome(name)


@functools.lru_cache(maxsize=256)
def _policy(text: str) -> RetryPolicy:
    """The retry policy stored as ``text``; cached, as jobs of one flow share a few policies
    and a claim reads its job's every time (the policy is frozen, so sharing it is safe)."""
    return RetryPolicy.model_validate_json(text)


def conductor_from_hash(fields: dict[str, str]) -> ConductorInfo:
    """A ``ConductorInfo`` from its hash fields as the ``REGISTER`` script stores them."""
    times = (float(fields[name]) for name in ("started_at", "heartbeat_at", "expires_at"))
    return conductor_from_row((fields["owner"], fields["name"], *times, fields["meta"]))


def post_argv(spec: PostSpec) -> list[str]:
    """The post script's ARGV for ``spec``, from ``ARGV[3]`` (the job's id) to ``ARGV[14]``."""
    return [
        spec.id,
        spec.name,
        spec.flow,
        spec.args_json.decode("utf-8"),
        str(spec.priority),
        str(spec.max_attempts),
        fmt_time(spec.delay),
        "" if spec.not_before is None else fmt_time(spec.not_before),
        spec.headers_json.decode("utf-8"),
        "" if spec.retry_json is None else spec.retry_json.decode("utf-8"),
        spec.key or "",
        spec.limit_key or "",
    ]


def parse_reply(reply: Sequence[str]) -> tuple[str, float, Job | None]:
    """A verb's reply ``{status, now, field, value, ...}``: its status, the server's time and
    the job (None when the reply holds none)."""
    status, now = reply[0], float(reply[1])
    return status, now, (job_from_hash(pairs(reply[2:])) if len(reply) > 2 else None)


def checked_job(reply: Sequence[str], job_id: str, verb: str, claim: Claim | None) -> Job:
    """The job of a verb's reply, or the error its status stands for.

    Raises:
        JobNotFound: no such job.
        ClaimLost: ``claim`` is no longer the job's, or its lease ran out and its limit key
            is full without it (``renew``).
        UnclaimableJob: the job cannot be claimed (its limit key is full, too), or is final
            and cannot be trashed.
        BoardError: a status no verb answers.
    """
    status, now, job = parse_reply(reply)
    if status == "ok" and job is not None:
        return job
    if status == "notfound":
        raise JobNotFound(f"no job {job_id!r} on this board")
    if job is not None:
        if status == "lost" and claim is not None:
            raise ClaimLost(lost_message(claim, verb, job.state, job.claim))
        if status == "unclaimable":
            raise UnclaimableJob(unclaimable_message(visible(job, now), now))
        if status == "full" and claim is not None:
            raise ClaimLost(
                f"{verb} of job {job_id} by {claim.owner!r} refused: its lease ran out and "
                f"its limit key {job.limit_key!r} is full"
            )
        if status == "full":
            raise UnclaimableJob(
                f"job {job_id} waits for a slot: limit key {job.limit_key!r} is full"
            )
        if status == "final":
            raise UnclaimableJob(f"job {job_id} is already {job.state}: it cannot be trashed")
    raise BoardError(f"unexpected reply {status!r} to {verb} of job {job_id}")


def claimed_jobs(reply: Sequence[str]) -> list[Job]:
    """The jobs of a ``CLAIM_BATCH`` reply: after status and time, per job its field count
    and its fields."""
    jobs: list[Job] = []
    rest = iter(reply)
    next(rest), next(rest)
    for count in rest:
        # One iterator zipped with itself pairs its items, without slicing the reply thrice
        # (strict: an odd count raises, as pairs does).
        fields = islice(rest, int(count))
        jobs.append(job_from_hash(dict(zip(fields, fields, strict=True))))
    return jobs


def waiting(members: Iterable[tuple[str, float]]) -> Iterator[JobNotification]:
    """A ``WAITING`` notification for each (member, score) of the ``ready`` set."""
    for member, score in members:
        yield build(
            JobNotification,
            job_id=member_id(member),
            kind=NotificationKind.WAITING,
            priority=-int(score),
        )


async def merge(
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
