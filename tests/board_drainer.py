"""A bare board worker for the multi-process claim races: claim_next and consume until done."""

from __future__ import annotations


async def drain(board_url: str, owner: str, out: str, total: int) -> None:
    """Claim and consume jobs until ``total`` are complete, writing each consumed id to ``out``.

    Run in a separate process (``python -m tests.board_drainer URL OWNER OUT TOTAL``).
    """
    import anyio

    from aioconductor.boards import open_board
    from aioconductor.models import JobState

    consumed: list[str] = []
    async with open_board(board_url) as board:
        while True:
            claimed = await board.claim_next(owner, lease=30)
            if claimed is None:
                if await board.job_count(state=JobState.COMPLETE) >= total:
                    break
                await anyio.sleep(0.01)
                continue
            await board.consume(claimed[1], result={"by": owner})
            consumed.append(claimed[0].id)
    await anyio.Path(out).write_text("".join(f"{job_id}\n" for job_id in consumed))


if __name__ == "__main__":
    import sys

    import anyio

    anyio.run(drain, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
