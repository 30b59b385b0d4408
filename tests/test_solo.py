"""The gate that lets a conductor's jobs run side by side, or one alone."""

from __future__ import annotations

import anyio

from aioconductor.conductor.solo import SoloGate


async def test_an_alone_hold_waits_for_shared_ones_and_holds_off_new_ones() -> None:
    gate, order = SoloGate(), []

    async def job(name: str, alone: bool, release: anyio.Event) -> None:
        async with gate.hold(alone):
            order.append(f"+{name}")
            await release.wait()
            order.append(f"-{name}")

    first, solo, later = anyio.Event(), anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(job, "first", False, first)
        await anyio.sleep(0.01)
        tg.start_soon(job, "solo", True, solo)
        await anyio.sleep(0.01)
        tg.start_soon(job, "later", False, later)
        await anyio.sleep(0.01)
        assert order == ["+first"] and gate.solo_waiting == 1
        first.set()
        await anyio.sleep(0.01)
        assert order == ["+first", "-first", "+solo"]
        solo.set()
        later.set()
    assert order == ["+first", "-first", "+solo", "-solo", "+later", "-later"]


async def test_a_cancelled_alone_hold_lets_the_shared_ones_behind_it_go() -> None:
    gate, started = SoloGate(), anyio.Event()
    running = anyio.Event()

    async def shared(event: anyio.Event) -> None:
        async with gate.hold(False):
            event.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(shared, running)
        await running.wait()
        with anyio.move_on_after(0.05):
            async with gate.hold(True):
                raise AssertionError("ran beside a shared hold")
        assert gate.solo_waiting == 0
        with anyio.fail_after(1):
            tg.start_soon(shared, started)
            await started.wait()
        tg.cancel_scope.cancel()
