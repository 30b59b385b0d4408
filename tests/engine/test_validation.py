"""A flow that cannot run is refused before anything runs, with the names in the message."""

from __future__ import annotations

import pytest

from aioconductor.engine import Engine, Task, Times, graph, linear, run_flow, task, unordered
from aioconductor.errors import CompilationError

from .conftest import Log, Step


class Needs(Task):
    async def execute(self, x: int, y: int = 0) -> int:
        return x + y


async def test_missing_input_names_the_task_and_the_name() -> None:
    engine = Engine(linear("f", Needs("adder", provides="sum")), inputs={"y": 1})
    with pytest.raises(CompilationError, match=r"'adder' requires 'x'"):
        await engine.validate()


async def test_optional_parameter_may_be_missing() -> None:
    assert (await run_flow(Needs(provides="sum"), {"x": 2}))["sum"] == 2


async def test_a_value_provided_later_does_not_count(log: Log) -> None:
    flow = linear("f", Needs("adder"), Step("x", log))
    with pytest.raises(CompilationError, match="'adder' requires 'x'"):
        await run_flow(flow)
    assert log.executed == []


async def test_unordered_siblings_cannot_feed_each_other(log: Log) -> None:
    with pytest.raises(CompilationError, match="'adder' requires 'x'"):
        await run_flow(unordered("u", Step("x", log), Needs("adder")))


def test_unknown_rebind_and_inject_names_are_refused() -> None:
    with pytest.raises(CompilationError, match="rebind names 'nope'"):
        Needs(rebind={"nope": "x"})
    with pytest.raises(CompilationError, match="inject names 'zzz'"):
        Needs(inject={"zzz": 1})
    with pytest.raises(CompilationError, match="rebind lists 3 names"):
        Needs(rebind=["a", "b", "c"])


async def test_duplicate_names_and_provides_are_refused(log: Log) -> None:
    with pytest.raises(CompilationError, match="two atoms are named 'a'"):
        await Engine(linear("f", Step("a", log), Step("a", log, provides="other"))).compile()
    with pytest.raises(CompilationError, match="'a' and 'b' both provide 'v'"):
        await Engine(
            linear("f", Step("a", log, provides="v"), Step("b", log, provides="v"))
        ).compile()


async def test_graph_cycles_are_refused(log: Log) -> None:
    flow = graph("g", Step("a", log), Step("b", log), links=[("a", "b"), ("b", "a")])
    with pytest.raises(CompilationError, match="cycle between 'a', 'b'"):
        await Engine(flow).compile()


async def test_data_cycles_are_refused() -> None:
    @task(provides="p")
    async def first(q: int) -> int:
        return q

    @task(provides="q")
    async def second(p: int) -> int:
        return p

    with pytest.raises(CompilationError, match="cycle"):
        await Engine(graph("g", first, second)).compile()


async def test_links_to_strangers_are_refused(log: Log) -> None:
    flow = graph("g", Step("a", log), links=[("a", "ghost")])
    with pytest.raises(CompilationError, match="'ghost'"):
        await Engine(flow).compile()


def test_a_task_must_override_execute() -> None:
    with pytest.raises(TypeError, match="override execute"):
        Task()


@pytest.mark.parametrize("flow", ["hello", Times(3), None, 42, [linear("f")]])
async def test_an_engine_refuses_what_is_not_a_flow_with_a_type_error(flow: object) -> None:
    with pytest.raises(TypeError, match="an engine runs a Flow or a Task, not"):
        Engine(flow)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="an engine runs a Flow or a Task, not"):
        await run_flow(flow)  # type: ignore[arg-type]
