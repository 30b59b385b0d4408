"""Cancels and concurrency limits on the PostgreSQL board, beyond the conformance suite: limits
exact under concurrent claims from many boards (each its own pool), a limit set while a claim
(or a renewal) of its key is under way, a lapsed renewal racing a claim (and one that waited
for its row across its lease's end), no limits rows for keys without a limit, and
post_in_transaction with a limit key. The statements' plans, the index and the upgrades are in
test_postgres_limits_schema."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aioconductor._backends.postgres import board_sql as sql
from aioconductor.boards import JobBoard, open_board
from aioconductor.boards.postgres import PostgresJobBoard
from aioconductor.errors import ClaimLost, UnclaimableJob
from aioconductor.models import JobState, LimitInfo, NotificationKind, Outcome
from tests.backends import PostgresSpace, board_fixture, one_space_fixture
from tests.postgres_helpers import admin, schema

__all__ = ["admin", "schema"]  # the fixtures, imported by name

pytestmark = pytest.mark.postgres

NAMESPACE = "pg_limits"

space = one_space_fixture("postgres")
board = board_fixture(NAMESPACE, lease=30.0, poll_interval=0.05)


@pytest.fixture
async def boards(space: PostgresSpace) -> AsyncIterator[list[JobBoard]]:
    """Eight boards on the namespace, each with a pool of its own (as eight processes)."""
    opened: list[JobBoard] = []
    try:
        for _ in range(8):
            each = open_board(space.board_url(NAMESPACE, pool_max="2"), lease=30.0)
            await each.connect()
            opened.append(each)
        yield opened
    finally:
        for each in opened:
            await each.aclose()


async def _live(admin: Any, schema: str, key: str) -> int:
    """The key's live claims, counted by the test itself."""
    return int(
        await admin.fetchval(
            f"""SELECT count(*) FROM "{schema}".jobs WHERE namespace = $1 AND limit_key = $2
                AND state = 'CLAIMED' AND expires_at > {sql.NOW}""",
            NAMESPACE,
            key,
        )
    )


# -- exactness under concurrency ------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5])
async def test_concurrent_claims_from_many_boards_never_exceed_the_limit(
    board: JobBoard, boards: list[JobBoard], admin: Any, schema: str, batch: int
) -> None:
    """Every board asks at once for more jobs than the key has slots; each round, the key's
    claims never exceed its limit (counting with SKIP LOCKED alone lets each claimer miss the
    others' uncommitted claims and take the same free slots)."""
    await board.set_limit("payments", 3)
    taken: dict[int, list[str]] = {}

    async def claim(i: int, each: JobBoard) -> None:
        if batch == 1:
            got = await each.claim_next(f"owner-{i}")
            taken[i] = [] if got is None else [got[0].id]
        else:
            taken[i] = [job.id for job, _ in await each.claim_batch(f"owner-{i}", batch)]

    for round_ in range(4):
        await board.post_many("f", [{"n": i} for i in range(40)], limit_key="payments")
        free = await board.post_many("f", [{"free": i} for i in range(4)])
        taken.clear()
        async with anyio.create_task_group() as tg:
            for i, each in enumerate(boards):
                tg.start_soon(claim, i, each)
        claimed = [job_id for ids in taken.values() for job_id in ids]
        assert len(claimed) == len(set(claimed))
        assert await _live(admin, schema, "payments") <= 3, f"round {round_}"
        # What a claim lost to a concurrent one is still there for the next claim, up to 3.
        while await board.claim_batch("sweeper", 10):
            pass
        assert await _live(admin, schema, "payments") == 3
        assert [info.claimed for info in await board.limits()] == [3]
        assert {job.id for job in free} <= {
            job.id async for job in board.iterjobs(state=JobState.CLAIMED)
        }
        await admin.execute(
            f"""UPDATE "{schema}".jobs SET state = 'COMPLETE', ready_at = NULL
                WHERE namespace = $1""",
            NAMESPACE,
        )


async def test_churn_across_keys_keeps_every_limit_and_never_deadlocks(
    board: JobBoard, boards: list[JobBoard], admin: Any, schema: str
) -> None:
    """Boards claim batches over three limited keys and end them at once, again and again: the
    claims lock the keys' rows in one order (no deadlock error), and a monitor that counts each
    key's claims never sees more than its limit."""
    limits = {"a": 2, "b": 1, "c": 3}
    for key, limit in limits.items():
        await board.set_limit(key, limit)
    for key in limits:
        await board.post_many("f", [{"n": i} for i in range(60)], limit_key=key)
    await board.post_many("f", [{"n": i} for i in range(30)])
    seen = dict.fromkeys(limits, 0)
    done = anyio.Event()
    ended = [0]

    async def monitor() -> None:
        while not done.is_set():
            for key in limits:
                seen[key] = max(seen[key], await _live(admin, schema, key))
            await anyio.lowlevel.checkpoint()

    async def work(i: int, each: JobBoard) -> None:
        with anyio.fail_after(60):
            while ended[0] < 210:
                claimed = await each.claim_batch(f"owner-{i}", 4)
                if not claimed:
                    await anyio.sleep(0.01)  # every slot is taken: wait for one to be freed
                for _, claim in claimed:
                    await each.consume(claim)
                    ended[0] += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor)
        async with anyio.create_task_group() as workers:
            for i, each in enumerate(boards):
                workers.start_soon(work, i, each)
        done.set()
    assert all(seen[key] <= limit for key, limit in limits.items()), seen
    assert await board.job_count(state=JobState.COMPLETE) == 210


