"""Boards and stores whose server connections are killed, or whose server restarts under them:
no job lost, none consumed twice, streams reconnect, and the caller hardly notices.

Every backend of ``tests/backends.py`` whose connections a test can kill in this process (the
conductor-level version, with conductor processes, is ``tests/test_backend_faults.py``; the chaos
scenarios add network faults).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
import pytest

from aioconductor import open_board, open_store
from aioconductor.errors import BackendUnavailable, ClaimLost
from aioconductor.models import JobNotification, JobState
from aioconductor.persistence.models import AtomDetail, FlowDetail, LogBook

from .backends import BY_NAME, Space, params

#: Seconds between kills while a board works: often enough to hit many commands mid-flight.
KILL_EVERY = {"redis": 0.02, "postgres": 0.03}
#: Seconds a stream may take to find a post made while its listener was down (the PostgreSQL
#: listener reconnects with a backoff, then re-reads).
RECOVERED_WITHIN = {"redis": 5, "postgres": 10}


@pytest.mark.parametrize("space", params(kills="tagged"), indirect=True)
async def test_killed_board_connections_lose_no_job_and_consume_none_twice(space: Space) -> None:
    async with open_board(space.board_url("faults"), lease=5.0, poll_interval=0.05) as board:
        posted = {(await board.post(f"j{i}", "f")).id for i in range(300)}
        consumed: list[str] = []

        async def work() -> None:
            while True:
                try:
                    claimed = await board.claim_next("worker", lease=0.3)
                    if claimed is None:
                        if await board.job_count(state=JobState.COMPLETE) == len(posted):
                            return
                        # A claim or consume whose reply was lost: its lease expires, then the
                        # job is claimed again (or it was consumed after all).
                        await anyio.sleep(0.05)
                        continue
                    await board.consume(claimed[1])
                    consumed.append(claimed[0].id)
                except (BackendUnavailable, ClaimLost):
                    await anyio.sleep(0.01)  # killed mid-command: the next call reconnects

        killed = 0

        async def kill() -> None:
            nonlocal killed
            while True:
                await anyio.sleep(KILL_EVERY[space.backend])
                killed += await space.kill_connections()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(kill)
                await work()
                tg.cancel_scope.cancel()
        assert killed >= 3
        assert len(consumed) == len(set(consumed))  # no job was consumed twice
        assert set(consumed) <= posted
        assert {job.state async for job in board.iterjobs()} == {JobState.COMPLETE}
        assert await board.job_count() == len(posted)


@pytest.mark.parametrize("space", params(kills="tagged"), indirect=True)
async def test_a_stream_recovers_when_its_listener_is_killed(space: Space) -> None:
    async with (
        open_board(space.board_url("faults"), lease=5.0, poll_interval=0.05) as board,
        contextlib.aclosing(board.stream()) as stream,
    ):
        iterator = aiter(stream)
        first = await board.post("before", "f")
        with anyio.fail_after(5):
            assert (await anext(iterator)).job_id == first.id
        assert await space.kill_connections(listeners_only=True) == 1
        # Posted while the listener is down: only the re-read after reconnecting finds it.
        missed = await board.post("during", "f")
        seen: list[JobNotification] = []
        with anyio.fail_after(RECOVERED_WITHIN[space.backend]):
            while missed.id not in {note.job_id for note in seen}:
                seen.append(await anext(iterator))
        after = await board.post("after", "f")
        with anyio.fail_after(5):
            while after.id not in {note.job_id for note in seen}:
                seen.append(await anext(iterator))


@pytest.mark.parametrize("space", params(kills="tagged", store=True), indirect=True)
async def test_killed_store_connections_are_replaced(space: Space) -> None:
    async with open_store(space.store_url("faults")) as store:
        book = LogBook(name="job")
        flow = FlowDetail(name="flow")
        flow.atoms["atom-0"] = AtomDetail(name="atom-0")
        book.flows[flow.uuid] = flow
        await store.save_logbook(book)
        assert await space.kill_connections() >= 1
        # Reads retry through the dropped connections.
        assert (await store.get_logbook(book.uuid)).uuid == book.uuid


@pytest.mark.parametrize("backend", params(private_server=True))
async def test_the_board_rides_out_a_server_restart(backend: str, tmp_path: Path) -> None:
    make_server = BY_NAME[backend].private_server
    assert make_server is not None
    async with (
        make_server(tmp_path) as server,
        open_board(f"{server.url}?namespace=restart", poll_interval=0.05) as board,
    ):
        jobs = [await board.post(f"j{i}", "f") for i in range(5)]
        claimed = await board.claim_next("owner-1")
        assert claimed is not None
        async with contextlib.aclosing(board.stream()) as stream:
            iterator = aiter(stream)
            with anyio.fail_after(5):
                await anext(iterator)
            await server.stop()
            # A transition while the server is down fails at once, and clearly.
            with pytest.raises(BackendUnavailable):
                await board.claim_next("owner-1")
            # A read waits for the restart (it retries with backoff).
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.start)
                with anyio.fail_after(8):
                    assert (await board.get(jobs[1].id)).state is JobState.UNCLAIMED
            # Nothing was lost; the claim made before the restart still holds.
            assert await board.job_count() == len(jobs)
            assert await board.find_owner(claimed[0].id) == "owner-1"
            await board.consume(claimed[1])
            # The stream reconnected: a post made now is announced.
            late = await board.post("late", "f")
            with anyio.fail_after(10):
                while (await anext(iterator)).job_id != late.id:
                    pass
