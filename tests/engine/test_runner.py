"""The runner's own costs: work per finished task that does not grow with the flow."""

from __future__ import annotations

from typing import Any

import pytest

from aioconductor.engine import Engine, linear, task
from aioconductor.engine import engine as engine_module
from aioconductor.engine.compiler import CompiledFlow, compile_flow
from aioconductor.engine.journal import Journal
from aioconductor.persistence.models import AtomDetail, FlowState


class _CountedList(list[Any]):
    """A list that counts how often it is walked whole."""

    walks = 0

    def __iter__(self) -> Any:
        _CountedList.walks += 1
        return super().__iter__()


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> type[_CountedList]:
    """Count every walk over a run's atoms (as its journal holds them) and nodes, by whoever
    walks them: runner, completer or journal."""
    load = Journal.load

    def counted_load(self: Journal, nodes: Any) -> list[AtomDetail]:
        load(self, nodes)
        self.details = _CountedList(self.details)
        return self.details

    def counted_compile(flow: Any) -> CompiledFlow:
        compiled = compile_flow(flow)
        compiled.nodes = _CountedList(compiled.nodes)
        return compiled

    monkeypatch.setattr(Journal, "load", counted_load)
    monkeypatch.setattr(engine_module, "compile_flow", counted_compile)
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
