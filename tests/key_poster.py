"""A poster for the multi-process key races: post one key many times at once, on a signal."""

from __future__ import annotations


async def post_key(board_url: str, key: str, count: int, folder: str, name: str) -> None:
    """Connect, say ready, wait for the go, then post ``count`` jobs with ``key`` at once and
    write one line per post to ``folder/name.out``: the job's id and whether it was created.

    Run in a separate process (``python -m tests.key_poster URL KEY COUNT FOLDER NAME``).
    """
    import anyio

    from aioconductor.boards import open_board

    base = anyio.Path(folder)
    lines: list[str] = []
    async with open_board(board_url) as board:

        async def post(n: int) -> None:
            job, created = await board.get_or_post(f"post-{name}-{n}", "f", {"n": n}, key=key)
            lines.append(f"{job.id} {created}\n")

        await (base / f"{name}.ready").write_text("")
        with anyio.fail_after(60):
            while not await (base / "go").exists():
                await anyio.sleep(0.001)
        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(post, n)
    await (base / f"{name}.out").write_text("".join(lines))


if __name__ == "__main__":
    import sys

    import anyio

    url, key, count, folder, name = sys.argv[1:6]
    anyio.run(post_key, url, key, int(count), folder, name)