async def test_a_limit_set_during_a_claim_of_its_key_counts_that_claim(
    board: JobBoard, admin: Any, schema: str
) -> None:
    """A claim of a key without a limit (no row) holds the namespace's limits gate, so a limit
    set meanwhile waits for the claim to end, and the next claim counts it."""
    first = await board.post("p1", "f", limit_key="payments", priority=1)
    second = await board.post("p2", "f", limit_key="payments")
    setting: list[str] = []

    async def set_limit() -> None:
        await board.set_limit("payments", 1)
        setting.append("set")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with admin.transaction():
                rows = await admin.fetch(
                    f'SELECT id FROM "{schema}".claim_limited($1, $2, 60, 1, NULL)',
                    NAMESPACE,
                    "admin",
                )
                assert [row[0] for row in rows] == [first.id]
                tg.start_soon(set_limit)
                await anyio.sleep(0.5)
                assert setting == []  # waits for the claim's transaction
    assert setting == ["set"]
    assert await board.claim_next("owner-2") is None
    with pytest.raises(UnclaimableJob, match="waits for a slot"):
        await board.claim(second.id, "owner-2")
    assert await board.limits() == [LimitInfo(key="payments", limit=1, claimed=1)]


async def test_a_claim_by_id_waits_for_its_keys_row_then_counts(
    board: JobBoard, admin: Any, schema: str
) -> None:
    await board.set_limit("payments", 1)
    first = await board.post("p1", "f", limit_key="payments")
    second = await board.post("p2", "f", limit_key="payments")
    outcome: list[Any] = []

    async def claim() -> None:
        try:
            outcome.append(await board.claim(second.id, "owner-2"))
        except UnclaimableJob as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with admin.transaction():
                await admin.fetch(
                    f"SELECT * FROM \"{schema}\".claim_limited($1, 'admin', 60, 1, $2)",
                    NAMESPACE,
                    first.id,
                )
                tg.start_soon(claim)
                await anyio.sleep(0.5)
                assert outcome == []  # waits for the key's row
    assert len(outcome) == 1 and isinstance(outcome[0], UnclaimableJob)
    assert (await board.get(second.id)).attempts == 0


async def test_a_lapsed_renewal_and_a_claim_of_its_key_never_both_win(
    board: JobBoard, boards: list[JobBoard]
) -> None:
    for round_ in range(10):
        key = f"payments-{round_}"
        await board.set_limit(key, 1)
        first = await board.post("p1", "f", limit_key=key)
        second = await board.post("p2", "f", limit_key=key)
        lapsed = await board.claim(first.id, "owner-1", lease=0.1)
        await anyio.sleep(0.2)
        won: list[str] = []

        async def renew() -> None:
            with contextlib.suppress(ClaimLost):
                await boards[0].renew(lapsed)  # noqa: B023
                won.append("renew")  # noqa: B023

        async def claim() -> None:
            with contextlib.suppress(UnclaimableJob):
                await boards[1].claim(second.id, "owner-2")  # noqa: B023
                won.append("claim")  # noqa: B023

        async with anyio.create_task_group() as tg:
            tg.start_soon(renew)
            tg.start_soon(claim)
        assert len(won) == 1, won
        assert [info.claimed for info in await board.limits() if info.key == key] == [1]


async def test_a_renewal_that_waited_on_the_row_past_its_lease_does_not_overshoot(
    board: JobBoard, boards: list[JobBoard], admin: Any, schema: str
) -> None:
    """A renewal whose lease was live when it began but ran out while it waited for the job's
    row (held here by a stand-in transaction) re-takes a slot: it must count under the key's
    lock, after the claim that took the slot meanwhile, and be refused. (A clock read before
    the wait called the lease live: renewed, the key held 2 claims with limit 1.)"""
    await board.set_limit("pay", 1)
    first = await board.post("p1", "f", limit_key="pay")
    second = await board.post("p2", "f", limit_key="pay")
    lapsing = await board.claim(first.id, "A", lease=1.0)
    outcome: list[str] = []

    async def renew() -> None:
        try:
            await board.renew(lapsing, lease=30.0)
            outcome.append("renewed")
        except ClaimLost:
            outcome.append("lost")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, admin.transaction():
            await admin.execute(
                f'SELECT 1 FROM "{schema}".jobs WHERE namespace = $1 AND id = $2 FOR UPDATE',
                NAMESPACE,
                first.id,
            )
            tg.start_soon(renew)  # the lease is live now; the renewal waits for the row
            await anyio.sleep(1.3)  # the lease ran out
            taken = await boards[0].claim(second.id, "B")  # 0 live claims: takes the slot
            assert taken.owner == "B"
            assert outcome == []
            # The stand-in transaction ends here: the renewal goes on.
    assert outcome == ["lost"]
    assert [info.claimed for info in await board.limits() if info.key == "pay"] == [1]
    assert await _live(admin, schema, "pay") == 1


