"""saq driver (Redis): a no-op job function; one worker at the run's concurrency.

saq settings are its defaults except ``concurrency``. The drain ends when the worker's
``after_process`` hook (run once a job's status is saved) has counted every job.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))

import _common
from saq import Queue, Worker

RECORD: str | None = None


RAN = [0]


# The argument is not called ``key``: saq's enqueue takes ``key`` as the job's own key.
async def noop(ctx: dict[str, Any], *, value: Any) -> Any:
    """The no-op job."""
    RAN[0] += 1
    return value


async def probe(ctx: dict[str, Any], *, value: Any) -> Any:
    """The latency probe: records when it started."""
    _common.record_start(RECORD, value)
    return value


async def main(args: Any) -> dict[str, Any]:
    """Run one driver command."""
    global RECORD
    if args.command == "version":
        return _common.version_of("saq", "redis")
    queue = Queue.from_url(args.redis_url, name=args.prefix)
    await queue.connect()
    try:
        if args.command == "post":
            started = time.perf_counter()
            for i in range(args.n):
                await queue.enqueue("noop", value=i)
            return _common.post_result(args.n, time.perf_counter() - started)
        if args.command == "latency":

            async def post(key: str) -> None:
                await queue.enqueue("probe", value=key)

            return await _common.latency_async(
                post, args.n, args.record, asyncio.sleep, args.deadline
            )
        if args.command == "serve":
            RECORD = args.record
            worker = Worker(queue, functions=[noop, probe], concurrency=args.concurrency)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            _common.stop_on_sigterm(lambda: loop.call_soon_threadsafe(stop.set))
            task = asyncio.create_task(worker.start())
            await asyncio.sleep(0.2)
            _common.ready()
            await stop.wait()
            await worker.stop()
            task.cancel()
            return {"served": True}
        if args.command == "drain":
            done = _common.Completions(args.n)
            all_done = asyncio.Event()

            async def after(ctx: dict[str, Any]) -> None:
                done.add()
                if done.done >= args.n:
                    all_done.set()

            worker = Worker(
                queue, functions=[noop, probe], concurrency=args.concurrency, after_process=after
            )
            started = time.perf_counter()
            task = asyncio.create_task(worker.start())
            await all_done.wait()
            seconds = done.last - started
            await worker.stop()
            task.cancel()
            if RAN[0] != args.n:
                raise RuntimeError(f"{RAN[0]} of {args.n} jobs ran")
            return _common.drain_result(args.n, seconds)
        raise SystemExit(f"saq driver: {args.command} is not supported")
    finally:
        await queue.disconnect()


if __name__ == "__main__":
    _common.emit(asyncio.run(main(_common.parse_args())))
