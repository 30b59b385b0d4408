"""Engine overhead: run N linear flows of ten no-op tasks on the memory store; print flows/s.

Usage: ``python benchmarks/engine_overhead.py [N]`` (N defaults to 2,000).
"""

from __future__ import annotations

import sys
import time

import anyio

from aioconductor.engine import Engine, LinearFlow, Task, linear
from aioconductor.persistence.memory import MemoryStore

TASKS = 10


class Noop(Task):
    """Returns its input: the cheapest task that still binds and provides a value."""

    async def execute(self, x: int) -> int:
        return x


def build() -> LinearFlow:
    return linear("bench", *(Noop(f"t{i}", provides=f"v{i}") for i in range(TASKS)))


async def main(count: int) -> None:
    flow = build()
    async with MemoryStore() as store:
        # Warm up (imports, first compilation paths).
        for _ in range(50):
            await Engine(flow, store=store, inputs={"x": 1}).run()
        started = time.perf_counter()
        for _ in range(count):
            result = await Engine(flow, store=store, inputs={"x": 1}).run()
            assert result.state == "SUCCESS"
        elapsed = time.perf_counter() - started
    print(
        f"{count} flows of {TASKS} tasks in {elapsed:.2f} s: {count / elapsed:,.0f} flows/s "
        f"({elapsed / count / TASKS * 1e6:.1f} us per task)"
    )


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
