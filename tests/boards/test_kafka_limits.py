"""The Kafka board's concurrency limits: decided in the fold (a claim record whose key is full at
that point of the log loses, on every instance), exact across instances, kept by compaction.

The shared semantics are in ``test_conformance.py`` (``boards_limits``); these run against the
Tansu test broker, or fold records by hand.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from aioconductor._backends.kafka.log import Write
from aioconductor._backends.kafka.records import cancelled, renewed, transition
from aioconductor._backends.kafka.view import JobView
from aioconductor.boards.kafka import KafkaJobBoard
from aioconductor.errors import ClaimLost
from aioconductor.models import JobNotification, LimitInfo, NotificationKind
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


class _Record:
    """A state-topic record, as the fold reads it."""

    def __init__(self, offset: int, key: str, value: dict[str, Any] | None, ts_ms: int) -> None:
        self.offset = offset
        self.key = key.encode()
        self.value = None if value is None else json.dumps(value).encode()
        self.timestamp = ts_ms


class _Log:
    """Records written by hand and folded into a view as they are written."""

    def __init__(self) -> None:
        self.notes: list[JobNotification] = []
        self.view = JobView(self.notes.append)
        self.records: list[_Record] = []
        #: Offsets of the records the fold rejected.
        self.lost: set[int] = set()

    def write(self, write: Write) -> None:
        record = _Record(len(self.records), write.key, write.value, write.ts_ms)
        self.records.append(record)
        self.view.apply(record.offset, record.key, record.value, record.timestamp)

    def post(self, job_id: str, limit_key: str | None, ts_ms: int = 1_000) -> dict[str, Any]:
        job = {
            "id": job_id, "key": None, "limit_key": limit_key, "name": "j", "flow": "f",
            "args": {}, "headers": {}, "priority": 0, "seq": 0, "created_at": 1.0,
            "updated_at": 1.0, "not_before": None, "attempts": 0, "max_attempts": 3,
            "releases": 0, "abandons": 0, "retries": 0, "retry": None, "failures": [],
            "token": 0, "state": "UNCLAIMED", "owner": None, "expires_at": None,
            "outcome": None, "result": None, "trash_reason": None, "cancel_reason": None,
            "version": 1, "partition": 0,
        }  # fmt: skip
        self.write(Write(job_id, {"op": "post", "base": None, "job": job}, ts_ms))
        return self.view.jobs[job_id]

    def change(self, op: str, job_id: str, ts_ms: int, **fields: Any) -> bool:
        """Write the transition ``op`` of the job as the view holds it, stamped ``ts_ms`` (its
        ``updated_at`` too, as the board's transitions are); whether it won."""
        data = self.view.jobs[job_id]
        new = {**data, "updated_at": ts_ms / 1000, **fields}
        self.write(transition(op, data, new, ts_ms))
        current = self.view.jobs[job_id]
        if current["version"] == data["version"] + 1:
            return True
        self.lost.add(len(self.records) - 1)
        # Lost: restate the job at once, as its loser does (so compaction keeps its state).
        self.write(
            Write(job_id, {"op": "restate", "base": current["version"], "job": current}, ts_ms)
        )
        assert job_id not in self.view.dirty
        return False

    def claim(self, job_id: str, ts_ms: int, lease: float = 60.0) -> bool:
        data = self.view.jobs[job_id]
        return self.change(
            "claim", job_id, ts_ms, state="CLAIMED", owner="o", token=data["token"] + 1,
            expires_at=ts_ms / 1000 + lease, attempts=data["attempts"] + 1,
        )  # fmt: skip

    def limit(self, key: str, limit: int | None, ts_ms: int = 1_000) -> None:
        self.write(Write(f"~limit:{key}", {"op": "limit", "limit": limit}, ts_ms))


def test_a_claim_record_loses_when_its_key_is_full_at_that_point_of_the_log() -> None:
    log = _Log()
    log.limit("k", 1)
    for name in ("a", "b", "c"):
        log.post(name, "k" if name != "c" else None)
    assert log.claim("a", 2_000)
    log.write(Write("b", {"op": "claim", "base": 1, "job": {**log.view.jobs["b"], "version": 2,
               "state": "CLAIMED", "owner": "o", "expires_at": 60.0}}, 2_001))  # fmt: skip
    # a holds the only slot: b's record loses, and b is dirty (restated, for compaction).
    assert log.view.jobs["b"]["version"] == 1 and "b" in log.view.dirty
    assert not log.claim("b", 2_001)
    assert log.claim("c", 2_002)  # a job without a limit key is never held back
    assert log.change("consume", "a", 3_000, state="COMPLETE", outcome="SUCCESS", result={})
    assert log.claim("b", 3_001)
    assert log.view.limits(3.002) == [LimitInfo(key="k", limit=1, claimed=1)]


def test_a_lease_that_ran_out_frees_its_slot_at_the_claim_record_time() -> None:
    log = _Log()
    log.limit("k", 1)
    log.post("a", "k")
    log.post("b", "k")
    assert log.claim("a", 2_000, lease=1.0)  # live until 3.0 s
    assert not log.claim("b", 2_999)
    assert log.claim("b", 3_000)  # judged by the record's timestamp: a's lease ran out
    # a's owner comes back: a renew of its lapsed claim would take a slot b holds.
    assert not log.change("renew", "a", 3_100, expires_at=70.0)
    log.limit("k", 2)
    assert log.change("renew", "a", 3_200, expires_at=70.0)
    # Lowering a limit stops nothing: a live claim renews over it.
    log.limit("k", 0)
    assert log.change("renew", "a", 3_300, expires_at=80.0)
    assert log.view.limits(3.4) == [LimitInfo(key="k", limit=0, claimed=2)]


def test_a_renew_stamped_before_its_lease_ran_out_landing_after_a_claim_needs_a_slot() -> None:
    # Issue #21: two producers, so the log is not in timestamp order (no clock skew needed).
    log = _Log()
    log.limit("k", 1)
    log.post("a", "k")
    log.post("b", "k")
    assert log.claim("a", 2_000, lease=1.0)  # a's lease ends at 3.000 s
    assert log.claim("b", 3_001)  # conductor B: a's lease ran out, the slot is free
    # Conductor A's renew of a, stamped 2.999 but appended after B's claim: judged at the
    # key's clock (3.001, b's claim), a's lease is over, and b holds the only slot.
    assert not log.change("renew", "a", 2_999, expires_at=2.999 + 30.0)
    assert log.view.limits(3.002) == [LimitInfo(key="k", limit=1, claimed=1)]
    # Once b lets its slot go, a's renew takes it (a lapsed lease renews into a free slot).
    assert log.change("consume", "b", 3_100, state="COMPLETE", outcome="SUCCESS", result={})
    assert log.change("renew", "a", 3_000, expires_at=33.0)
    assert log.view.limits(3.2) == [LimitInfo(key="k", limit=1, claimed=1)]
    _check_the_log_never_exceeds(log.records, "k", 1)


def test_a_renew_landing_late_is_refused_only_while_a_claim_that_counted_it_out_holds() -> None:
    log = _Log()
    log.limit("k", 2)
    for name in ("a", "b", "c"):
        log.post(name, "k")
    assert log.claim("a", 2_000, lease=1.0)  # until 3.000
    assert log.claim("b", 2_500)  # counted a live: 2 of 2
    assert not log.claim("c", 2_900)
    assert log.claim("c", 3_001)  # a's lease ran out: b and c hold the slots
    assert not log.change("renew", "a", 2_999, expires_at=40.0)
    assert log.change("renew", "b", 2_950, expires_at=90.0)  # b's lease is live: it renews
    assert log.change("consume", "c", 3_200, state="COMPLETE", outcome="SUCCESS", result={})
    assert log.change("renew", "a", 3_000, expires_at=40.0)  # c's slot is free again
    assert log.view.limits(3.3) == [LimitInfo(key="k", limit=2, claimed=2)]
    _check_the_log_never_exceeds(log.records, "k", 2)


def test_a_renew_of_a_plain_lease_landing_after_a_claim_of_its_job_is_stale() -> None:
    # Without a limit, one job's records are ordered by their versions: the first one wins.
    log = _Log()
    log.post("a", None)
    assert log.claim("a", 2_000, lease=1.0)
    before = log.view.jobs["a"]
    assert log.claim("a", 3_001)
    log.write(transition("renew", before, {**before, "expires_at": 32.999}, 2_999))
    assert log.view.jobs["a"]["version"] == 3 and log.view.jobs["a"]["token"] == 2
    log = _Log()  # the same renew landing first wins, and the claim computed before it loses
    log.post("a", None)
    assert log.claim("a", 2_000, lease=1.0)
    before = log.view.jobs["a"]
    assert log.change("renew", "a", 2_999, expires_at=32.999)
    taken = {**before, "token": 2, "owner": "p", "expires_at": 63.001, "updated_at": 3.001}
    log.write(transition("claim", before, taken, 3_001))
    assert log.view.jobs["a"]["token"] == 1 and log.view.jobs["a"]["expires_at"] == 32.999


def test_a_claimed_jobs_updated_at_never_goes_back() -> None:
    # The key's clock reads it: a renew or a flag stamped earlier (another host) keeps it.
    data = {"state": "CLAIMED", "updated_at": 5.0, "expires_at": 9.0, "cancel_reason": None}
    assert renewed(data, 4.0, lease=10.0) == {**data, "expires_at": 14.0}
    assert cancelled(data, 4.0, "stop") == {**data, "cancel_reason": "stop"}


def test_replays_judge_claims_and_renews_alike_wherever_the_cleaner_stopped() -> None:
    log = _Log()
    log.limit("k", 1)
    for name in ("a", "b", "c"):
        log.post(name, "k")
    log.post("free", None)
    assert log.claim("a", 2_000, lease=1.0)
    # The greatest timestamp so far, on a record compaction removes (an operator's trash comes
    # later): a clock of the whole log would judge b's claim at 3.050, and a replay at 2.999.
    assert log.claim("free", 3_050)
    assert log.change("trash", "free", 2_990, state="TRASHED", trash_reason="by another host")
    assert not log.claim("b", 2_999)  # a claim counts the leases live at its own timestamp
    assert log.claim("b", 3_001)
    assert not log.change("renew", "a", 2_999, expires_at=40.0)
    assert not log.claim("c", 2_998)  # a's lease counts at 2.998, b's too
    assert log.change("consume", "b", 3_300, state="COMPLETE", outcome="SUCCESS", result={})
    assert log.change("renew", "a", 3_000, expires_at=40.0)
    live = log.view
    # Every cut below which each key's last record was accepted: the fold's replays rest on
    # that (a rejected record is restated at once, see the view), so cuts between a rejected
    # record and its restate are left out.
    last = [{r.key: r.offset for r in log.records[:cut]} for cut in range(len(log.records) + 1)]
    cuts = [cut for cut, offsets in enumerate(last) if not log.lost & set(offsets.values())]
    assert len(cuts) == len(log.records) + 1 - len(log.lost)
    for view in (
        fold(log.records),
        fold(log.records, compacted=True),
        fold(log.records, compacted=True, tombstones_gone=True),
        *(fold(log.records, cleaned_to=cut) for cut in cuts),
    ):
        assert view.jobs == live.jobs
        assert view.limits(3.4) == live.limits(3.4) == [LimitInfo(key="k", limit=1, claimed=1)]


def test_limit_records_set_change_and_remove_and_a_bad_one_changes_nothing() -> None:
    log = _Log()
    log.limit("a", 3)
    log.limit("b", 1)
    log.limit("a", 5)
    log.write(Write("~limit:a", {"op": "limit", "limit": "7"}, 1))
    log.write(Write("~limit:a", {"op": "limit", "limit": -1}, 1))
    log.write(Write("~limit:a", {"op": "limit", "limit": True}, 1))
    assert log.view.slots.limits == {"a": 5, "b": 1}
    log.limit("a", None)
    log.write(Write("~limit:b", None, 1))  # a tombstone removes it too
    assert log.view.slots.limits == {}
    assert log.view.jobs == {} and log.view.ghosts == {} and log.view.dirty == {}


def test_every_end_of_a_limited_claim_is_announced_and_only_those() -> None:
    log = _Log()
    log.limit("k", 5)
    for name in ("consumed", "retried", "trashed", "abandoned", "free"):
        log.post(name, "k" if name != "free" else "no-limit")
        assert log.claim(name, 2_000)
    log.notes.clear()
    log.change("consume", "consumed", 2_100, state="COMPLETE", outcome="SUCCESS", result={})
    log.change("retry", "retried", 2_100, state="SCHEDULED", owner=None, not_before=9.0)
    log.change("trash", "trashed", 2_100, state="TRASHED", trash_reason="x")
    log.change("abandon", "abandoned", 2_100, state="UNCLAIMED", owner=None)
    log.change("consume", "free", 2_100, state="COMPLETE", outcome="SUCCESS", result={})
    assert [(n.job_id, n.kind) for n in log.notes] == [
        ("consumed", NotificationKind.SLOT_FREED),
        ("retried", NotificationKind.SLOT_FREED),
        ("trashed", NotificationKind.SLOT_FREED),
        ("abandoned", NotificationKind.ABANDONED),
    ]


def test_compaction_keeps_the_newest_limit_and_a_removed_one_stays_removed() -> None:
    log = _Log()
    log.limit("kept", 2)
    log.limit("changed", 4)
    log.limit("removed", 1)
    log.limit("changed", 3)
    log.limit("removed", None)
    log.limit("buried", 1)
    log.write(Write("~limit:buried", None, 1))
    for view in (
        fold(log.records, compacted=True),
        fold(log.records, compacted=True, tombstones_gone=True),
        *(fold(log.records, cleaned_to=cut) for cut in range(len(log.records) + 1)),
    ):
        assert view.slots.limits == {"kept": 2, "changed": 3}


def test_a_replay_of_a_compacted_log_accepts_every_claim_the_live_fold_accepted() -> None:
    log = _Log()
    log.limit("k", 2)
    names = [f"j{n}" for n in range(8)]
    for name in names:
        log.post(name, "k")
    ts = 2_000
    for round_ in range(3):
        for name in names:
            data = log.view.jobs[name]
            if data["state"] == "CLAIMED" and round_ % 2:
                log.change("consume", name, ts, state="COMPLETE", outcome="SUCCESS", result={})
            elif data["state"] == "UNCLAIMED":
                log.claim(name, ts, lease=0.5 if name == "j0" else 60.0)
            ts += 100
    live = log.view
    for view in (
        fold(log.records),
        fold(log.records, compacted=True),
        fold(log.records, compacted=True, tombstones_gone=True),
    ):
        assert view.jobs == live.jobs
        assert view.limits(ts / 1000) == live.limits(ts / 1000)


async def test_concurrent_batches_from_separate_instances_never_exceed_the_limit(
    topic: str,
) -> None:
    url = kafka_url(topic, "tests")
    async with (
        open_kafka_board(url) as a,
        open_kafka_board(url) as b,
        open_kafka_board(url) as c,
        open_kafka_board(url) as d,
    ):
        boards = (a, b, c, d)
        await a.set_limit("k", 3)
        limited = {j.id for j in await a.post_many("f", [{}] * 12, limit_key="k", priority=1)}
        await a.post_many("f", [{}] * 8)
        for board_ in boards:
            await board_.get(next(iter(limited)))  # every view knows every job: they race
        claimed: list[str] = []

        async def take(board_: KafkaJobBoard, owner: str) -> None:
            for _ in range(3):
                claimed.extend(job.id for job, _ in await board_.claim_batch(owner, 6))

        async with anyio.create_task_group() as tg:
            for n, board_ in enumerate(boards):
                tg.start_soon(take, board_, f"owner-{n}")
        assert len(claimed) == len(set(claimed))
        assert len(set(claimed) & limited) == 3
        for board_ in boards:
            assert await board_.limits() == [LimitInfo(key="k", limit=3, claimed=3)]
    _check_the_log_never_exceeds(await read_all(a.state_topic), "k", 3)


async def test_claims_and_consumes_racing_on_four_instances_stay_within_the_limit(
    topic: str,
) -> None:
    url = kafka_url(topic, "tests")
    async with (
        open_kafka_board(url) as a,
        open_kafka_board(url) as b,
        open_kafka_board(url) as c,
    ):
        await a.set_limit("k", 2)
        jobs = await a.post_many("f", [{}] * 24, limit_key="k")
        done: list[str] = []

        async def work(board_: KafkaJobBoard, owner: str) -> None:
            with anyio.fail_after(60):
                while len(done) < len(jobs):
                    claimed = await board_.claim_next(owner)
                    if claimed is None:
                        await anyio.sleep(0.01)
                        continue
                    assert claimed[1].cancel_requested is False
                    done.append((await board_.consume(claimed[1])).id)

        async with anyio.create_task_group() as tg:
            for n, board_ in enumerate((a, b, c, a, b, c)):
                tg.start_soon(work, board_, f"owner-{n}")
        assert sorted(done) == sorted(job.id for job in jobs)
    _check_the_log_never_exceeds(await read_all(a.state_topic), "k", 2)


def _check_the_log_never_exceeds(records: list[Any], key: str, limit: int) -> None:
    """Fold ``records`` afresh and count, after each, the live claims of ``key`` the plain
    way (every job of the view), not with the fold's index."""
    view = JobView(lambda note: None)
    most = 0
    now = 0.0
    for r in records:
        view.apply(r.offset, r.key, r.value, r.timestamp)
        # At the log's time: the greatest timestamp so far (the log is not in timestamp order).
        now = max(now, r.timestamp / 1000)
        live = sum(
            1
            for data in view.jobs.values()
            if data.get("limit_key") == key
            and data["state"] == "CLAIMED"
            and data["expires_at"] > now
        )
        assert live <= limit, f"{live} live claims of {key!r} at offset {r.offset}"
        most = max(most, live)
    assert most == limit


async def test_a_lapsed_renew_is_refused_across_instances_and_nothing_changes(
    board: KafkaJobBoard, topic: str
) -> None:
    await board.set_limit("k", 1)
    first = await board.post("p1", "f", limit_key="k")
    second = await board.post("p2", "f", limit_key="k")
    lapsed = await board.claim(first.id, "owner-1", lease=0.3)
    await anyio.sleep(0.5)
    async with open_kafka_board(kafka_url(topic, "tests")) as other:
        await other.claim(second.id, "owner-2")
    # This board's view has not seen the other's claim: the fold refuses the renew record.
    with pytest.raises(ClaimLost):
        await board.renew(lapsed)
    job = await board.get(first.id)
    assert job.claim is not None and job.claim.expires_at == lapsed.expires_at


async def test_limits_survive_a_purge_and_a_new_instance_replays_them(
    board: KafkaJobBoard, topic: str
) -> None:
    await board.set_limit("k", 1)
    await board.set_limit("gone", 4)
    await board.set_limit("gone", None)
    job = await board.post("p", "f", limit_key="k")
    await board.consume(await board.claim(job.id, "o"))
    waiting = await board.post("p", "f", limit_key="k")
    held = await board.claim(waiting.id, "o")
    assert await board.purge(older_than=0) == 1
    async with open_kafka_board(kafka_url(topic, "tests")) as replayed:
        assert await replayed.limits() == [LimitInfo(key="k", limit=1, claimed=1)]
        third = await replayed.post("p", "f", limit_key="k")
        assert await replayed.claim_next("o") is None
        await replayed.consume(held)
        claimed = await replayed.claim_next("o")
        assert claimed is not None and claimed[0].id == third.id
    records = await read_all(board.state_topic)
    for view in (
        fold(records, compacted=True),
        fold(records, compacted=True, tombstones_gone=True),
    ):
        assert view.slots.limits == {"k": 1}


async def test_a_job_posted_before_limits_existed_runs_and_counts_against_nothing(
    board: KafkaJobBoard,
) -> None:
    log = board._link.log
    fresh = await board.post("new", "f", limit_key="k")
    old = dict(board._view.jobs[fresh.id], id="00000000-0000-4000-8000-000000000002")
    del old["limit_key"], old["cancel_reason"]
    assert (await log.write(Write(old["id"], {"op": "post", "base": None, "job": old}, 1))).accepted
    await board.set_limit("k", 0)
    job = await board.get(old["id"])
    assert job.limit_key is None and job.cancel_reason is None
    claimed = await board.claim_next("o")
    assert claimed is not None and claimed[0].id == old["id"]
    assert await board.claim_next("o") is None  # the new job's key is paused
