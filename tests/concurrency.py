"""Helpers for tests that start many calls at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio


async def outcomes_of(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run the calls at once; each one's result, or the exception it raised, in order."""
    outcomes: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            outcomes[i] = await calls[i]()
        except Exception as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return outcomes
