"""The Kafka board's keys and retention: keyed posts decided in the fold, purges by tombstone
(every instance forgets the job, a new one never revives it, commits pass it).

The shared semantics are in ``test_conformance.py`` (``boards_keys``, ``boards_retention``);
these run against the Tansu test broker, or fold records by hand.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from aioconductor._backends.kafka.log import Write
from aioconductor._backends.kafka.view import JobView
from aioconductor.boards.kafka import KafkaJobBoard
from aioconductor.errors import JobNotFound
from tests.kafka_helpers import (
    board,
    committed,
    fold,
    kafka_url,
    open_kafka_board,
    read_all,
    require_kafka,
    topic,
)

__all__ = ["board", "topic"]  # the fixtures

pytestmark = pytest.mark.kafka


def _fold(records: list[Any], *, compacted: bool = False, tombstones_gone: bool = False) -> JobView:
    """A fresh view of ``records``; ``compacted`` keeps only the last record of each key (as
    compaction does), ``tombstones_gone`` then drops tombstones too (as it does a day later)."""
    if compacted:
        last = {r.key: r for r in records}
        records = sorted(last.values(), key=lambda r: r.offset)
        if tombstones_gone:
            records = [r for r in records if r.value is not None]
    view = JobView(lambda note: None)
    for r in records:
        view.apply(r.offset, r.key, r.value, r.timestamp)
    return view


async def _finish(board: KafkaJobBoard, **post: Any) -> Any:
    job = await board.post("j", "f", **post)
    return await board.consume(await board.claim(job.id, "o"))


async def test_a_new_instance_replays_a_log_with_purged_jobs_and_does_not_see_them(
    board: KafkaJobBoard, topic: str
) -> None:
    purged = [await _finish(board, key=f"k{n}") for n in range(3)]
    kept = await board.post("kept", "f", key="kept")
    assert await board.purge(older_than=0) == 3
    # A stale claim of a purged job lands after its tombstone (a writer whose view lagged):
    # the fold rejects it, and the board buries it under a tombstone of its own.
    log = board._link.log
    stale = dict(purged[0].model_dump(mode="json"), version=2, partition=0, seq=purged[0].seq)
    stale.update(state="CLAIMED", owner="late", token=9, expires_at=time.time() + 600)
    applied = await log.write(Write(stale["id"], {"op": "claim", "base": 1, "job": stale}, 1))
    assert not applied.accepted
    await board.get(kept.id)
    assert board._view.ghosts == {}
    async with open_kafka_board(kafka_url(topic, "tests")) as replayed:
        for job in purged:
            with pytest.raises(JobNotFound):
                await replayed.get(job.id)
        with pytest.raises(JobNotFound):
            await replayed.get_by_key("k0")
        assert [job.id async for job in replayed.iterjobs()] == [kept.id]
        # The key is free on every instance: a post with it creates a new job.
        fresh, created = await replayed.get_or_post("j", "f", key="k1")
        assert created and fresh.id != purged[1].id
    records = await read_all(board.state_topic)
    for view in (
        _fold(records),
        _fold(records, compacted=True),
        _fold(records, compacted=True, tombstones_gone=True),
    ):
        assert set(view.jobs) == {kept.id, fresh.id}
        assert view.keys == {"kept": kept.id, "k1": fresh.id}


async def test_a_purge_drops_the_jobs_from_the_memory_of_every_instance(
    board: KafkaJobBoard, topic: str
) -> None:
    async with open_kafka_board(kafka_url(topic, "tests")) as other:
        jobs = await board.post_many(
            "f", [{"n": n} for n in range(80)], keys=[f"k{n}" for n in range(80)]
        )
        for job in jobs[:40]:
            await board.consume(await board.claim(job.id, "o"))
        for job in jobs[40:70]:
            await board.trash(job.id, reason="no")
        await board.claim(jobs[70].id, "o", lease=600)
        await other.get(jobs[0].id)  # the other instance folded it all
        for view in (board._view, other._view):
            assert view.sizes()["jobs"] == 80 and view.sizes()["ended"] >= 140
        assert await board.purge(older_than=0, batch=25) == 70
        await other.get(jobs[79].id)
        for view in (board._view, other._view):
            sizes = view.sizes()
            # Ten live jobs: one claimed (its lease timer), nine ready.
            assert sizes["jobs"] == len(view.jobs) == 10 and sizes["keys"] == 10
            assert sizes["ended"] == 0 and sizes["dirty"] == 0 and sizes["ghosts"] == 0
            assert sizes["ready_version"] <= 10 and sizes["ready"] <= 2 * 10 + 64
            assert sizes["timers"] <= 2 * 10 + 64
            assert view._ready_version.keys() <= view.jobs.keys()


async def test_offset_commits_pass_purged_jobs(topic: str) -> None:
    async with open_kafka_board(kafka_url(topic, "tests", partitions=1)) as board:
        done = await _finish(board)
        old = await _finish(board)
        assert await board.purge(older_than=0) == 2
        # A jobs record written before records carried the job's seq, of a purged job: the
        # member cannot tell it from a job not folded yet until a sync says so.
        producer = board._link.producer
        assert producer is not None
        legacy = {"id": old.id, "name": "j", "flow": "f", "args": {}, "priority": 0}
        await producer.send_and_wait(
            board.jobs_topic, value=json.dumps(legacy).encode(), key=old.id.encode(), partition=0
        )
        live = await board.post("live", "f")
        job, claim = await board.claim_next("o")  # type: ignore[misc]
        assert job.id == live.id
        member = board._link.member
        assert member is not None
        with anyio.fail_after(20):
            while member.assigned() != {0} or member._read_to.get(0) != 4:
                await member.poll()
                await anyio.sleep(0.05)
        await member.commit(force=True)
        # Past both purged jobs (and the legacy record), up to the live job's record.
        assert await committed(board.group_id, board.jobs_topic) == 3
        assert done.id not in board._view.jobs
        await board.consume(claim)
        await member.commit(force=True)
        assert await committed(board.group_id, board.jobs_topic) == 4


async def test_a_keyed_post_race_between_two_instances_creates_one_job(
    board: KafkaJobBoard, topic: str
) -> None:
    async with open_kafka_board(kafka_url(topic, "tests")) as other:
        got: list[tuple[Any, bool]] = []

        async def post(on: KafkaJobBoard, n: int) -> None:
            got.append(await on.get_or_post("j", "f", {"n": n}, key="once"))

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(post, (board, other)[n % 2], n)
        assert len({job.id for job, _ in got}) == 1
        assert sum(created for _, created in got) == 1
        holder = got[0][0]
        for each in (board, other):
            assert (await each.get_by_key("once")).id == holder.id
            assert await each.job_count() == 1
            assert each._view.ghosts == {}
    # Only the created job has a jobs record; the losers' post records are tombstoned, so
    # compaction leaves only the holder, which a new instance folds.
    jobs_records = [r for p in range(board.partitions) for r in await read_all(board.jobs_topic, p)]
    assert [r.key.decode() for r in jobs_records] == [holder.id]
    records = await read_all(board.state_topic)
    posts = [r for r in records if r.value is not None and json.loads(r.value)["op"] == "post"]
    assert len(posts) == 20
    buried = {r.key for r in records if r.value is None}
    assert buried == {r.key for r in posts} - {holder.id.encode()}
    for view in (
        _fold(records, compacted=True),
        _fold(records, compacted=True, tombstones_gone=True),
    ):
        assert list(view.jobs) == [holder.id] and view.keys == {"once": holder.id}


async def test_a_post_that_lost_its_key_is_no_job_after_any_partial_compaction(
    board: KafkaJobBoard, topic: str
) -> None:
    holder = await board.post("j", "f", key="once")
    # Another instance's post of the key loses; the holder is claimed before the loser's
    # tombstone lands (its poster was slow, or died and another instance buried it).
    loser = dict(holder.model_dump(mode="json"), id="loser", version=1, partition=0)
    producer = board._link.producer
    assert producer is not None
    value = json.dumps({"op": "post", "base": None, "job": loser}).encode()
    await producer.send_and_wait(board.state_topic, value=value, key=b"loser", partition=0)
    claim = await board.claim(holder.id, "o")
    await producer.send_and_wait(board.state_topic, value=None, key=b"loser", partition=0)
    async with open_kafka_board(kafka_url(topic, "tests")) as replayed:
        assert [job.id async for job in replayed.iterjobs()] == [holder.id]
    records = await read_all(board.state_topic)
    # Wherever the cleaner's last segment ends, a new instance folds the same jobs.
    for cut in range(len(records) + 1):
        view = fold(records, cleaned_to=cut)
        assert list(view.jobs) == [holder.id] and view.keys == {"once": holder.id}
        assert view.jobs[holder.id]["token"] == claim.token
        assert view.dirty == {} and view.ghosts == {}


def _record(op: str, job: dict[str, Any], base: int | None = None) -> bytes:
    return json.dumps({"op": op, "base": base, "job": job}).encode()


def _state(job_id: str, state: str = "UNCLAIMED", version: int = 1, seq: int = 1) -> dict[str, Any]:
    return {
        "id": job_id, "key": "k", "name": "j", "flow": "f", "args": {}, "headers": {},
        "priority": 0, "seq": seq, "created_at": 1.0, "updated_at": 2.0, "not_before": None,
        "attempts": 0, "max_attempts": 3, "token": 0, "state": state, "owner": None,
        "expires_at": None, "outcome": None, "result": None, "trash_reason": None,
        "version": version, "partition": 0,
    }  # fmt: skip


def test_the_fold_ignores_a_tombstone_of_a_live_job_and_marks_it_for_a_restate() -> None:
    view = JobView(lambda note: None)
    view.apply(0, b"a", _record("post", _state("a")), 1)
    view.apply(1, b"a", None, 1)
    assert view.jobs["a"]["state"] == "UNCLAIMED" and view.keys == {"k": "a"}
    # Its newest record is the tombstone: compaction would erase the job unless restated.
    assert "a" in view.dirty
    view.apply(2, b"a", _record("restate", view.jobs["a"], base=1), 1)
    assert "a" not in view.dirty


def test_the_fold_starts_a_job_from_a_compacted_record_but_never_revives_a_purged_one() -> None:
    done = _state("a", "COMPLETE", version=3, seq=1)
    # Compaction removed the post (offset 0) and the claim (offset 1): the consume starts it.
    compacted = JobView(lambda note: None)
    compacted.apply(2, b"a", _record("consume", done, base=2), 1)
    assert compacted.jobs["a"]["state"] == "COMPLETE" and compacted.keys == {"k": "a"}
    # A view that read the post, then the tombstone, rejects a late record of the job.
    live = JobView(lambda note: None)
    live.apply(0, b"a", _record("post", _state("a")), 1)
    live.apply(1, b"a", _record("consume", done, base=1), 1)
    live.apply(2, b"a", None, 1)
    live.apply(3, b"a", _record("restate", done, base=3), 1)
    assert live.jobs == {} and live.keys == {} and live.ghosts.keys() == {"a"}
    live.apply(4, b"a", None, 1)
    assert live.ghosts == {}


def test_the_fold_rejects_a_post_whose_key_is_held_and_hands_back_the_holder() -> None:
    view = JobView(lambda note: None)
    view.mine = {"r1": None, "r2": None}
    view.apply(0, b"a", _record("post", _state("a")), 1)
    second = {"op": "post", "base": None, "job": _state("b"), "rid": "r2"}
    view.apply(1, b"b", json.dumps(second).encode(), 1)
    applied = view.mine["r2"]
    assert applied is not None and not applied.accepted
    assert applied.data is not None and applied.data["id"] == "a"
    assert list(view.jobs) == ["a"] and "b" in view.ghosts


@dataclass
class _Record:
    offset: int
    key: bytes
    value: bytes | None
    timestamp: int = 1


def _key_race() -> list[_Record]:
    """a posts the key k; b's post of k loses (a ghost); a is claimed; b's post is tombstoned."""
    a, b = _state("a"), _state("b", seq=2)
    claimed = {**a, "state": "CLAIMED", "owner": "o", "token": 1, "version": 2}
    claimed["expires_at"] = time.time() + 600
    return [
        _Record(0, b"a", _record("post", a)),
        _Record(1, b"b", _record("post", b)),
        _Record(2, b"a", _record("claim", claimed, base=1)),
        _Record(3, b"b", None),
    ]


@pytest.mark.parametrize("cleaned_to", [None, 1, 2, 3, 4])
def test_a_post_that_lost_its_key_never_becomes_a_job_whatever_compaction_kept(
    cleaned_to: int | None,
) -> None:
    # cleaned_to=3: the cleaner dropped a's post (a has a later record) but kept b's, whose
    # tombstone lies beyond the cleaned segment; the view reads b's post with the key free.
    view = fold(_key_race(), cleaned_to=cleaned_to)
    assert list(view.jobs) == ["a"] and view.jobs["a"]["state"] == "CLAIMED"
    assert view.keys == {"k": "a"}
    assert view.dirty == {} and view.ghosts == {}
    assert view.candidates(time.time(), 10, (), ()) == []
    # Before the tombstone is written, b is a ghost (to tombstone), never a job to restate.
    early = fold(_key_race()[:3], cleaned_to=None if cleaned_to is None else min(cleaned_to, 3))
    assert list(early.jobs) == ["a"] and early.keys == {"k": "a"}
    assert early.ghosts.keys() == {"b"} and early.dirty == {}
    # b's records never count again: a late one is rejected, not restated.
    early.apply(3, b"b", _record("restate", _state("b", seq=2), base=1), 1)
    assert list(early.jobs) == ["a"] and early.ghosts.keys() == {"b"}


def _purged_then_late(late: bytes, *, compacted: bool) -> JobView:
    """A view that folds j (posted, consumed), a gap, j's tombstone, then ``late``, a record of
    j computed before the purge; ``compacted``: the view started from the consume (the post
    lay in a gap)."""
    done = _state("j", "COMPLETE", version=2)
    view = JobView(lambda note: None)
    if not compacted:
        view.apply(0, b"j", _record("post", _state("j")), 1)
    view.apply(1, b"j", _record("consume", done, base=1), 1)
    x = {**_state("x", seq=6), "key": "x"}
    view.apply(5, b"x", _record("post", x), 1)  # offsets 2 to 4 were compacted
    view.apply(6, b"j", None, 1)
    view.apply(7, b"j", late, 1)
    return view


@pytest.mark.parametrize("compacted", [False, True], ids=["post read", "post compacted"])
@pytest.mark.parametrize("late", ["restate", "claim"])
def test_a_late_record_of_a_purged_job_never_revives_it_past_a_gap(
    late: str, compacted: bool
) -> None:
    if late == "restate":
        record = _record("restate", _state("j", "COMPLETE", version=2), base=2)
    else:
        claimed = {**_state("j", version=2), "state": "CLAIMED", "owner": "late", "token": 1}
        claimed["expires_at"] = time.time() + 600
        record = _record("claim", claimed, base=1)
    view = _purged_then_late(record, compacted=compacted)
    assert list(view.jobs) == ["x"] and view.keys == {"x": "x"}
    assert view.ghosts.keys() == {"j"} and view.dirty == {}


def test_the_gaps_a_compacted_replay_leaves_cost_the_view_little_memory() -> None:
    view = JobView(lambda note: None)
    # 500 jobs whose surviving record is their consume, each after a gap; then their purge.
    for n in range(500):
        done = {**_state(f"j{n}", "COMPLETE", version=3, seq=3 * n + 1), "key": None}
        view.apply(3 * n + 2, f"j{n}".encode(), _record("consume", done, base=2), 1)
    assert len(view.jobs) == 500 and view.sizes()["gaps"] == 1
    for n in range(500):
        view.apply(1500 + n, f"j{n}".encode(), None, 1)
    assert view.jobs == {} and view.sizes()["gaps"] == 1


async def test_the_state_topic_is_configured_to_reclaim_purged_jobs(board: KafkaJobBoard) -> None:
    from aiokafka.admin.config_resource import (  # type: ignore[import-untyped]
        ConfigResource,
        ConfigResourceType,
    )

    admin = AIOKafkaAdminClient(bootstrap_servers=require_kafka())
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, board.state_topic)
        response = (await admin.describe_configs([resource]))[0]
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"
    assert configs["delete.retention.ms"] == "86400000"
    assert configs["segment.ms"] == "86400000"
