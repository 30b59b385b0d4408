"""Structured logs: records emitted while a job runs carry its id, flow and owner."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import anyio
import pytest

from aioconductor import Conductor, FlowRegistry, open_board, task, unordered
from aioconductor.logs import FORMAT, JobContextFilter, current_job, job_context

flows = FlowRegistry()
user_log = logging.getLogger("tests.user_task")


@flows.register("chatty")
def chatty_flow(**args: Any) -> Any:
    @task(provides="said")
    async def say(key: int) -> int:
        user_log.info("working on %s", key)
        return key

    @task
    async def also(key: int) -> None:
        # Runs next to `say` in an unordered flow: the context follows into child tasks.
        user_log.info("also %s", key)

    return unordered("chatty", say, also)


@flows.register("fails")
def failing_flow(**args: Any) -> Any:
    @task(provides="charged")
    async def charge(amount: int) -> int:
        if amount > 100:
            raise ValueError(f"amount {amount} is over the limit")
        return amount

    return unordered("fails", charge)


@flows.register("broken")
def broken_flow(**args: Any) -> Any:
    raise ValueError("no such thing")


async def run_jobs(posts: list[tuple[str, dict[str, Any]]]) -> tuple[Conductor, list[Any]]:
    async with open_board(f"memory://{uuid.uuid4().hex}") as board:
        jobs = [await board.post(f"job-{n}", flow, args) for n, (flow, args) in enumerate(posts)]
        conductor = Conductor("logger", board, flows=flows, max_concurrency=4)
        with anyio.fail_after(10):
            async with conductor, anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                done = [await board.wait_for(job.id) for job in jobs]
                conductor.stop()
    return conductor, done


async def test_task_records_carry_the_job_id_flow_and_owner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.handler.addFilter(JobContextFilter())
    caplog.set_level(logging.INFO)
    conductor, done = await run_jobs([("chatty", {"key": 1}), ("chatty", {"key": 2})])
    records = [r for r in caplog.records if r.name == "tests.user_task"]
    assert len(records) == 4
    by_message = {r.getMessage(): r for r in records}
    for job, key in zip(done, (1, 2), strict=True):
        for message in (f"working on {key}", f"also {key}"):
            record: Any = by_message[message]
            assert record.job_id == job.id
            assert record.flow == "chatty" and record.job_name == job.name
            assert record.owner == conductor.owner and record.attempt == 1


async def test_the_conductors_own_records_about_a_job_carry_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.handler.addFilter(JobContextFilter())
    _, [job] = await run_jobs([("broken", {})])
    [record] = [r for r in caplog.records if "trashed" in r.getMessage()]
    assert record.job_id == job.id and record.flow == "broken"  # type: ignore[attr-defined]


async def test_a_failed_flow_logs_its_task_exception_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioconductor")
    _, [job] = await run_jobs([("fails", {"amount": 500})])
    assert job.outcome == "REVERTED"
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        f"job {job.id} (fails): task charge failed: ValueError: amount 500 is over the limit "
        "(the flow was reverted)"
    )
    assert warning.failed_task == "charge"  # type: ignore[attr-defined]
    assert 'raise ValueError(f"amount {amount} is over the limit")' in warning.traceback  # type: ignore[attr-defined]
    [debug] = [r for r in caplog.records if "traceback" in r.getMessage()]
    assert (
        debug.levelno == logging.DEBUG and "Traceback (most recent call last)" in debug.getMessage()
    )


def test_outside_a_job_the_attributes_are_missing_and_extra_wins() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hi", None, None)
    JobContextFilter(missing="-").filter(record)
    assert record.job_id == "-" and record.owner == "-"  # type: ignore[attr-defined]
    with job_context("j1", "f", "o", attempt=2) as context:
        assert current_job() is context
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hi", None, None)
        record.flow = "mine"
        assert JobContextFilter().filter(record)
        assert record.job_id == "j1" and record.flow == "mine"  # type: ignore[attr-defined]
        assert "job=j1" in logging.Formatter(FORMAT).format(record)
    assert current_job() is None
