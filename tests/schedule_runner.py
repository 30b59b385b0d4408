"""Conductors running one schedule in a separate process, on a clock shared through a file, for
the multi-process schedule tests: ``python -m tests.schedule_runner URL FOLDER NAME COUNT``."""

from __future__ import annotations


class FileClock:
    """A fake wall clock whose time is the number in a file (the test moves it for every
    process at once)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def time(self) -> float:
        """The time in the file (the test replaces the file whole, never rewrites it)."""
        with open(self._path) as file:
            return float(file.read())

    async def sleep_until(self, when: float) -> None:
        """Wait until the file's time is ``when`` or later."""
        import anyio

        while self.time() < when:
            await anyio.sleep(0.005)


async def run(board_url: str, folder: str, name: str, count: int) -> None:
    """Run ``count`` conductors with the schedule ``beat`` (every second) until ``stop``
    appears in ``folder``; ``<name>.ready`` says they started."""
    import anyio

    from aioconductor import Conductor, Schedule, open_board
    from tests.apps import flows

    base = anyio.Path(folder)
    schedule = Schedule("beat", flow="noop", every=1, args={"key": "beat"})
    clock = FileClock(f"{folder}/clock")
    boards = [open_board(board_url, poll_interval=0.05) for _ in range(count)]
    conductors = [
        Conductor(f"{name}-{n}", board, flows=flows, schedules=[schedule], clock=clock)
        for n, board in enumerate(boards)
    ]
    async with anyio.create_task_group() as tg:
        for conductor in conductors:
            await tg.start(conductor.run)
        await (base / f"{name}.ready").write_text("")
        with anyio.fail_after(120):
            while not await (base / "stop").exists():
                await anyio.sleep(0.02)
        for conductor in conductors:
            conductor.stop()
    for board in boards:
        await board.aclose()
    posted = sum(conductor.stats.scheduled for conductor in conductors)
    await (base / f"{name}.out").write_text(str(posted))


if __name__ == "__main__":
    import sys

    import anyio

    anyio.run(run, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
