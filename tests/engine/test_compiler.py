"""Compilations kept on a flow: compiled once per shape and input names, shared safely."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconductor.engine import Engine, Task, graph, linear, run_flow
from aioconductor.engine import engine as engine_module
from aioconductor.engine.compiler import KEPT_COMPILATIONS, CompiledFlow, compile_flow
from aioconductor.errors import CompilationError


class Add(Task):
    async def execute(self, x: int, y: int = 0) -> int:
        return x + y


class Gate(Task):
    """Adds like ``Add``, after waiting for ``gate`` (so that runs overlap)."""

    def __init__(self, gate: anyio.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    async def execute(self, x: int, y: int = 0) -> int:
        await self.gate.wait()
        return x + y


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[CompiledFlow]:
    """Every compilation the engine makes."""
    made: list[CompiledFlow] = []

    def counted(flow: Any) -> CompiledFlow:
        made.append(compile_flow(flow))
        return made[-1]

    monkeypatch.setattr(engine_module, "compile_flow", counted)
    return made


async def test_a_flow_run_again_with_the_same_input_names_is_compiled_once(
    compiled: list[CompiledFlow],
) -> None:
    flow = linear("f", Add("a", provides="s"), Add("b", rebind={"x": "s", "y": "x"}, provides="t"))
    for x in range(5):
        assert (await run_flow(flow, {"x": x}))["t"] == 2 * x
    assert len(compiled) == 1


async def test_other_input_names_bind_other_arguments(compiled: list[CompiledFlow]) -> None:
    flow = linear("f", Add("a", provides="s"))
    assert (await run_flow(flow, {"x": 1}))["s"] == 1
    assert (await run_flow(flow, {"x": 1, "y": 10}))["s"] == 11
    assert (await run_flow(flow, {"x": 2}))["s"] == 2
    assert len(compiled) == 2


async def test_runs_at_once_with_other_inputs_keep_their_own_arguments() -> None:
    # One run binds the optional y, the other does not: a compilation shared by both (or
    # bound again by the second while the first waits) would hand one the other's arguments.
    gate = anyio.Event()
    flow = linear("f", Gate(gate, name="a", provides="s"))
    results: dict[str, Any] = {}

    async def run(name: str, inputs: dict[str, int]) -> None:
        results[name] = (await run_flow(flow, inputs))["s"]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "with y", {"x": 1, "y": 10})
        await anyio.sleep(0.01)
        tg.start_soon(run, "without", {"x": 2})
        await anyio.sleep(0.01)
        gate.set()
    assert results == {"with y": 11, "without": 2}


async def test_a_flow_changed_after_a_run_is_compiled_again(
    compiled: list[CompiledFlow],
) -> None:
    flow = linear("f", Add("a", provides="s"))
    await run_flow(flow, {"x": 1})
    flow.add(Add("b", rebind={"x": "s"}, provides="t"))
    assert (await run_flow(flow, {"x": 1}))["t"] == 1
    links = graph("g", Add("a", provides="s"), Add("b", provides="t"))
    await run_flow(links, {"x": 1})
    links.link("a", "b")
    await run_flow(links, {"x": 1})
    assert len(compiled) == 4


async def test_a_flow_that_fails_validation_is_refused_every_time(
    compiled: list[CompiledFlow],
) -> None:
    flow = linear("f", Add("a", provides="s"))
    for _ in range(2):
        with pytest.raises(CompilationError, match="'a' requires 'x'"):
            await Engine(flow, inputs={"y": 1}).run()
    assert len(compiled) == 2
    assert flow.compilations == {}


async def test_a_flow_keeps_a_bounded_number_of_compilations() -> None:
    flow = linear("f", Add("a", provides="s"))
    for n in range(3 * KEPT_COMPILATIONS):
        await run_flow(flow, {"x": 1, f"extra{n}": 0})
        assert 1 <= len(flow.compilations) <= KEPT_COMPILATIONS


async def test_an_engine_validated_again_with_other_inputs_does_not_rebind_a_shared_one() -> None:
    flow = linear("f", Add("a", provides="s"))
    first = Engine(flow, inputs={"x": 1, "y": 10})
    await first.validate()
    second = Engine(flow, inputs={"x": 1, "y": 10})
    second.inputs = {"x": 2}
    await second.validate()
    assert (await first.run()).results["s"] == 11
    assert (await second.run()).results["s"] == 2


async def test_a_task_changed_after_a_run_is_compiled_again(
    compiled: list[CompiledFlow],
) -> None:
    first, second = Add("a", provides="s"), Add("b", provides="t")
    flow = linear("f", first, second)
    await run_flow(flow, {"x": 1})
    first.name = "renamed"
    engine = Engine(flow, inputs={"x": 1})
    await engine.run()
    saved = await engine.store.get_logbook(engine.book_id)
    assert set(next(iter(saved.flows.values())).atoms) == {"renamed", "b"}
    assert len(compiled) == 2
    second.provides = ("s",)  # two tasks providing one name: refused, as in a new flow
    with pytest.raises(CompilationError, match="both provide 's'"):
        await run_flow(flow, {"x": 1})
