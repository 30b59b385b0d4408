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
  statement. The batcher's statements (``_backends/postgres/batch.py``: logbook creations and
  fused endings, one statement for the calls of one event-loop turn) count once per statement,
  under their verb marked ``(batched)``.
- SQLite (no server): every call on a link (``write``, ``snapshot``, ``read``), each one
  transaction run in the link's worker thread (several writes may share a group commit).

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
from tests.flow_ends import flow_end, running_book
from tests.postgres_helpers import until_waiting_for_a_lock

#: The most server calls one one-task job may cost, by backend (today's figures: lower them as
#: the count drops): post; the claim with the logbook, the flow and the task RUNNING (the flow
#: is registered as it is: ``conductor/starting.py``); and the task's end, the flow's end and the
#: consume in one call (Redis: one script each, ``_backends/redis/fused_claim.py`` and
#: ``fused.py``; PostgreSQL: one statement each, ``_backends/postgres/fused_claim.py`` and
#: ``fused.py``).
BOUNDS = {"redis": 3, "postgres": 3, "sqlite": 3}

#: The backends whose store fuses its ending with the board's consume.
FUSING = [BY_NAME["redis"].param(), BY_NAME["postgres"].param(), BY_NAME["sqlite"].param()]

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
    monkeypatch.setattr(RedisLink, "run_script", _with_verb(RedisLink.run_script))
    monkeypatch.setattr(RedisLink, "read", _with_verb(RedisLink.read))
    # Every command and every pipeline is one packed write, then its replies are read. The
    # private write: a pipeline's trip (_backends/redis/wire.py) calls it without the public one.
    send = AbstractConnection._send_packed_command
    monkeypatch.setattr(AbstractConnection, "_send_packed_command", _counted(send, counter, "send"))


def _instrument_sqlite(monkeypatch: pytest.MonkeyPatch, counter: CallCounter) -> None:
    from aioconductor._backends.sqlite.link import SqliteLink

    for name in ("write", "snapshot", "read"):
        call = _with_verb(_counted(getattr(SqliteLink, name), counter, name))
        monkeypatch.setattr(SqliteLink, name, call)


def _instrument_postgres(monkeypatch: pytest.MonkeyPatch, counter: CallCounter) -> None:
    from asyncpg.connection import Connection  # type: ignore[import-untyped]

    from aioconductor._backends.postgres.batch import Batcher
    from aioconductor._backends.postgres.link import PostgresLink

    monkeypatch.setattr(PostgresLink, "call", _with_verb(PostgresLink.call))
    monkeypatch.setattr(PostgresLink, "read", _with_verb(PostgresLink.read))
    flush = Batcher._flush

    @functools.wraps(flush)
    async def flush_with_verb(self: Any, batch: list[Any]) -> None:
        token = _VERB.set(f"{batch[0].kind.what} (batched)")
        try:
            await flush(self, batch)
        finally:
            _VERB.reset(token)

    monkeypatch.setattr(Batcher, "_flush", flush_with_verb)
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
    instrument = {
        "redis": _instrument_redis,
        "postgres": _instrument_postgres,
        "sqlite": _instrument_sqlite,
    }
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


@pytest.mark.parametrize("space", FUSING, indirect=True)
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


@pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)
async def test_concurrent_jobs_logbooks_and_endings_are_one_statement_each(
    space: Any, counter: CallCounter
) -> None:
    """PostgreSQL's batcher (``_backends/postgres/batch.py``): the logbook creations of N jobs
    made in one event-loop turn are one statement, and so are their fused endings. (Counted
    on the second round: the first prepares the statements on the batcher's connection, and
    asyncpg reads the server's type and settings information once per connection.)"""
    from aioconductor.models import JobState, Outcome

    jobs = 16
    url = space.board_url("many")
    async with open_board(url) as board, open_store(url) as store:
        fused = store.fused_ending(board)
        assert fused is not None
        flows: dict[str, Any] = {}

        async def create(claim: Any) -> None:
            flows[claim.job_id] = await _saved_running(store, claim.job_id, claim)

        async def end(claim: Any) -> None:
            ended, atom = flow_end(flows[claim.job_id])
            await fused(claim, Outcome.SUCCESS, {}, claim.job_id, ended, claim.token, (atom,))

        for round_ in range(2):
            for n in range(jobs):
                await board.post(f"job-{round_}-{n}", "noop", {"key": n})
            claims = [claim for _, claim in await board.claim_batch("owner", jobs)]
            assert len(claims) == jobs
            for step in (create, end):
                with counter.window() as calls:
                    async with anyio.create_task_group() as tg:
                        for claim in claims:
                            tg.start_soon(step, claim)
                if round_:
                    print(f"\n{step.__name__} of {jobs} jobs: {dict(calls)}")
                    assert sum(calls.values()) == 1, calls
            for claim in claims:
                assert (await board.get(claim.job_id)).state is JobState.COMPLETE


# -- the fused ending ------------------------------------------------------------------------


async def _saved_running(store: Any, job_id: str, claim: Any) -> Any:
    """Save job ``job_id``'s logbook RUNNING with its task RUNNING, as the journal saves it
    (fenced by ``claim``); its flow detail as saved."""
    book = await store.save_logbook(running_book(job_id), token=claim.token)
    (flow,) = book.flows.values()
    return flow


@contextlib.asynccontextmanager
async def _claimed_with_logbook(
    space: Any, store_url: str | None = None
) -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """A board and a store (on the board's URL unless given), a job claimed, and its logbook
    saved with its task RUNNING: (board, store, claim, flow detail)."""
    url = space.board_url("fused")
    async with open_board(url) as board, open_store(store_url or url) as store:
        job = await board.post("j", "noop", {"key": 1})
        [(_, claim)] = await board.claim_batch("owner", 1)
        yield board, store, claim, await _saved_running(store, job.id, claim)


