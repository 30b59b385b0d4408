"""The runner's own costs: work per finished task that does not grow with the flow."""

from __future__ import annotations

from typing import Any

import pytest

from aioconductor.engine import Engine, linear, task
from aioconductor.engine import runner as runner_module
from aioconductor.persistence.models import FlowState


class _CountedList(list[Any]):
    """A list that counts how often it is walked whole."""

    walks = 0

    def __iter__(self) -> Any:
        _CountedList.walks += 1
        return super().__iter__()


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> type[_CountedList]:
    """Count every walk over a runner's atoms and nodes."""
    load = runner_module.Runner._load

    def counted_load(self: runner_module.Runner, saved: Any) -> None:
        load(self, saved)
        self.nodes = _CountedList(self.nodes)
        self.details = _CountedList(self.details)

    monkeypatch.setattr(runner_module.Runner, "_load", counted_load)
    _CountedList.walks = 0
    return _CountedList


async def _walks_for_a_line_of(n: int, walks: type[_CountedList]) -> int:
    async def step() -> None:
        return None

    flow = linear("line", *(task(name=f"s{i}")(step) for i in range(n)))
    walks.walks = 0
    result = await Engine(flow).run()
    assert result.state is FlowState.SUCCESS
    return walks.walks


async def test_a_line_of_tasks_walks_its_atoms_a_fixed_number_of_times(
    walks: type[_CountedList],
) -> None:
    # Deciding after each task whether the flow ended must not look at every atom: a line of n
    # tasks would cost O(n) per task, O(n^2) in all.
    short = await _walks_for_a_line_of(50, walks)
    long = await _walks_for_a_line_of(500, walks)
    assert long == short
