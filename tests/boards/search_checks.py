"""The cross-check both SQL boards' search tests run: a board's indexed statements must find
what the default implementation (every job read, ``JobFilter.matches``) finds."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from aioconductor.boards import JobBoard
from aioconductor.boards._searching import Searching
from aioconductor.models import JobFilter, JobState, Outcome


async def fill(board: JobBoard, names: Sequence[str]) -> None:
    """Post each of ``names`` three times in mixed states, flows, keys and delays."""
    for n, name in enumerate(list(names) * 3):
        key = f"Kéy-{n}" if n % 2 else None
        job = await board.post(name, ("a", "b")[n % 2], key=key, delay=3600 if n % 6 == 3 else 0)
        if n % 3 == 1:
            claim = await board.claim(job.id, "o")
            if n % 4 == 1:
                await board.consume(claim, outcome=(Outcome.SUCCESS, Outcome.FAILURE)[n % 8 == 1])
        elif n % 5 == 2:
            await board.trash(job.id, reason="r")
    await board.post("due", "a", not_before=time.time() - 5)


def filters(texts: Sequence[str]) -> list[JobFilter]:
    """Each text alone, every combination of state, outcome and flow, and each state with a
    text."""
    wheres = [JobFilter(text=text) for text in texts]
    states: list[JobState | None] = [None, *JobState]
    for state, outcome, flow in itertools.product(states, [None, *Outcome], [None, "a", "b"]):
        wheres.append(JobFilter(state=state, outcome=outcome, flow=flow))
    wheres += [JobFilter(state=state, text="e") for state in JobState]
    return wheres


async def check_against_the_default(board: JobBoard, texts: Sequence[str]) -> None:
    """Every filter's page, count and a page ``before=`` a seq, and ``ended_counts`` in a few
    bucket sizes, as the default implementation has them."""
    for where in filters(texts):
        default = await Searching._search(board, where, None, 1000)
        assert await board._search(where, None, 1000) == default, where
        assert await board.search_count(where) == len(default), where
        if len(default) > 2:
            before = default[1].seq
            expected = [job.id for job in default if job.seq < before][:2]
            page = await board.search(where, before=before, limit=2)
            assert [job.id for job in page.jobs] == expected, where
    for bucket in (0.001, 1.0, 60.0, 7.5):
        since = time.time() - 60
        ours = await board.ended_counts(since, bucket=bucket)
        default_counts = await Searching._ended_counts(board, since, bucket)
        assert ours == sorted(default_counts, key=lambda c: (c.start, c.ending))