async def _check_saved_and_consumed(board: Any, store: Any, claim: Any, flow: Any) -> None:
    """The fused ending of ``claim``'s job saves its flow's end and consumes it."""
    from aioconductor.models import JobState, Outcome
    from aioconductor.persistence.models import AtomState, FlowState

    fused = store.fused_ending(board)
    assert fused is not None
    ended, atom = flow_end(flow)
    # What the call returns is not used (Redis sends nothing back): the job as the board holds it.
    await fused(claim, Outcome.SUCCESS, {"r": 1}, claim.job_id, ended, claim.token, (atom,))
    job = await board.get(claim.job_id)
    assert job.state is JobState.COMPLETE and job.result == {"r": 1}
    assert job.outcome is Outcome.SUCCESS
    saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
    assert saved.state is FlowState.SUCCESS and saved.version == flow.version + 1
    assert saved.atoms["echo"].state is AtomState.SUCCESS
    assert saved.atoms["echo"].result == {"echoed": 1}
    assert saved.atoms["echo"].version == flow.atoms["echo"].version + 1


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_the_fused_ending_saves_the_flows_end_and_consumes(space: Any) -> None:
    async with _claimed_with_logbook(space) as (board, store, claim, flow):
        await _check_saved_and_consumed(board, store, claim, flow)


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_stale_claim_changes_nothing_in_the_fused_ending(space: Any) -> None:
    from aioconductor.errors import ClaimLost
    from aioconductor.models import JobState, Outcome
    from aioconductor.persistence.models import FlowState

    async with _claimed_with_logbook(space) as (board, store, claim, flow):
        fused = store.fused_ending(board)
        assert fused is not None
        ended, atom = flow_end(flow)
        # A token the board never gave, then a claim another owner took over.
        future = claim.model_copy(update={"token": claim.token + 1})
        with pytest.raises(ClaimLost):
            await fused(future, Outcome.SUCCESS, {}, claim.job_id, ended, future.token, (atom,))
        await board.release(claim)
        taken = await board.claim(claim.job_id, "new-owner")
        with pytest.raises(ClaimLost):
            await fused(claim, Outcome.SUCCESS, {}, claim.job_id, ended, claim.token, (atom,))
        job = await board.get(claim.job_id)
        assert job.state is JobState.CLAIMED and job.claim is not None
        assert (job.claim.owner, job.claim.token) == ("new-owner", taken.token)
        book = await store.get_logbook(claim.job_id)
        saved = book.flows[flow.uuid]
        assert saved.state is FlowState.RUNNING and saved.version == flow.version
        assert saved.atoms["echo"] == flow.atoms["echo"]
        assert book.token == claim.token


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_a_refused_flow_end_consumes_nothing(space: Any) -> None:
    from aioconductor.errors import ClaimLost, VersionConflict
    from aioconductor.models import JobState, Outcome
    from aioconductor.persistence.models import FlowState

    async with _claimed_with_logbook(space) as (board, store, claim, flow):
        fused = store.fused_ending(board)
        assert fused is not None
        ended, atom = flow_end(flow)
        ended.version += 1  # a version the store does not hold
        with pytest.raises(VersionConflict):
            await fused(claim, Outcome.SUCCESS, {}, claim.job_id, ended, claim.token, (atom,))
        assert (await board.get(claim.job_id)).state is JobState.CLAIMED
        saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
        assert saved.state is FlowState.RUNNING and saved.version == flow.version
        # A newer token wrote to the logbook (the board's claim still current): refused.
        flow = await store.update_flow_detail(claim.job_id, flow, token=claim.token + 1)
        ended, atom = flow_end(flow)
        with pytest.raises(ClaimLost):
            await fused(claim, Outcome.SUCCESS, {}, claim.job_id, ended, claim.token, (atom,))
        assert (await board.get(claim.job_id)).state is JobState.CLAIMED
        saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
        assert saved.state is FlowState.RUNNING and saved.version == flow.version


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_the_fused_ending_frees_a_limit_keys_slot(space: Any) -> None:
    """A job of a limit key ended by the fused call frees its slot, as consume does: the
    next job of the key becomes claimable."""
    url = space.board_url("limited")
    async with open_board(url) as board, open_store(url) as store:
        await board.set_limit("payments", 1)
        first = await board.post("p1", "noop", {"key": 1}, limit_key="payments")
        second = await board.post("p2", "noop", {"key": 2}, limit_key="payments")
        [(_, claim)] = await board.claim_batch("owner", 2)
        assert claim.job_id == first.id
        assert await board.claim_batch("owner", 1) == []  # the key is full
        flow = await _saved_running(store, first.id, claim)
        await _check_saved_and_consumed(board, store, claim, flow)
        [(job, _)] = await board.claim_batch("owner", 1)
        assert job.id == second.id


@pytest.mark.parametrize("space", [BY_NAME["redis"].param()], indirect=True)
async def test_no_fused_ending_across_redis_namespaces(space: Any) -> None:
    async with (
        open_board(space.board_url("one")) as board,
        open_store(space.board_url("two")) as store,
    ):
        assert store.fused_ending(board) is None


@pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)
async def test_no_fused_ending_across_postgres_servers_databases_or_logins(space: Any) -> None:
    """Fused only where one connection reaches both: the same server, database, user and
    settings (the same URL, password aside)."""
    from urllib.parse import urlsplit

    url = space.board_url("fused")
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 5432
    others = [
        url.replace(parts.path, "/postgres", 1),  # another database
        url.replace(parts.netloc, f"postgres@{host}:{port + 1}", 1),  # another server
        url.replace(parts.netloc, f"someone@{host}:{port}", 1),  # another user
        url + "&statement_timeout=5000",  # other settings
    ]
    async with open_store(url) as store, open_board(url) as board:
        assert store.fused_ending(board) is not None
        for other in others:
            assert other != url
            # Not connected: the URLs alone decide.
            assert store.fused_ending(open_board(other)) is None, other
        assert store.fused_ending(open_board(space.board_url("fused"))) is not None
    # The password is not compared (the same login either way).
    one, two = (url.replace(parts.netloc, f"postgres:{pw}@{host}:{port}", 1) for pw in "ab")
    assert open_store(one).fused_ending(open_board(two)) is not None


@pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)
async def test_the_fused_ending_spans_postgres_schemas_and_namespaces(space: Any) -> None:
    """A board and a store in other schemas and namespaces of one database: one statement
    names both, and saves and consumes as on one."""
    from tests.postgres_helpers import drop_schemas, unique_schema

    other = unique_schema()
    try:
        store_url = space.board_url("elsewhere").replace(space.schema, other)
        async with _claimed_with_logbook(space, store_url) as (board, store, claim, flow):
            assert (board.schema, board.namespace) != (store.schema, store.namespace)
            await _check_saved_and_consumed(board, store, claim, flow)
    finally:
        await drop_schemas(other)


async def _racing_a_commit(space: Any, change: str, claim: Any, end: Any) -> Any:
    """Run ``end`` (the fused ending) while a transaction of the test's own, having made
    ``change`` (an UPDATE's SET) to the job's row, holds it; commit once ``end`` waits for the
    row; ``end``'s outcome (its job, or the exception it raised)."""
    admin = await space.admin()
    outcome: list[Any] = []

    async def run() -> None:
        try:
            outcome.append(await end())
        except Exception as exc:
            outcome.append(exc)

    transaction = admin.transaction()
    await transaction.start()
    try:
        await admin.execute(f"UPDATE {space.schema}.jobs SET {change} WHERE id = $1", claim.job_id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await until_waiting_for_a_lock(admin, space.tag)
            await transaction.commit()
    except BaseException:
        await transaction.rollback()
        raise
    return outcome[0]


@pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)
async def test_the_fused_ending_waits_for_a_renewal_then_ends(space: Any) -> None:
    """A change to the job's row committed after the statement began (the lease keeper's
    renewal) is read again, as committed: the claim is still current, so the flow's end is
    saved and the job consumed (the consume's own re-check of the row, after the flow was
    written, passes)."""
    from aioconductor.models import JobState, Outcome
    from aioconductor.persistence.models import FlowState

    async with _claimed_with_logbook(space) as (board, store, claim, flow):
        fused = store.fused_ending(board)
        ended, atom = flow_end(flow)
        outcome = await _racing_a_commit(
            space,
            "expires_at = expires_at + 60, ready_at = ready_at + 60",
            claim,
            lambda: fused(claim, Outcome.SUCCESS, {}, claim.job_id, ended, claim.token, (atom,)),
        )
        assert not isinstance(outcome, Exception), outcome
        assert (await board.get(claim.job_id)).state is JobState.COMPLETE
        saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
        assert saved.state is FlowState.SUCCESS


@pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)
async def test_the_fused_ending_waits_for_a_take_over_then_changes_nothing(space: Any) -> None:
    """A take-over committed after the statement began is read again, as committed: the
    claim is stale, so nothing is written."""
    from aioconductor.errors import ClaimLost
    from aioconductor.models import JobState, Outcome
    from aioconductor.persistence.models import FlowState

    async with _claimed_with_logbook(space) as (board, store, claim, flow):
        fused = store.fused_ending(board)
        ended, atom = flow_end(flow)
        raised = await _racing_a_commit(
            space,
            "owner = 'thief', token = token + 1",
            claim,
            lambda: fused(claim, Outcome.SUCCESS, {}, claim.job_id, ended, claim.token, (atom,)),
        )
        assert isinstance(raised, ClaimLost), raised
        job = await board.get(claim.job_id)
        assert job.state is JobState.CLAIMED and job.claim is not None
        assert job.claim.owner == "thief"
        saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
        assert saved.state is FlowState.RUNNING and saved.version == flow.version


@pytest.mark.parametrize("space", FUSING, indirect=True)
async def test_the_flows_end_is_told_once_it_is_saved(space: Any) -> None:
    """A conductor with a fused ending tells the task's SUCCESS and the flow's end after the
    call that saved them, before the job's consume."""
    url = space.board_url("told")
    told: list[str] = []
    async with open_board(url) as board, open_store(url) as store:
        assert store.fused_ending(board) is not None
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
