"""Conductors in real processes on a Kafka board (the Tansu test broker).

A conductor stopped mid-run hands its jobs over; a poison job ends on the dead-letter topic. The
Kafka cases of ``tests/test_conductor_processes.py`` cover the rest: conductor processes sharing
5,000 jobs (each runs exactly once), and a conductor killed after its flow ran but before it
consumed the job, resumed from the store by another.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from aioconductor import Job, JobState, open_board
from aioconductor.boards import JobBoard
from aioconductor.boards.kafka import KafkaJobBoard

from .test_conductor_processes import conductor_command as shared_command
from .test_conductor_processes import lines

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parent.parent


def conductor_command(board: str, store: str, *extra: str) -> list[str]:
    return shared_command(board, *extra, store=store)


def board_url(prefix: str) -> str:
    from tests.kafka_helpers import kafka_url, unique_topic

    return kafka_url(unique_topic(prefix), "procs")


@pytest.mark.timeout(120)
async def test_a_conductor_killed_mid_run_hands_its_jobs_to_the_others(tmp_path: Path) -> None:
    url = board_url("handover")
    record = tmp_path / "record.txt"
    jobs = 400
    async with open_board(url) as board:
        await board.post_many(
            "sleepy", [{"record": str(record), "seconds": 0.05, "key": k} for k in range(jobs)]
        )
        processes = [
            await anyio.open_process(
                conductor_command(
                    url, "memory://", "--concurrency", "8", "--lease", "2", "--name", f"p{n}"
                ),
                cwd=REPO,
                stderr=subprocess.DEVNULL,
            )
            for n in range(3)
        ]
        victim = processes[0]
        try:
            with anyio.fail_after(30):
                while not await _held_by(board, "p0-"):
                    await anyio.sleep(0.05)
            # Killed mid-run: its claimed jobs are held until their leases (2 s) expire.
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            with anyio.fail_after(60):
                while await board.job_count(state=JobState.COMPLETE) < jobs:
                    await anyio.sleep(0.2)
        finally:
            for process in processes[1:]:
                process.terminate()
            for process in processes[1:]:
                with anyio.fail_after(30):
                    await process.wait()
        finished = [job async for job in board.iterjobs()]
    assert len(finished) == jobs and all(job.state is JobState.COMPLETE for job in finished)
    # Every job ran; the ones the killed conductor held ran again on another (attempt 2).
    started = {line.split()[1] for line in lines(record) if line.startswith("nap-start")}
    assert started == {str(key) for key in range(jobs)}
    retried = [job for job in finished if job.attempts == 2]
    assert retried and all(job.attempts <= 2 for job in finished)
    assert all(job.owner is not None and not job.owner.startswith("p0-") for job in retried)


async def _held_by(board: JobBoard, prefix: str) -> list[Job]:
    """The jobs claimed now by an owner whose id starts with ``prefix``."""
    return [
        job
        async for job in board.iterjobs(state=JobState.CLAIMED)
        if job.owner is not None and job.owner.startswith(prefix)
    ]


@pytest.mark.timeout(120)
async def test_a_poison_job_lands_on_the_dead_letter_topic_and_the_partition_flows(
    tmp_path: Path,
) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

    from tests.kafka_helpers import kafka_url, require_kafka, unique_topic

    topic = unique_topic("poison")
    # One partition: the good jobs sit behind the poison job in it.
    url = kafka_url(topic, "procs", partitions=1)
    record = tmp_path / "record.txt"
    async with open_board(url, poll_interval=0.05) as board:
        poison = await board.post(
            "poison", "poison", {"key": 1, "record": str(record)}, priority=-1, max_attempts=3
        )
        good = [await board.post(f"g{n}", "noop", {"key": n}, max_attempts=10) for n in range(10)]
        deaths = 0
        with anyio.fail_after(90):
            while (await board.get(poison.id)).state is not JobState.TRASHED:
                assert deaths <= 5, "the poison job is cycling"
                process = await anyio.open_process(
                    conductor_command(url, "memory://", "--lease", "0.5", "--concurrency", "4"),
                    cwd=REPO,
                    stderr=subprocess.DEVNULL,
                )
                late = await board.post(f"late{deaths}", "noop", {"key": deaths}, max_attempts=10)
                good.append(late)
                with anyio.move_on_after(15):
                    await process.wait()
                if process.returncode is None:
                    process.terminate()
                    await process.wait()
                else:
                    assert process.returncode == 17
                    deaths += 1
            process = await anyio.open_process(
                conductor_command(url, "memory://", "--lease", "0.5"),
                cwd=REPO,
                stderr=subprocess.DEVNULL,
            )
            try:
                done = [await board.wait_for(job.id) for job in good]
            finally:
                # SIGTERM: the conductor drains, commits its offsets and leaves the group.
                process.terminate()
                await process.wait()
        trashed = await board.get(poison.id)
        assert isinstance(board, KafkaJobBoard)
        group, dead_topic = board.group_id, board.dead_topic
    assert lines(record) == ["die 1"] * 3
    assert deaths == 3
    assert trashed.attempts == 4 and "max_attempts=3" in (trashed.trash_reason or "")
    assert all(job.state is JobState.COMPLETE for job in done)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=require_kafka(), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        # Every job of the partition is finished, so the group committed past all of them.
        committed = await consumer.committed(TopicPartition(f"{topic}.procs.jobs", 0))
        assert committed == 1 + len(good)
        consumer.assign([TopicPartition(dead_topic, 0)])
        await consumer.seek_to_beginning()
        batch = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    letters = [record for records in batch.values() for record in records]
    assert [r.key.decode() for r in letters] == [poison.id]
    letter = json.loads(letters[0].value)
    assert letter["job"]["state"] == "TRASHED" and "max_attempts=3" in letter["reason"]
    assert dict(letters[0].headers)["reason"].decode() == letter["reason"]
