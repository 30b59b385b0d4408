"""arq driver (Redis): a no-op job function; the worker in burst mode for the drain.

arq settings are its defaults (``poll_delay`` 0.5 s, ``queue_read_limit`` max(100, max_jobs))
except ``max_jobs``, which is the run's concurrency, and results kept for 60 s.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))

import _common
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

RECORD: str | None = None


async def noop(ctx: dict[str, Any], key: Any) -> Any:
    """The no-op job."""
    return key


async def probe(ctx: dict[str, Any], key: Any) -> Any:
    """The latency probe: records when it started."""
    _common.record_start(RECORD, key)
    return key


def _worker(args: Any, **options: Any) -> Worker:
    return Worker(
        functions=[noop, probe],
        redis_settings=RedisSettings.from_dsn(args.redis_url),
        queue_name=args.prefix,
        max_jobs=args.concurrency,
        keep_result=60,
        handle_signals=False,
        **options,
    )


async def main(args: Any) -> dict[str, Any]:
    """Run one driver command."""
    global RECORD
    if args.command == "version":
        return _common.version_of("arq", "redis")
    if args.command == "serve":
        RECORD = args.record
        worker = _worker(args)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        _common.stop_on_sigterm(lambda: loop.call_soon_threadsafe(stop.set))
        task = asyncio.create_task(worker.main())
        await asyncio.sleep(0.2)
        _common.ready()
        await stop.wait()
        task.cancel()
        await worker.close()
        return {"served": worker.jobs_complete}
    if args.command == "drain":
        worker = _worker(args, burst=True)
        started = time.perf_counter()
        await worker.main()
        seconds = time.perf_counter() - started
        done = worker.jobs_complete
        await worker.close()
        if done != args.n:
            raise RuntimeError(
                f"{done} of {args.n} jobs complete "
                f"({worker.jobs_failed} failed, {worker.jobs_retried} retried)"
            )
        return _common.drain_result(args.n, seconds)
    pool = await create_pool(RedisSettings.from_dsn(args.redis_url), default_queue_name=args.prefix)
    try:
        if args.command == "post":
            started = time.perf_counter()
            for i in range(args.n):
                await pool.enqueue_job("noop", i)
            return _common.post_result(args.n, time.perf_counter() - started)
        if args.command == "latency":

            async def post(key: str) -> None:
                await pool.enqueue_job("probe", key)

            return await _common.latency_async(
                post, args.n, args.record, asyncio.sleep, args.deadline
            )
        raise SystemExit(f"arq driver: {args.command} is not supported")
    finally:
        await pool.aclose()


if __name__ == "__main__":
    _common.emit(asyncio.run(main(_common.parse_args())))
