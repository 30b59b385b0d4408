"""Server calls per job (issue #25): what one one-task job costs on Redis and PostgreSQL, from
its post to its consume, with the conductor's board and store on the same server.

A regression guard: every round trip to the server in that window is counted at the driver's
edge, and the count must stay at most the figure recorded in ``benchmarks/README.md`` ("Session 7:
server calls per job"). Lower ``BOUNDS`` when a change cuts the count; never raise it.

What a round trip is:

- Redis: every write of one or more packed commands to a connection (redis-py's
  ``send_packed_command``): one command, or one pipeline of scripts (the link's batcher).
- PostgreSQL: every message exchange asyncpg waits for: a simple query (``BEGIN``, ``COMMIT``),
  a prepare (a statement not yet in the connection's cache), a bind-and-execute of a prepared
  statement.

Each is put under the board or store verb that made it (the ``what`` of ``link.call`` and
``link.read``); the test prints the breakdown (run it with ``-s``). The conductor runs one job
at a time (``max_concurrency=1``), so no claim of another job, and no batching of several jobs'
calls, falls in the window; jobs run first warm the connections and statement caches, so the
figure is the steady state. The count is taken over a few jobs, and the smallest is asserted:
a heartbeat or sweep of the conductor's that happens to land in one job's window, or a pooled
PostgreSQL connection used for the first time (it prepares each statement once), is not the
job's cost.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from aioconductor import Conductor, open_board, open_store
from tests.apps import flows
from tests.backends import BY_NAME

#: The most server calls one one-task job may cost, by backend (today's figures: lower them as
#: the count drops). Redis: post, claim, the logbook with the task RUNNING, and the task's end,
#: the flow's end and the consume in one script (``aioconductor/_backends/redis/fused.py``).
BOUNDS = {"redis": 4, "postgres": 5}

#: Jobs run before counting (connections opened, statements prepared, scripts loaded).
WARM_UP = 5
#: Jobs counted; the smallest count is asserted.
COUNTED = 3

_VERB: contextvars.ContextVar[str] = contextvars.ContextVar("verb", default="(no verb)")


class CallCounter:
    """Round trips to the server, by (verb, kind), while :attr:`on`."""

    def __init__(self) -> None:
        self.on = False
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def count(self, kind: str) -> None:
        if self.on:
            self.calls[(_VERB.get(), kind)] += 1

    @contextlib.contextmanager
    def window(self) -> Iterator[collections.Counter[tuple[str, str]]]:
        self.calls = collections.Counter()
        self.on = True
        try:
            yield self.calls
        finally:
            self.on = False


def _with_verb(method: Any) -> Any:
    """``method`` (a link's ``call`` or ``read``), run with its ``what`` as the verb."""

    @functools.wraps(method)
    async def wrapper(self: Any, what: str, *args: Any, **kwargs: Any) -> Any:
        token = _VERB.set(what)
        try:
            return await method(self, what, *args, **kwargs)
        finally:
            _VERB.reset(token)

    return wrapper


def _counted(method: Any, counter: CallCounter, kind: str) -> Any:
    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        counter.count(kind)
        return await method(*args, **kwargs)

    return wrapper


def _instrument_redis(monkeypatch: pytest.MonkeyPatch, counter: CallCounter) -> None:
    from redis.asyncio.connection import AbstractConnection

    from aioconductor._backends.redis.link import RedisLink

    monkeypatch.setattr(RedisLink, "call", _with_verb(RedisLink.call))
    monkeypatch.setattr(RedisLink, "read", _with_verb(RedisLink.read))
    # Every command and every pipeline is one packed write, then its replies are read.
    send = AbstractConnection.send_packed_command
    monkeypatch.setattr(AbstractConnection, "send_packed_command", _counted(send, counter, "send"))


def _instrument_postgres(monkeypatch: pytest.MonkeyPatch, counter: CallCounter) -> None:
    from asyncpg.connection import Connection  # type: ignore[import-untyped]

    from aioconductor._backends.postgres.link import PostgresLink

    monkeypatch.setattr(PostgresLink, "call", _with_verb(PostgresLink.call))
    monkeypatch.setattr(PostgresLink, "read", _with_verb(PostgresLink.read))
    execute = Connection.execute

    @functools.wraps(execute)
    async def counted_execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args:  # a simple query (BEGIN, COMMIT, ...): with args it is prepared, below
            counter.count(query.split(None, 1)[0].upper() if query.strip() else "query")
        return await execute(self, query, *args, **kwargs)

    get_statement = Connection._get_statement

    @functools.wraps(get_statement)
    async def counted_get_statement(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        record_class = kwargs.get("record_class") or self._protocol.get_record_class()
        key = (query, record_class, kwargs.get("ignore_custom_codec", False))
        if kwargs.get("use_cache", True) is False or self._stmt_cache.get(key) is None:
            counter.count("prepare")
        return await get_statement(self, query, *args, **kwargs)

    monkeypatch.setattr(Connection, "execute", counted_execute)
    monkeypatch.setattr(Connection, "_get_statement", counted_get_statement)
    do_execute = Connection._do_execute
    monkeypatch.setattr(Connection, "_do_execute", _counted(do_execute, counter, "execute"))


@pytest.fixture
def counter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CallCounter:
    counter = CallCounter()
    instrument = {"redis": _instrument_redis, "postgres": _instrument_postgres}
    instrument[request.node.callspec.params["space"]](monkeypatch, counter)
    return counter


@contextlib.asynccontextmanager
async def _running(conductor: Conductor) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        await tg.start(conductor.run)
        try:
            yield
        finally:
            conductor.stop()


@pytest.mark.parametrize(
    "space", [BY_NAME["redis"].param(), BY_NAME["postgres"].param()], indirect=True
)
async def test_one_task_job_costs_at_most_the_recorded_server_calls(
    space: Any, counter: CallCounter
) -> None:
    url = space.board_url("calls")
    consumed: list[anyio.Event] = []

    def on_consumed(event: str, details: dict[str, Any]) -> None:
        counter.on = False  # the window ends with the job's consume
        consumed[-1].set()

    async with open_board(url) as board, open_store(url) as store:
        # One job at a time; no lease renewal, heartbeat or retention within a job's window.
        conductor = Conductor(
            "calls", board, store=store, flows=flows, max_concurrency=1, retention=None
        )
        conductor.notifier.register("job_consumed", on_consumed)
        counts: list[collections.Counter[tuple[str, str]]] = []
        with anyio.fail_after(30):
            async with _running(conductor):
                for n in range(WARM_UP + COUNTED):
                    consumed.append(anyio.Event())
                    # Let the conductor's claim after the last job come back empty: it is the
                    # idle conductor's cost, not the next job's.
                    await anyio.sleep(0.2)
                    with counter.window() as calls:
                        await board.post(f"job-{n}", "noop", {"key": n})
                        await consumed[-1].wait()
                    if n >= WARM_UP:
                        counts.append(calls)
    totals = [sum(calls.values()) for calls in counts]
    best = counts[totals.index(min(totals))]
    by_verb: collections.Counter[str] = collections.Counter()
    for (verb, _), n in best.items():
        by_verb[verb] += n
    print(f"\n{space.backend}: server calls per one-task job: {totals} (smallest asserted)")
    for (verb, kind), n in sorted(best.items()):
        print(f"  {verb:<22} {kind:<10} {n}")
    print("  by verb: " + ", ".join(f"{verb} {n}" for verb, n in by_verb.items()))
    assert min(totals) <= BOUNDS[space.backend], best


# -- the fused ending on Redis ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def _claimed_with_logbook(space: Any) -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """A Redis board and store on one URL, a job claimed, and its logbook saved RUNNING with
    its task RUNNING (as the journal saves it): (board, store, claim, flow detail)."""
    from aioconductor.persistence.models import (
        AtomDetail,
        AtomState,
        FlowDetail,
        FlowState,
        LogBook,
    )

    url = space.board_url("fused")
    async with open_board(url) as board, open_store(url) as store:
        job = await board.post("j", "noop", {"key": 1})
        [(_, claim)] = await board.claim_batch("owner", 1)
        flow = FlowDetail(name="noop", state=FlowState.RUNNING)
        flow.atoms["echo"] = AtomDetail(name="echo", state=AtomState.RUNNING)
        book = LogBook(uuid=job.id, name="j", flows={flow.uuid: flow})
        book = await store.save_logbook(book, token=claim.token)
        yield board, store, claim, book.flows[flow.uuid]


def _ended(flow: Any) -> tuple[Any, Any]:
    """The flow's end as the journal writes it: the flow SUCCESS, its task SUCCESS."""
    from aioconductor.persistence.models import AtomState, FlowState

    ended = flow.model_copy(deep=True)
    ended.state = FlowState.SUCCESS
    atom = ended.atoms["echo"]
    atom.state, atom.result = AtomState.SUCCESS, {"echoed": 1}
    return ended, atom


@pytest.mark.parametrize("space", [BY_NAME["redis"].param()], indirect=True)
async def test_the_fused_ending_saves_the_flows_end_and_consumes(space: Any) -> None:
    from aioconductor.models import JobState, Outcome
    from aioconductor.persistence.models import AtomState, FlowState

    async with _claimed_with_logbook(space) as (board, store, claim, flow):
        fused = store.fused_ending(board)
        assert fused is not None
        ended, atom = _ended(flow)
        job = await fused(
            claim, Outcome.SUCCESS, {"r": 1}, claim.job_id, ended, claim.token, (atom,)
        )
        assert job.state is JobState.COMPLETE and job.result == {"r": 1}
        saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
        assert saved.state is FlowState.SUCCESS and saved.version == flow.version + 1
        assert saved.atoms["echo"].state is AtomState.SUCCESS
        assert saved.atoms["echo"].result == {"echoed": 1}


@pytest.mark.parametrize("space", [BY_NAME["redis"].param()], indirect=True)
async def test_a_stale_claim_changes_nothing_in_the_fused_ending(space: Any) -> None:
    from aioconductor.errors import ClaimLost
    from aioconductor.models import JobState, Outcome
    from aioconductor.persistence.models import FlowState

    async with _claimed_with_logbook(space) as (board, store, claim, flow):
        fused = store.fused_ending(board)
        assert fused is not None
        stale = claim.model_copy(update={"token": claim.token + 1})
        ended, atom = _ended(flow)
        with pytest.raises(ClaimLost):
            await fused(stale, Outcome.SUCCESS, {}, claim.job_id, ended, stale.token, (atom,))
        assert (await board.get(claim.job_id)).state is JobState.CLAIMED
        saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
        assert saved.state is FlowState.RUNNING and saved.version == flow.version


@pytest.mark.parametrize("space", [BY_NAME["redis"].param()], indirect=True)
async def test_a_refused_flow_end_consumes_nothing(space: Any) -> None:
    from aioconductor.errors import VersionConflict
    from aioconductor.models import JobState, Outcome

    async with _claimed_with_logbook(space) as (board, store, claim, flow):
        fused = store.fused_ending(board)
        assert fused is not None
        ended, atom = _ended(flow)
        ended.version += 1  # a version the store does not hold
        with pytest.raises(VersionConflict):
            await fused(claim, Outcome.SUCCESS, {}, claim.job_id, ended, claim.token, (atom,))
        assert (await board.get(claim.job_id)).state is JobState.CLAIMED


@pytest.mark.parametrize("space", [BY_NAME["redis"].param()], indirect=True)
async def test_no_fused_ending_across_namespaces(space: Any) -> None:
    async with (
        open_board(space.board_url("one")) as board,
        open_store(space.board_url("two")) as store,
    ):
        assert store.fused_ending(board) is None


@pytest.mark.parametrize("space", [BY_NAME["redis"].param()], indirect=True)
async def test_the_flows_end_is_told_once_it_is_saved(space: Any) -> None:
    """A conductor with a fused ending tells the task's SUCCESS and the flow's end after the
    call that saved them, before the job's consume."""
    url = space.board_url("told")
    told: list[str] = []
    async with open_board(url) as board, open_store(url) as store:
        conductor = Conductor("told", board, store=store, flows=flows, retention=None)
        for event in ("atom_state", "flow_state", "job_consumed"):
            conductor.notifier.register(
                event, lambda event, details: told.append(f"{event} {details.get('state', '')}")
            )
        job = await board.post("j", "noop", {"key": 1})
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                await board.wait_for(job.id)
                conductor.stop()
        book = await store.get_logbook(job.id)
    assert told[-3:] == ["atom_state SUCCESS", "flow_state SUCCESS", "job_consumed "]
    [flow] = book.flows.values()
    assert str(flow.state) == "SUCCESS"
