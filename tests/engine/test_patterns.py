"""Patterns: linear, unordered and graph flows run their tasks in the promised order."""

from __future__ import annotations

import anyio

from aioconductor.engine import Engine, Task, graph, linear, run_flow, task, unordered
from aioconductor.persistence.models import FlowState

from .conftest import Log, Step


async def test_linear_runs_in_the_given_order(log: Log) -> None:
    names = ["a", "b", "c", "d"]
    results = await run_flow(linear("f", *(Step(n, log) for n in names)))
    assert log.executed == names
    assert results == {n: f"{n}-done" for n in names}


async def test_values_flow_from_inputs_and_earlier_tasks() -> None:
    @task(provides="doubled")
    async def double(x: int) -> int:
        return x * 2

    @task(provides=("low", "high"))
    async def split(doubled: int, offset: int = 1) -> list[int]:
        return [doubled - offset, doubled + offset]

    @task(provides="total", rebind={"a": "low", "b": "high"})
    async def add(a: int, b: int) -> int:
        return a + b

    results = await run_flow(linear("f", double, split, add), {"x": 5})
    assert results == {"x": 5, "doubled": 10, "low": 9, "high": 11, "total": 20}


async def test_unordered_tasks_really_run_concurrently() -> None:
    first, second = anyio.Event(), anyio.Event()

    @task(provides="a")
    async def left() -> str:
        first.set()
        await second.wait()
        return "left"

    @task(provides="b")
    async def right() -> str:
        second.set()
        await first.wait()
        return "right"

    with anyio.fail_after(5):
        results = await run_flow(unordered("u", left, right))
    assert results == {"a": "left", "b": "right"}


async def test_graph_orders_by_data_dependencies(log: Log) -> None:
    class Use(Step):
        async def execute(self, a: str, b: str) -> str:  # type: ignore[override]
            self.log.executed.append(self.name)
            return a + b

    flow = graph("g", Use("c", log), Step("b", log), Step("a", log))
    results = await run_flow(flow)
    assert log.executed[-1] == "c"
    assert results["c"] == "a-doneb-done"


async def test_graph_honours_explicit_links(log: Log) -> None:
    a, b, c = Step("a", log), Step("b", log), Step("c", log)
    await run_flow(graph("g", a, b, c, links=[(c, "b"), (b, a)]))
    assert log.executed == ["c", "b", "a"]


async def test_nested_patterns(log: Log) -> None:
    flow = linear(
        "outer",
        Step("first", log),
        unordered("middle", Step("m1", log), Step("m2", log)),
        graph("inner", Step("g1", log), Step("g2", log), links=[("g2", "g1")]),
        Step("last", log),
    )
    result = await Engine(flow).run()
    assert result.state is FlowState.SUCCESS
    assert log.executed[0] == "first" and log.executed[-1] == "last"
    assert set(log.executed[1:3]) == {"m1", "m2"}
    assert log.executed[3:5] == ["g2", "g1"]


async def test_flow_add_and_a_single_task_as_flow(log: Log) -> None:
    flow = linear("f").add(Step("a", log)).add(Step("b", log))
    assert await run_flow(flow) == {"a": "a-done", "b": "b-done"}
    assert await run_flow(Step("solo", log)) == {"solo": "solo-done"}


async def test_sync_task_runs_in_a_worker_thread() -> None:
    import threading

    main = threading.get_ident()

    @task(provides="thread")
    def where() -> int:
        return threading.get_ident()

    results = await run_flow(linear("f", where))
    assert results["thread"] != main


async def test_provides_a_mapping_by_key_and_inject() -> None:
    class Pair(Task):
        async def execute(self, x: int, scale: int) -> dict[str, int]:
            return {"p": x * scale, "q": -x, "ignored": 0}

    results = await run_flow(Pair(provides=["p", "q"], inject={"scale": 3}), {"x": 2})
    assert results == {"x": 2, "p": 6, "q": -2}


async def test_one_task_instance_in_many_concurrent_flows() -> None:
    @task(provides="y")
    async def slow(x: int) -> int:
        await anyio.sleep(0.01)
        return x * 10

    outputs: dict[int, int] = {}

    async def one(x: int) -> None:
        outputs[x] = (await run_flow(linear("f", slow), {"x": x}))["y"]

    async with anyio.create_task_group() as tg:
        for x in range(20):
            tg.start_soon(one, x)
    assert outputs == {x: x * 10 for x in range(20)}
