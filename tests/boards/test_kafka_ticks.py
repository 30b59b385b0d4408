"""The Kafka board's schedule ticks: decided in the fold (a ``tick`` record under the schedule's
key), kept through compaction and the purge of the tick's job, raced between instances.

The shared semantics are in ``test_conformance.py`` (``boards_ticks``); these run against the
Tansu test broker, or fold records by hand.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from aioconductor._backends.kafka.view import Applied, JobView
from aioconductor.boards._ticking import tick_key
from aioconductor.boards.kafka import KafkaJobBoard
from tests.kafka_helpers import (
    board,
    fold,
    kafka_url,
    open_kafka_board,
    read_all,
    topic,
)

__all__ = ["board", "topic"]  # the fixtures

pytestmark = pytest.mark.kafka

#: 2026-01-01T00:00:00Z
T0 = 1_767_225_600.0


# -- the fold, by hand ----------------------------------------------------------------------------


@dataclass
class _Record:
    offset: int
    key: bytes
    value: bytes | None
    timestamp: int = 1


def _state(job_id: str, key: str, state: str = "UNCLAIMED", version: int = 1) -> dict[str, Any]:
    return {
        "id": job_id, "key": key, "name": "j", "flow": "f", "args": {}, "headers": {},
        "priority": 0, "seq": 0, "created_at": 1.0, "updated_at": 2.0, "not_before": T0,
        "attempts": 0, "max_attempts": 3, "token": 0, "state": state, "owner": None,
        "expires_at": None, "outcome": None, "result": None, "trash_reason": None,
        "version": version, "partition": 0,
    }  # fmt: skip


def _tick(offset: int, tick: float, job: dict[str, Any] | None, rid: str = "") -> _Record:
    value: dict[str, Any] = {"op": "tick", "tick": tick, "job": job, "rid": rid}
    if job is None:
        value = {"op": "last", "tick": tick}
    return _Record(offset, b"~schedule:s", json.dumps(value).encode())


def _job(offset: int, op: str, job: dict[str, Any], base: int | None) -> _Record:
    value = {"op": op, "base": base, "job": job}
    return _Record(offset, job["id"].encode(), json.dumps(value).encode())


def _apply(view: JobView, *records: _Record) -> None:
    for r in records:
        view.apply(r.offset, r.key, r.value, r.timestamp)


def test_the_fold_posts_a_tick_once_and_asks_for_what_compaction_needs() -> None:
    key = tick_key("s", T0)
    view = JobView(lambda note: None)
    _apply(view, _tick(0, T0, _state("a", key)))
    assert view.ticks == {"s": T0} and view.keys == {key: "a"}
    assert view.jobs["a"]["seq"] == 1  # the tick record is the job's post record
    # Its only record is the schedule's: the job must be restated under its own key, and
    # the schedule by its tick alone.
    assert "a" in view.dirty and "s" in view.stale_ticks
    # Another instance's record of the same tick, or of an earlier one, loses: no job.
    _apply(view, _tick(1, T0, _state("b", key)), _tick(2, T0 - 60, _state("c", "other")))
    assert list(view.jobs) == ["a"] and view.ticks == {"s": T0} and view.ghosts == {}
    _apply(view, _job(3, "restate", view.jobs["a"], base=1), _tick(4, T0, None))
    assert view.dirty == {} and view.stale_ticks == {}
    # A restate of an earlier tick never moves the last tick back (and asks for another).
    _apply(view, _tick(5, T0 - 60, None))
    assert view.ticks == {"s": T0} and "s" in view.stale_ticks


def test_a_tick_whose_key_is_held_advances_and_hands_back_the_holder() -> None:
    key = tick_key("s", T0)
    view = JobView(lambda note: None)
    view.mine = {"r1": None}
    _apply(view, _job(0, "post", _state("held", key), base=None))
    _apply(view, _tick(1, T0, _state("new", key), rid="r1"))
    applied = view.mine["r1"]
    assert isinstance(applied, Applied) and applied.accepted
    assert applied.data is not None and applied.data["id"] == "held"
    assert view.ticks == {"s": T0} and list(view.jobs) == ["held"] and view.dirty == {}


def _history() -> list[_Record]:
    """Tick T0 posts a (restated, claimed, consumed, purged); tick T0 + 60 posts b."""
    a, b = _state("a", tick_key("s", T0)), _state("b", tick_key("s", T0 + 60))
    a_seq = {**a, "seq": 1}
    claimed = {**a_seq, "state": "CLAIMED", "owner": "o", "token": 1, "version": 2}
    claimed["expires_at"] = T0 + 600
    done = {**claimed, "state": "COMPLETE", "owner": None, "outcome": "SUCCESS", "version": 3}
    return [
        _tick(0, T0, a),
        _job(1, "restate", a_seq, base=1),
        _tick(2, T0, None),
        _job(3, "claim", claimed, base=1),
        _job(4, "consume", done, base=2),
        _Record(5, b"a", None),
        _tick(6, T0 + 60, b),
        _job(7, "restate", {**b, "seq": 7}, base=1),
        _tick(8, T0 + 60, None),
    ]


@pytest.mark.parametrize("how", ["as written", "compacted", "compacted, tombstones gone"])
def test_a_replay_keeps_the_last_tick_and_the_live_job_but_not_the_purged_one(how: str) -> None:
    view = fold(_history(), compacted=how != "as written", tombstones_gone="gone" in how)
    assert view.ticks == {"s": T0 + 60}
    assert list(view.jobs) == ["b"] and view.keys == {tick_key("s", T0 + 60): "b"}
    assert view.jobs["b"]["seq"] == 7 and view.jobs["b"]["state"] == "UNCLAIMED"
    assert view.dirty == {} and view.stale_ticks == {}


def test_a_tick_record_compaction_kept_with_its_job_s_last_record_folds_to_that_state() -> None:
    # The restates never made it (every instance down for an hour): compaction kept the tick
    # record, which starts the job at version 1, and the job's consume; the versions between
    # lie in the gap, so the consume holds the job's state.
    records = _history()[:5]
    view = fold(records, compacted=True)
    assert view.jobs["a"]["state"] == "COMPLETE" and view.jobs["a"]["version"] == 3
    # Without a gap the same jump is no record the log accepted: refused.
    live = JobView(lambda note: None)
    _apply(live, records[0], _Record(1, records[4].key, records[4].value))
    assert live.jobs["a"]["version"] == 1 and "a" in live.dirty


def _tick_race() -> list[_Record]:
    """Tick T0 posts a; another instance's record of T0 (posting b) loses; a is restated, then
    the schedule by its tick alone."""
    key = tick_key("s", T0)
    return [
        _tick(0, T0, _state("a", key)),
        _tick(1, T0, _state("b", key)),
        _job(2, "restate", {**_state("a", key), "seq": 1}, base=1),
        _tick(3, T0, None),
    ]


@pytest.mark.parametrize("cleaned_to", [None, 1, 2, 3, 4])
def test_a_losing_tick_record_never_posts_its_job_whatever_compaction_kept(
    cleaned_to: int | None,
) -> None:
    # cleaned_to=3: the cleaner kept the losing tick record (the schedule's last below 3) and
    # a's restate, not a's tick record: the view posts b first, then learns a holds the key.
    for records in (_tick_race(), _tick_race()[:3]):
        view = fold(records, cleaned_to=cleaned_to)
        assert view.ticks == {"s": T0}
        assert list(view.jobs) == ["a"] and view.keys == {tick_key("s", T0): "a"}
        assert view.dirty == {} and view.ghosts.keys() <= {"b"}
        assert view.candidates(T0 + 1, 10, (), ()) == [view.jobs["a"]]


# -- against the broker -------------------------------------------------------------------------


async def test_a_new_instance_replays_the_ticks_with_and_without_compaction(
    board: KafkaJobBoard, topic: str
) -> None:
    # Schedule p's only tick, and s's first, post jobs that run and are purged.
    for schedule in ("p", "s"):
        done = await board.post_tick(schedule, T0, "j", "f")
        assert done is not None
        await board.consume(await board.claim(done.id, "o"))
    assert await board.purge(older_than=0) == 2
    second = await board.post_tick("s", T0 + 60, "j", "f")
    held = await board.post("by-hand", "f", key=tick_key("t", T0))
    got = await board.post_tick("t", T0, "j", "f")
    assert second is not None and got is not None and got.id == held.id
    live = {second.id, held.id}
    async with open_kafka_board(kafka_url(topic, "tests")) as replayed:
        assert await replayed.schedule_ticks() == {"p": T0, "s": T0 + 60, "t": T0}
        assert await replayed.post_tick("p", T0, "j", "f") is None
        assert await replayed.post_tick("s", T0 + 60, "j", "f") is None
        assert {job.id async for job in replayed.iterjobs()} == live
    records = await read_all(board.state_topic)
    for view in (
        fold(records),
        fold(records, compacted=True),
        fold(records, compacted=True, tombstones_gone=True),
    ):
        assert view.ticks == {"p": T0, "s": T0 + 60, "t": T0}
        assert set(view.jobs) == live
        assert view.keys == {second.key: second.id, held.key: held.id}


async def test_a_tick_race_between_instances_posts_once_and_compacts_clean(
    board: KafkaJobBoard, topic: str
) -> None:
    url = kafka_url(topic, "tests")
    async with open_kafka_board(url) as other, open_kafka_board(url) as third:
        boards = (board, other, third)
        posted: list[Any] = []

        async def tick(on: KafkaJobBoard, at: float) -> None:
            posted.append(await on.post_tick("race", at, "j", "f", {"at": at}))

        async with anyio.create_task_group() as tg:
            for n in range(30):
                tg.start_soon(tick, boards[n % 3], T0 + 60 * (n // 10))
        jobs = [job for job in posted if job is not None]
        # Each tick posted at most once (a later tick that wins first retires the earlier).
        assert jobs and set(Counter(job.key for job in jobs).values()) == {1}
        for each in boards:
            assert await each.schedule_ticks() == {"race": T0 + 120}
            assert {job.id async for job in each.iterjobs()} == {job.id for job in jobs}
        # The losers' tick records are the schedule's newest: the instances restate it (as
        # their conductors do while they sweep) until its newest record is an accepted one.
        with anyio.fail_after(30):
            while any(b._view.dirty or b._view.stale_ticks or b._view.ghosts for b in boards):
                await anyio.sleep(0.3)
                for each in boards:
                    await each._link.log.restate_dirty()
                    await each.job_count()
    records = await read_all(board.state_topic)
    assert sum(r.key == b"~schedule:race" for r in records) > len(jobs)
    for gone in (False, True):
        view = fold(records, compacted=True, tombstones_gone=gone)
        assert view.ticks == {"race": T0 + 120}
        assert set(view.jobs) == {job.id for job in jobs}