async def test_limits_rows_do_not_pile_up_for_keys_without_a_limit(
    board: JobBoard, admin: Any, schema: str
) -> None:
    """Claims never write limits rows (the namespace's gate guards keys without a row), and a
    removed limit deletes its row: per-tenant keys leave nothing behind once their jobs are
    purged. (Claims used to make a row for every key they met, kept forever.)"""

    async def rows() -> int:
        return int(
            await admin.fetchval(
                f'SELECT count(*) FROM "{schema}".limits WHERE namespace = $1', NAMESPACE
            )
        )

    for i in range(200):
        await board.post(f"j{i}", "f", limit_key=f"tenant-{i}")
    while claimed := await board.claim_batch("o", 50):
        for _, claim in claimed:
            await board.renew(claim)
            await board.consume(claim)
    await board.purge(older_than=0)
    assert await board.limits() == []
    assert await rows() == 0, "rows left in limits for keys that never had a limit"
    await board.set_limit("tenant-1", 2)
    assert await rows() == 1
    await board.set_limit("tenant-1", None)
    assert await board.limits() == []
    assert await rows() == 0, "a removed limit left its row"


async def test_a_limit_set_during_a_renewal_of_its_key_counts_that_renewal(
    board: JobBoard, admin: Any, schema: str
) -> None:
    """A renewal of a lapsed claim of a key without a limit holds the gate too: a limit set
    meanwhile waits for it, and the next claim counts the renewed claim."""
    first = await board.post("p1", "f", limit_key="payments")
    second = await board.post("p2", "f", limit_key="payments")
    lapsed = await board.claim(first.id, "owner-1", lease=0.1)
    await anyio.sleep(0.2)
    setting: list[str] = []

    async def set_limit() -> None:
        await board.set_limit("payments", 1)
        setting.append("set")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with admin.transaction():
                rows = await admin.fetch(
                    f'SELECT id FROM "{schema}".renew_limited($1, $2, $3, $4, 60)',
                    NAMESPACE,
                    first.id,
                    "owner-1",
                    lapsed.token,
                )
                assert [row[0] for row in rows] == [first.id]
                tg.start_soon(set_limit)
                await anyio.sleep(0.5)
                assert setting == []  # waits for the renewal's transaction
    assert setting == ["set"]
    with pytest.raises(UnclaimableJob, match="waits for a slot"):
        await board.claim(second.id, "owner-2")
    assert await board.limits() == [LimitInfo(key="payments", limit=1, claimed=1)]


# -- posting and notifications ---------------------------------------------------------------


async def test_post_in_transaction_carries_the_limit_key(board: JobBoard, admin: Any) -> None:
    assert isinstance(board, PostgresJobBoard)
    await board.set_limit("payments", 0)
    async with admin.transaction():
        job = await board.post_in_transaction(admin, "p", "f", limit_key="payments")
    assert job.limit_key == "payments"
    assert (await board.get(job.id)).limit_key == "payments"
    assert await board.claim_next("owner-1") is None
    await board.set_limit("payments", 1)
    claimed = await board.claim_next("owner-1")
    assert claimed is not None and claimed[0].id == job.id


async def test_cancel_and_freed_slot_notes_travel_on_the_channel(
    board: JobBoard, admin: Any
) -> None:
    """Both are pg_notify'd in the statement that makes the change, as "<kind> <priority> <id>"
    on the namespace's channel, so any process LISTENing hears them on commit."""
    assert isinstance(board, PostgresJobBoard)
    heard: list[str] = []

    def listen(*args: Any) -> None:
        heard.append(args[-1])

    await admin.add_listener(board.channel, listen)
    try:
        job = await board.post("p", "f", limit_key="payments", priority=3)
        claim = await board.claim(job.id, "owner-1")
        await board.cancel(job.id, reason="stop")
        await board.consume(claim, outcome=Outcome.CANCELLED)
        with anyio.fail_after(5):
            while len(heard) < 3:
                await anyio.sleep(0.01)
    finally:
        await admin.remove_listener(board.channel, listen)
    assert heard == [
        f"{NotificationKind.POSTED} 3 {job.id}",
        f"{NotificationKind.CANCEL} 3 {job.id}",
        f"{NotificationKind.SLOT_FREED} 3 {job.id}",
    ]
