"""Helpers for engine tests: tasks that record what they did."""

from __future__ import annotations

from typing import Any

import pytest

from aioconductor.engine import Task


class Log:
    """What ran and what was reverted, in order."""

    def __init__(self) -> None:
        self.executed: list[str] = []
        self.reverted: list[str] = []


class Step(Task):
    """Appends its name to the log; provides ``<name>`` unless told otherwise."""

    def __init__(self, name: str, log: Log, *, fail: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("provides", name)
        super().__init__(name, **kwargs)
        self.log = log
        self.fail = fail

    async def execute(self) -> str:
        self.log.executed.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        return f"{self.name}-done"

    async def revert(self, **kwargs: Any) -> None:
        self.log.reverted.append(self.name)


@pytest.fixture
def log() -> Log:
    return Log()
