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
    """A list that counts every element read from it: by a walk, by index or by a search."""

    examined = 0

    def __iter__(self) -> Any:
        for item in super().__iter__():
            _CountedList.examined += 1
            yield item

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        _CountedList.examined += len(item) if isinstance(index, slice) else 1
        return item

    def __contains__(self, value: object) -> bool:
        _CountedList.examined += len(self)
        return super().__contains__(value)

    def index(self, *args: Any) -> int:
        _CountedList.examined += len(self)
        return super().index(*args)

    def count(self, value: Any) -> int:
        _CountedList.examined += len(self)
        return super().count(value)


@pytest.fixture
def examined(monkeypatch: pytest.MonkeyPatch) -> list[Journal]:
    """Count every element read from a run's atoms (as its journal holds them) and nodes, by
    whoever reads them: runner, completer or journal. Returns the runs' journals."""
    load = Journal.load
    journals: list[Journal] = []

    def counted_load(self: Journal, nodes: Any) -> list[AtomDetail]:
        load(self, nodes)
        self.details = _CountedList(self.details)
        journals.append(self)
        return self.details

    def counted_compile(flow: Any) -> CompiledFlow:
        compiled = compile_flow(flow)
        compiled.nodes = _CountedList(compiled.nodes)
        return compiled

    monkeypatch.setattr(Journal, "load", counted_load)
    monkeypatch.setattr(engine_module, "compile_flow", counted_compile)
    return journals


async def _examined_per_task_in_a_line_of(n: int, journals: list[Journal]) -> float:
    async def step() -> None:
        return None

    flow = linear("line", *(task(name=f"s{i}")(step) for i in range(n)))
    _CountedList.examined = 0
    result = await Engine(flow).run()
    assert result.state is FlowState.SUCCESS
    # Still the counted list: a journal that swapped it for another would count nothing.
    assert isinstance(journals[-1].details, _CountedList)
    return _CountedList.examined / n


async def test_a_line_of_tasks_examines_a_fixed_number_of_nodes_per_task(
    examined: list[Journal],
) -> None:
    # Deciding after each task whether the flow ended must not look at every atom: a line of n
    # tasks would cost O(n) per task, O(n^2) in all (#16 item 6). Work, not time: the atoms and
    # nodes read per finished task, by a walk or by index, stay the same (about 31) whatever the
    # line's length; a scan per task would read some 500 per task here.
    short = await _examined_per_task_in_a_line_of(50, examined)
    long = await _examined_per_task_in_a_line_of(1000, examined)
    assert 0 < long <= 1.1 * short, (short, long)
