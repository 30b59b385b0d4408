"""A conductor whose server connections keep being killed, or whose server is restarted under
it, loses no job and consumes none twice (every backend of ``tests/backends.py`` that can)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from aioconductor import Conductor, JobState, open_board, open_store

from .apps import flows
from .backends import BY_NAME, chosen
from .test_conductor_processes import lines


@dataclass
class Server:
    url: str
    #: Kills the server side of the library's connections; returns how many it killed.
    kill: Callable[[], Awaitable[int]]
    #: Seconds between kills (the first comes a tenth of that after the conductor starts).
    interval: float = 0.25
    #: How many jobs the test runs through it, and the kills that must happen meanwhile.
    jobs: int = 1000
    min_kills: int = 2


@contextlib.asynccontextmanager
async def killed_connections(backend: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A space on the shared server; the kill ends the server side of its connections."""
    async with BY_NAME[backend].open(tmp_path) as space:
        yield Server(space.board_url("faults"), space.kill_connections)


@contextlib.asynccontextmanager
async def restarted_server(backend: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A private server, stopped as an operator would (every session ended) and started again,
    as the kill."""
    make_server = BY_NAME[backend].private_server
    assert make_server is not None
    async with make_server(tmp_path) as server:

        async def restart() -> int:
            # Shielded: the fault loop is cancelled when the jobs are done, and a restart cut
            # between its stop and its start would leave the server down for the final checks.
            with anyio.CancelScope(shield=True):
                await server.stop()
                await server.start()
            return 1

        yield Server(
            f"{server.url}?namespace=restarts", restart, interval=0.8, jobs=1500, min_kills=2
        )


#: Connections killed on the shared server; a private server restarted under the conductor.
FAULTS = {"kill": killed_connections, "restart": restarted_server}
CASES = [
    *(backend.param("kill") for backend in chosen(kills="tagged")),
    *(
        backend.param("restart", id=f"{backend.name}-restart")
        for backend in chosen(private_server=True)
    ),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("backend", "fault"), CASES)
async def test_killed_connections_lose_no_job_and_consume_none_twice(
    backend: str, fault: str, tmp_path: Path
) -> None:
    record = tmp_path / "record.txt"
    async with FAULTS[fault](backend, tmp_path) as server:
        async with (
            open_board(server.url, poll_interval=0.1) as board,
            open_store(server.url) as store,
        ):
            posted = 0

            async def post_wave() -> None:
                # Every run a killed connection interrupts spends an attempt (by design: it
                # never reached an end); allow for the many this test causes. Keyed, so that a
                # wave posted again after a lost reply posts nothing twice.
                nonlocal posted
                wave = range(posted, posted + server.jobs)
                while True:
                    try:
                        await board.post_many(
                            "tally",
                            [{"key": key, "record": str(record)} for key in wave],
                            keys=[f"tally-{key}" for key in wave],
                            max_attempts=50,
                        )
                        break
                    except Exception:  # a killed connection: post the wave again
                        await anyio.sleep(0.05)
                posted += server.jobs

            await post_wave()
            conductor = Conductor("c", board, store=store, flows=flows, max_concurrency=8, lease=1)
            kills = 0

            async def keep_killing() -> None:
                nonlocal kills
                await anyio.sleep(server.interval / 10)
                while True:
                    kills += await server.kill()
                    await anyio.sleep(server.interval)

            with anyio.fail_after(150):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(conductor.run)
                    tg.start_soon(keep_killing)
                    # Until every job is done and the kills happened while jobs ran: a drain
                    # faster than the kills gets another wave (its speed is not the point).
                    while await _count_complete(board) < posted or kills < server.min_kills:
                        if await _count_complete(board) >= posted:
                            await post_wave()
                        await anyio.sleep(0.1)
                    tg.cancel_scope.cancel()
            finished = [job async for job in board.iterjobs()]
    assert kills >= server.min_kills, f"{kills} kills: the test proved too little"
    assert len(finished) == posted and all(job.state is JobState.COMPLETE for job in finished)
    # A consume whose reply was lost went through without the conductor knowing, so it may
    # count fewer; a second consume of a job is refused (ClaimLost), never counted.
    assert conductor.stats.consumed <= posted
    keys = {int(line.split()[0]) for line in lines(record)}
    assert keys == set(range(posted))  # every job's task ran (at least once: at-least-once)


async def _count_complete(board: object) -> int:
    # Counting may itself hit a killed connection: that is the point of the test.
    try:
        return await board.job_count(state=JobState.COMPLETE)  # type: ignore[attr-defined,no-any-return]
    except Exception:
        return 0
