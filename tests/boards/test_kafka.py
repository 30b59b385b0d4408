"""What only the Kafka board does: its URL, its topics, offsets, dead letters and the log fold.

The shared semantics are in ``test_conformance.py``; these run against the Tansu test broker.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import types

import anyio
import pytest
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from aioconductor._backends.kafka.log import Write
from aioconductor._backends.kafka.view import JobView
from aioconductor.boards import open_board
from aioconductor.boards.kafka import KafkaJobBoard
from aioconductor.errors import BackendUnavailable, ConfigurationError
from aioconductor.models import JobState, NotificationKind, RetryPolicy
from tests.kafka_helpers import (
    board,
    committed,
    kafka_url,
    open_kafka_board,
    read_all,
    require_kafka,
    topic,
)

__all__ = ["board", "topic"]  # the fixtures

pytestmark = pytest.mark.kafka


def test_url_options_name_the_topics_and_stay_away_from_the_driver() -> None:
    board = open_kafka_board(
        "kafka://broker-a,broker-b:9093?topic=orders&namespace=shop&partitions=6"
        "&replication=2&idempotence=false&fetch_wait_ms=5&lease=7"
    )
    assert board.bootstrap == "broker-a:9092,broker-b:9093"
    assert (board.jobs_topic, board.state_topic, board.dead_topic) == (
        "orders.shop.jobs",
        "orders.shop.state",
        "orders.shop.dead",
    )
    assert board.group_id == "orders.shop.conductors" and board.lease == 7.0
    assert "topic" not in repr(board) and board.url == "kafka://broker-a:9092,broker-b:9093"


@pytest.mark.parametrize(
    "query",
    ["topic=bad%20name", "partitions=0", "replication=-1", "idempotence=maybe", "partitions=x"],
)
def test_bad_url_options_are_refused(query: str) -> None:
    with pytest.raises(ConfigurationError):
        open_board(f"kafka://localhost:9092?{query}")


async def test_topics_are_created_as_configured(topic: str) -> None:
    async with open_kafka_board(kafka_url(topic, "tests", partitions=3)) as board:
        assert board.partitions == 3
        names = (board.jobs_topic, board.state_topic, board.dead_topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=require_kafka())
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics(list(names))}
    finally:
        await admin.close()
    assert [len(described[name]["partitions"]) for name in names] == [3, 1, 1]
    # A second board on the same topics reads the partition count from the broker.
    async with open_kafka_board(kafka_url(topic, "tests", partitions=9)) as again:
        assert again.partitions == 3


@pytest.mark.skipif(
    bool(os.environ.get("AIOCONDUCTOR_KAFKA_URL")), reason="Tansu refuses idempotence"
)
async def test_a_broker_refusing_idempotent_producers_gets_a_clear_error(topic: str) -> None:
    board = open_kafka_board(kafka_url(topic, "tests", idempotence="true"))
    with pytest.raises(BackendUnavailable, match=r"idempotence=false"):
        await board.connect()
    await board.aclose()


async def test_an_unreachable_broker_is_backend_unavailable() -> None:
    board = open_kafka_board("kafka://127.0.0.1:1?idempotence=false")
    with anyio.fail_after(60), pytest.raises(BackendUnavailable):
        await board.connect()
    await board.aclose()


async def test_a_new_instance_replays_the_same_jobs(board: KafkaJobBoard, topic: str) -> None:
    jobs = [await board.post(f"j{n}", "f", {"n": n}, priority=n % 2) for n in range(6)]
    claim = await board.claim(jobs[0].id, "o")
    await board.consume(claim, result={"ok": 1})
    await board.trash(jobs[1].id, reason="no")
    renewed = await board.renew(await board.claim(jobs[2].id, "o", lease=60))
    before = [job async for job in board.iterjobs()]
    async with open_kafka_board(kafka_url(topic, "tests")) as replayed:
        assert [job async for job in replayed.iterjobs()] == before
        assert (await replayed.get(jobs[2].id)).claim == renewed


async def test_a_new_instance_replays_releases_abandons_and_retries(
    board: KafkaJobBoard, topic: str
) -> None:
    policy = RetryPolicy(retries=2, base=30.0)
    job = await board.post("j", "f", retry=policy)
    await board.release(await board.claim(job.id, "o"))
    await board.abandon(await board.claim(job.id, "o"))
    retried = await board.retry(await board.claim(job.id, "o"), delay=30, failure={"n": 1})
    assert (retried.releases, retried.abandons, retried.retries, retried.attempts) == (1, 1, 1, 1)
    async with open_kafka_board(kafka_url(topic, "tests")) as replayed:
        again = await replayed.get(job.id)
        assert again == await board.get(job.id)
        assert again.retry == policy and again.failures == [{"n": 1}]
        assert again.state is JobState.SCHEDULED and again.not_before == retried.not_before
    # The jobs record carries the policy too, for whoever reads the jobs topic.
    records = [r for p in range(board.partitions) for r in await read_all(board.jobs_topic, p)]
    assert [json.loads(r.value)["retry"] for r in records] == [policy.model_dump()]


async def test_jobs_written_before_the_board_kept_the_counters_still_read_and_run(
    board: KafkaJobBoard,
) -> None:
    log = board._link.log
    assert log is not None
    fresh = await board.post("new", "f")
    old = dict(board._view.jobs[fresh.id], id="00000000-0000-4000-8000-000000000001")
    for field in ("releases", "abandons", "retries", "retry", "failures"):
        del old[field]
    assert (await log.write(Write(old["id"], {"op": "post", "base": None, "job": old}, 1))).accepted
    job = await board.get(old["id"])
    assert (job.releases, job.abandons, job.retries, job.retry, job.failures) == (0, 0, 0, None, [])
    released = await board.release(await board.claim(job.id, "o"))
    abandoned = await board.abandon(await board.claim(job.id, "o"))
    retried = await board.retry(await board.claim(job.id, "o"), delay=0, failure={"n": 1})
    assert (released.releases, abandoned.abandons) == (1, 1)
    assert (retried.retries, retried.failures, retried.attempts) == (1, [{"n": 1}], 1)


async def test_a_retried_job_is_announced_once_when_due_even_past_its_old_lease(
    board: KafkaJobBoard,
) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "o", lease=0.4)
    seen: list[NotificationKind] = []
    async with contextlib.aclosing(board.stream()) as stream:
        await board.retry(claim, delay=0.1)
        # A loop, not a comprehension: it is cancelled, and must keep what it saw till then.
        with anyio.move_on_after(1.5):
            async for note in stream:
                if note.job_id == job.id:
                    seen.append(note.kind)  # noqa: PERF401
    # Due at 0.1 s; the lease's timer at 0.4 s belongs to the claim that is gone.
    assert seen == [NotificationKind.DUE]


async def test_a_job_announced_due_is_claimable_at_that_very_instant(
    board: KafkaJobBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fold judges a claim by its record's timestamp, in whole milliseconds. A job due a
    # fraction of a millisecond ago was once announced (the sweep read a finer clock) and then
    # not claimable (the claim's clock was truncated): the claim dropped it from the ready
    # heap, its timer was spent, and it sat due and unclaimed until a restart.
    from aioconductor._backends.kafka import records as records_module
    from aioconductor.boards import kafka as kafka_module

    start = float(math.ceil(time.time()) + 1)  # on a whole millisecond, ahead of the real clock
    now = [start + 0.0007]
    fake = types.SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic)
    monkeypatch.setattr(records_module, "time", fake)
    monkeypatch.setattr(kafka_module, "time", fake, raising=False)
    monkeypatch.setattr(records_module, "_latest_ms", 0, raising=False)
    job = await board.post("j", "f", not_before=start + 0.0005)
    seen: list[NotificationKind] = []

    async def watch() -> None:
        async with contextlib.aclosing(board.stream()) as stream:
            async for note in stream:
                if note.job_id == job.id:
                    seen.append(note.kind)  # noqa: PERF401 - cancelled: keeps what it saw

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await anyio.sleep(0.5)
        claimed = await board.claim_next("o", lease=5.0)
        if seen:
            assert claimed is not None and claimed[0].id == job.id
        now[0] = start + 0.0012  # the next millisecond: due on every clock
        await anyio.sleep(0.5)
        if claimed is None:
            claimed = await board.claim_next("o", lease=5.0)
        tg.cancel_scope.cancel()
    assert claimed is not None and claimed[0].id == job.id
    assert seen == [NotificationKind.DUE]


async def test_trash_writes_the_job_and_reason_to_the_dead_letter_topic(
    board: KafkaJobBoard,
) -> None:
    kept = await board.post("kept", "f")
    job = await board.post("bad", "f", {"x": 1})
    await board.trash(job.id, reason="operator: bad input")
    letters = await read_all(board.dead_topic)
    assert [r.key.decode() for r in letters] == [job.id]
    letter = json.loads(letters[0].value)
    assert letter["reason"] == "operator: bad input" and letter["job"]["args"] == {"x": 1}
    assert (await board.get(kept.id)).state is JobState.UNCLAIMED


async def test_offsets_are_committed_only_past_finished_jobs(topic: str) -> None:
    async with open_kafka_board(kafka_url(topic, "tests", partitions=1)) as board:
        posted = [await board.post(f"j{n}", "f") for n in range(3)]
        claims = [(await board.claim_next("o"))[1] for _ in posted]  # type: ignore[index]
        member = board._link.member
        assert member is not None
        with anyio.fail_after(20):
            while member.assigned() != {0} or member._read_to.get(0) != 3:
                await member.poll()
                await anyio.sleep(0.05)
        # The second and third jobs are done, the first is not: nothing can be committed.
        for claim in claims[1:]:
            await board.consume(claim)
        await member.commit(force=True)
        assert await committed(board.group_id, board.jobs_topic) in (None, 0)
        await board.abandon(claims[0])
        await member.commit(force=True)
        assert await committed(board.group_id, board.jobs_topic) in (None, 0)
        # Finished at last: the commit passes all three.
        job, claim = await board.claim_next("o")  # type: ignore[misc]
        assert job.id == posted[0].id
        await board.consume(claim)
        await member.commit(force=True)
        assert await committed(board.group_id, board.jobs_topic) == 3


async def test_a_retried_job_holds_the_committed_offset_until_it_is_finished(
    topic: str,
) -> None:
    async with open_kafka_board(kafka_url(topic, "tests", partitions=1)) as board:
        job = await board.post("j", "f")
        claimed = await board.claim_next("o")
        assert claimed is not None
        member = board._link.member
        assert member is not None
        with anyio.fail_after(20):
            while member.assigned() != {0} or member._read_to.get(0) != 1:
                await member.poll()
                await anyio.sleep(0.05)
        await board.retry(claimed[1], delay=0.2)
        await member.commit(force=True)
        assert await committed(board.group_id, board.jobs_topic) in (None, 0)
        with anyio.fail_after(5):
            while (again := await board.claim_next("o")) is None:
                await anyio.sleep(0.05)
        assert again[0].id == job.id
        await board.consume(again[1])
        await member.commit(force=True)
        assert await committed(board.group_id, board.jobs_topic) == 1


async def test_the_last_record_of_every_job_is_accepted_so_compaction_keeps_its_state(
    board: KafkaJobBoard,
) -> None:
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "o", lease=60)
    log = board._link.log
    assert log is not None
    current = board._view.jobs[job.id]
    # A record that loses a race (its base version is stale) and is the job's newest record:
    stale = {**current, "state": "COMPLETE", "version": current["version"]}
    lost = await log.write(
        Write(job.id, {"op": "consume", "base": current["version"] - 1, "job": stale}, 1)
    )
    assert not lost.accepted and job.id in board._view.dirty
    # The board restates the job (claim_next and the stream's sweeps do it when due).
    with anyio.fail_after(10):
        while job.id in board._view.dirty:
            await anyio.sleep(0.1)
            await board.claim_next("other")
    await board.get(job.id)
    # Compaction keeps the last record of each key: fold only those, as a new instance would.
    records = await read_all(board.state_topic)
    last = {r.key: r for r in records}
    compacted = JobView(lambda note: None)
    for r in sorted(last.values(), key=lambda r: r.offset):
        compacted.apply(r.offset, r.key, r.value, r.timestamp)
    assert compacted.jobs[job.id] == board._view.jobs[job.id]
    assert (await board.get(job.id)).claim == claim


async def test_a_cancelled_claim_either_happened_or_not_and_leaves_nothing_behind(
    board: KafkaJobBoard,
) -> None:
    for delay in (0, 0.001, 0.003, 0.01):
        job = await board.post("j", "f")
        with anyio.move_on_after(delay):
            await board.claim(job.id, "o")
        got = await board.get(job.id)
        assert got.state in (JobState.UNCLAIMED, JobState.CLAIMED)
        assert got.attempts == (1 if got.state is JobState.CLAIMED else 0)
        assert board._view.mine == {}  # no write left waiting for its record
    # The board goes on working.
    fresh = await board.post("fresh", "f")
    assert (await board.claim(fresh.id, "o")).owner == "o"
