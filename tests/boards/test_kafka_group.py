"""The Kafka board's consumer-group member, on its own: which offset a commit picks.

A fake consumer and view stand in for the broker, so the order of the member's steps is the
only thing under test (the board's own tests run it against the Tansu test broker).
"""

from __future__ import annotations

import collections
from typing import Any

from aiokafka.structs import TopicPartition  # type: ignore[import-untyped]

from aioconductor._backends.kafka.group import GroupMember

TOPIC = "space.jobs"


class _Consumer:
    """Holds partition 0 and records each commit."""

    def __init__(self) -> None:
        self.commits: list[dict[int, int]] = []

    def assignment(self) -> set[Any]:
        return {TopicPartition(TOPIC, 0)}

    async def commit(self, offsets: dict[Any, Any]) -> None:
        self.commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})


class _View:
    """Knows ``finished`` jobs; every other known job is running; ``unknown`` jobs it cannot
    judge without a sync (a jobs record without its ``seq``)."""

    def __init__(self, finished: set[str], unknown: set[str]) -> None:
        self.done = finished
        self.unknown = unknown

    def finished(self, job_id: str, seq: int | None) -> bool | None:
        if job_id in self.unknown and seq is None:
            return None
        return job_id in self.done


async def test_a_forced_commit_syncs_for_an_unknown_job_behind_finished_ones() -> None:
    # Offsets 0 and 1: finished jobs; 2: a purged job's record written without its seq;
    # 3: a running job. The commit must pass the purged job (after a sync says so), even though
    # the oldest record in flight is a job the view knows.
    view = _View(finished={"a", "b"}, unknown={"purged"})
    syncs: list[int] = []

    async def sync() -> None:
        syncs.append(1)

    member = GroupMember(view, TOPIC, "kafka://test", {}, sync)  # type: ignore[arg-type]
    consumer = _Consumer()
    member._consumer = consumer  # type: ignore[assignment]
    member._in_flight[0] = collections.deque(
        [(0, "a", 1), (1, "b", 2), (2, "purged", None), (3, "running", 7)]
    )
    member._read_to[0] = 4
    await member.commit(force=True)
    assert syncs == [1]
    assert consumer.commits == [{0: 3}]


async def test_a_commit_stops_at_an_unknown_job_when_the_sync_fails() -> None:
    view = _View(finished={"a"}, unknown={"unfolded"})

    async def sync() -> None:
        raise OSError("the state topic is unreachable")

    member = GroupMember(view, TOPIC, "kafka://test", {}, sync)  # type: ignore[arg-type]
    consumer = _Consumer()
    member._consumer = consumer  # type: ignore[assignment]
    member._in_flight[0] = collections.deque([(0, "a", 1), (1, "unfolded", None)])
    member._read_to[0] = 2
    await member.commit(force=True)
    assert consumer.commits == [{0: 1}]
