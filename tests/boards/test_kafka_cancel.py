"""The Kafka board's cancel: one ``cancel`` record, decided by the fold on the job's version, a
``CANCEL`` pushed to the streams of every instance, replays that agree.

The shared semantics are in ``test_conformance.py`` (``boards_cancel``); these run against the
Tansu test broker.
"""

from __future__ import annotations

import contextlib
import json

import anyio
import pytest

from aioconductor._backends.kafka.log import Write
from aioconductor.boards.kafka import KafkaJobBoard
from aioconductor.models import Job, JobNotification, JobState, NotificationKind, Outcome
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


async def test_a_cancel_from_a_view_that_missed_the_claim_flags_the_job(
    board: KafkaJobBoard, topic: str
) -> None:
    async with open_kafka_board(kafka_url(topic, "tests")) as other:
        job = await board.post("j", "f")
        await other.get(job.id)  # the other view knows the job UNCLAIMED
        claim = await board.claim(job.id, "owner-1")
        # Its record, computed from the unclaimed job, loses to the claim: it is computed again
        # from the claimed job, and flags it instead of ending it.
        flagged = await other.cancel(job.id, reason="stop")
        assert flagged.state is JobState.CLAIMED and flagged.cancel_requested
        assert flagged.claim is not None and flagged.claim.token == claim.token
        assert (await board.renew(claim)).cancel_requested
        assert await board.get(job.id) == await other.get(job.id)


async def _race(board: KafkaJobBoard, other: KafkaJobBoard, ending: str) -> tuple[Job, Job, Job]:
    """A job claimed on ``board``, ended there (``ending``) while ``other`` cancels it; the
    cancel's job, the ending's, and the job as both read it after."""
    job = await board.post("j", "f")
    claim = await board.claim(job.id, "owner-1")
    await other.get(job.id)
    got: dict[str, Job] = {}

    async def cancel() -> None:
        got["cancel"] = await other.cancel(job.id, reason="race")

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel)
        if ending == "retry":
            got["end"] = await board.retry(claim, delay=0, failure={"n": 1})
        else:
            got["end"] = await board.consume(claim, result={"ok": 1})
    final = await board.get(job.id)
    assert final == await other.get(job.id) and final.state is JobState.COMPLETE
    return got["cancel"], got["end"], final


@pytest.mark.parametrize("ending", ["retry", "consume"])
async def test_a_cancel_racing_its_owner_on_another_instance_ends_one_way_everywhere(
    board: KafkaJobBoard, topic: str, ending: str
) -> None:
    async with open_kafka_board(kafka_url(topic, "tests")) as other:
        for _ in range(5):
            cancelled, ended, final = await _race(board, other, ending)
            if ending == "retry":
                # Retried first, then ended by the cancel; or flagged first, then ended by
                # the retry: CANCELLED either way, never run again.
                assert final.outcome is Outcome.CANCELLED and final.cancel_reason == "race"
                assert final.retries in (0, 1) and final.failures == [{"n": 1}]
                assert final in (cancelled, ended)
            else:
                # A run that finished stands, flagged first or not.
                assert final.outcome is Outcome.SUCCESS and final.result == {"ok": 1}
                assert final == ended
                if final.cancel_reason is None:
                    assert cancelled == final  # consumed first: the cancel changed nothing
                else:
                    assert cancelled.cancel_requested and cancelled.state is JobState.CLAIMED


