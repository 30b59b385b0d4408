"""`JobTasks`: a conductor run's job tasks behave as a task group's would, shields included."""

from __future__ import annotations

import asyncio
import contextvars
import time

import anyio
import pytest

from aioconductor.conductor.jobtasks import JobTasks


async def test_leaving_waits_for_every_task() -> None:
    ended: list[int] = []

    async def job(n: int) -> None:
        await anyio.sleep(0.01 * n)
        ended.append(n)

    async with JobTasks() as tasks:
        for n in range(3):
            tasks.start(job, n, name=f"job {n}")
        assert len(tasks) == 3
    assert sorted(ended) == [0, 1, 2]
    assert len(tasks) == 0


async def test_a_cancel_reaches_every_task_but_not_their_shielded_clean_up() -> None:
    cleaned: list[int] = []

    async def job(n: int) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # a plain task.cancel() would cut this short
                cleaned.append(n)

    async with JobTasks() as tasks:
        for n in range(3):
            tasks.start(job, n, name=f"job {n}")
        await anyio.sleep(0.01)
        tasks.cancel()
    assert sorted(cleaned) == [0, 1, 2]


async def test_a_task_started_after_the_cancel_starts_cancelled_and_still_runs() -> None:
    # A claimed job must always reach its run, which gives the claim back.
    reached: list[str] = []

    async def job() -> None:
        reached.append("started")
        try:
            await anyio.sleep_forever()
        finally:
            reached.append("cleaned up")

    async with JobTasks() as tasks:
        tasks.cancel()
        tasks.start(job, name="late")
    assert reached == ["started", "cleaned up"]


async def test_cancelling_the_owner_cancels_the_tasks_and_outlives_them() -> None:
    cleaned: list[str] = []

    async def job() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.02)
                cleaned.append("job")

    with anyio.move_on_after(0.05) as outer:
        async with JobTasks() as tasks:
            tasks.start(job, name="job")
            await anyio.sleep_forever()
    assert outer.cancelled_caught
    assert cleaned == ["job"]


async def test_the_first_error_of_a_task_cancels_the_others_and_is_raised() -> None:
    cancelled: list[str] = []

    async def fails() -> None:
        await anyio.sleep(0.01)
        raise ValueError("boom")

    async def waits() -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append("waits")
            raise

    with pytest.raises(ValueError, match="boom"):
        async with JobTasks() as tasks:
            tasks.start(waits, name="waits")
            tasks.start(fails, name="fails")
    assert cancelled == ["waits"]


async def test_a_task_s_error_raised_on_the_block_s_own_error_keeps_it_as_its_context() -> None:
    # The block fails; a task, cancelled then, fails in its clean-up: the task's error is
    # raised (the first a task raised), and the block's is not lost: it is its context, as
    # for an error raised while another is being handled.
    async def fails_when_cancelled() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            raise KeyError("clean-up")

    with pytest.raises(KeyError) as raised:
        async with JobTasks() as tasks:
            tasks.start(fails_when_cancelled, name="task")
            await anyio.sleep(0.01)
            raise ValueError("block")
    assert isinstance(raised.value.__context__, ValueError)
    assert str(raised.value.__context__) == "block"


async def test_tasks_carry_their_names_and_the_starter_s_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[str, str]] = []

    async def job() -> None:
        task = asyncio.current_task()
        assert task is not None
        seen.append((task.get_name(), var.get()))
        var.set("changed by the job")  # stays in the job's own copy

    var.set("starter")
    async with JobTasks() as tasks:
        tasks.start(job, name="job 1")
        tasks.start(job, name="job 2")
    assert sorted(seen) == [("job 1", "starter"), ("job 2", "starter")]
    assert var.get() == "starter"


async def test_a_task_s_error_cancels_the_block_at_once() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    started = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        async with JobTasks() as tasks:
            tasks.start(fails, name="fails")
            await anyio.sleep(5)  # the dispatcher's loop: a task group cancels it at once
    assert time.monotonic() - started < 2


async def test_a_cancel_from_outside_reaches_the_tasks_while_the_block_is_shielded() -> None:
    # The dispatcher may sit in a shielded claim call; the jobs (whose leases nobody renews
    # once the conductor is cancelled) must stop at once all the same, as in a task group.
    stopped: list[float] = []

    async def job() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            stopped.append(time.monotonic())

    started = time.monotonic()
    with anyio.move_on_after(0.05):
        async with JobTasks() as tasks:
            tasks.start(job, name="job")
            with anyio.CancelScope(shield=True):
                await anyio.sleep(1)
    assert stopped and stopped[0] - started < 0.5
