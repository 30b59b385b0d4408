"""taskiq driver (Redis, taskiq-redis ``ListQueueBroker``): a no-op task; one in-process
``Receiver`` with ``max_async_tasks`` set to the run's concurrency.

Completion is counted by a middleware's ``post_save`` hook (after the result is handled).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))

import _common
from taskiq import TaskiqMiddleware
from taskiq.receiver import Receiver
from taskiq_redis import ListQueueBroker

ARGS = _common.parse_args()
broker = ListQueueBroker(ARGS.redis_url, queue_name=ARGS.prefix)
DONE = _common.Completions(ARGS.n)


class _Count(TaskiqMiddleware):
    def post_save(self, message: Any, result: Any) -> None:
        if message.task_name == "noop":
            DONE.add()


broker.add_middlewares(_Count())


@broker.task(task_name="noop")
async def noop(key: Any) -> Any:
    """The no-op job."""
    return key


@broker.task(task_name="probe")
async def probe(key: Any) -> Any:
    """The latency probe: records when it started."""
    _common.record_start(ARGS.record, key)
    return key


async def _work(args: Any, until: asyncio.Event) -> asyncio.Task[None]:
    broker.is_worker_process = True
    await broker.startup()
    receiver = Receiver(broker, max_async_tasks=args.concurrency, run_startup=False)
    return asyncio.create_task(receiver.listen(until))


async def main(args: Any) -> dict[str, Any]:
    """Run one driver command."""
    if args.command == "version":
        return _common.version_of("taskiq", "taskiq-redis", "redis")
    if args.command in {"post", "latency"}:
        await broker.startup()
        try:
            if args.command == "post":
                started = time.perf_counter()
                for i in range(args.n):
                    await noop.kiq(i)
                return _common.post_result(args.n, time.perf_counter() - started)

            async def post(key: str) -> None:
                await probe.kiq(key)

            return await _common.latency_async(
                post, args.n, args.record, asyncio.sleep, args.deadline
            )
        finally:
            await broker.shutdown()
    stop = asyncio.Event()
    if args.command == "drain":
        started = time.perf_counter()
        task = await _work(args, stop)
        await asyncio.to_thread(DONE.finished.wait, 3600)
        seconds = DONE.last - started
        stop.set()
        task.cancel()
        return _common.drain_result(args.n, seconds)
    if args.command == "serve":
        loop = asyncio.get_running_loop()
        _common.stop_on_sigterm(lambda: loop.call_soon_threadsafe(stop.set))
        task = await _work(args, stop)
        await asyncio.sleep(0.3)
        _common.ready()
        await stop.wait()
        task.cancel()
        return {"served": True}
    raise SystemExit(f"taskiq driver: {args.command} is not supported")


if __name__ == "__main__":
    _common.emit(asyncio.run(main(ARGS)))