async def test_the_cancel_is_pushed_once_to_every_instance_and_only_for_a_claimed_job(
    board: KafkaJobBoard, topic: str
) -> None:
    async with open_kafka_board(kafka_url(topic, "tests")) as other:
        claimed = await board.post("claimed", "f")
        waiting = await board.post("waiting", "f")
        await board.claim(claimed.id, "owner-1")
        seen: dict[str, list[JobNotification]] = {"board": [], "other": []}

        async def watch(on: KafkaJobBoard, name: str) -> None:
            async with contextlib.aclosing(on.stream()) as stream:
                async for note in stream:
                    seen[name].append(note)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, board, "board")
            tg.start_soon(watch, other, "other")
            await anyio.sleep(0.5)
            await other.cancel(claimed.id, reason="stop")
            await other.cancel(claimed.id, reason="again")  # flagged already: no record
            await other.cancel(waiting.id, reason="not needed")
            await anyio.sleep(1.0)
            tg.cancel_scope.cancel()
        for notes in seen.values():
            cancels = [n for n in notes if n.kind is NotificationKind.CANCEL]
            assert [n.job_id for n in cancels] == [claimed.id]
    # A new instance replays the cancel without pushing it again.
    async with open_kafka_board(kafka_url(topic, "tests")) as replayed:
        notes: list[JobNotification] = []
        with anyio.move_on_after(0.5):
            async with contextlib.aclosing(replayed.stream()) as stream:
                async for note in stream:
                    notes.append(note)
        assert all(note.kind is not NotificationKind.CANCEL for note in notes)
        assert (await replayed.get(claimed.id)).cancel_requested


async def test_a_cancelled_scheduled_job_is_never_announced_due(board: KafkaJobBoard) -> None:
    job = await board.post("j", "f", delay=0.3)
    seen: list[JobNotification] = []
    async with contextlib.aclosing(board.stream()) as stream:
        await board.cancel(job.id)
        with anyio.move_on_after(1.0):
            async for note in stream:
                seen.append(note)  # noqa: PERF401 - cancelled: keeps what it saw
    assert seen == []
    assert await board.claim_next("o") is None


async def test_cancels_replay_and_compact_to_the_same_jobs(
    board: KafkaJobBoard, topic: str
) -> None:
    ended = await board.post("ended", "f", key="k")
    await board.cancel(ended.id, reason="gone")
    flagged = await board.post("flagged", "f")
    claim = await board.claim(flagged.id, "owner-1", lease=60)
    await board.cancel(flagged.id, reason="stop")
    retried = await board.post("retried", "f")
    await board.cancel(retried.id, reason="no more")  # unclaimed: ends at once
    back = await board.post("back", "f")
    await board.cancel(back.id, reason="revert")  # ended too
    given = await board.post("given", "f")
    given_claim = await board.claim(given.id, "owner-1")
    await board.cancel(given.id, reason="revert it")
    await board.release(given_claim)
    before = [job async for job in board.iterjobs()]
    async with open_kafka_board(kafka_url(topic, "tests")) as replayed:
        assert [job async for job in replayed.iterjobs()] == before
        assert (await replayed.renew(claim)).cancel_requested
        again = await replayed.claim_next("owner-2")
        assert again is not None and again[0].id == given.id and again[1].cancel_requested
    records = await read_all(board.state_topic)
    ops = [json.loads(r.value)["op"] for r in records if r.value is not None]
    assert ops.count("cancel") == 5
    for view in (
        fold(records, compacted=True),
        fold(records, compacted=True, tombstones_gone=True),
    ):
        assert view.jobs[ended.id]["outcome"] == "CANCELLED"
        assert view.jobs[flagged.id]["cancel_reason"] == "stop"
        assert view.keys == {"k": ended.id}
    assert await board.purge(older_than=0) == 3
    async with open_kafka_board(kafka_url(topic, "tests")) as replayed:
        assert {job.id async for job in replayed.iterjobs()} == {flagged.id, given.id}


async def test_a_job_written_before_cancels_existed_is_cancelled(board: KafkaJobBoard) -> None:
    log = board._link.log
    fresh = await board.post("new", "f")
    jobs = []
    for n in (1, 2):
        old = dict(board._view.jobs[fresh.id], id=f"00000000-0000-4000-8000-00000000000{n}")
        del old["cancel_reason"], old["limit_key"]
        assert (
            await log.write(Write(old["id"], {"op": "post", "base": None, "job": old}, 1))
        ).accepted
        jobs.append(old["id"])
    ended = await board.cancel(jobs[0], reason="old")
    assert ended.outcome is Outcome.CANCELLED and ended.cancel_reason == "old"
    claim = await board.claim(jobs[1], "o")
    assert not claim.cancel_requested
    assert (await board.cancel(jobs[1], reason="old too")).cancel_requested
    assert (await board.retry(claim, delay=0)).outcome is Outcome.CANCELLED
