"""pgqueuer driver (PostgreSQL): a no-op entrypoint; ``QueueManager.run(mode=drain)``.

pgqueuer settings are its defaults (``batch_size`` 10) except the concurrency: the no-op
entrypoint's ``concurrency_limit`` and (from 20 up) ``max_concurrent_tasks``. Its schema is
installed into the run's own database on first use.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))

import _common
import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.types import QueueExecutionMode


async def _install(queries: Queries) -> None:
    if not await queries.has_table("pgqueuer"):
        await queries.install()


async def main(args: Any) -> dict[str, Any]:
    """Run one driver command."""
    if args.command == "version":
        return _common.version_of("pgqueuer", "asyncpg")
    conn = await asyncpg.connect(args.postgres_url)
    driver = AsyncpgDriver(conn)
    queries = Queries(driver)
    try:
        await _install(queries)
        if args.command == "post":
            started = time.perf_counter()
            for i in range(args.n):
                await queries.enqueue("noop", str(i).encode())
            return _common.post_result(args.n, time.perf_counter() - started)
        if args.command == "latency":

            async def post(key: str) -> None:
                await queries.enqueue("probe", key.encode())

            return await _common.latency_async(
                post, args.n, args.record, asyncio.sleep, args.deadline
            )
        qm = QueueManager(queries=queries)
        done = _common.Completions(args.n)

        # pgqueuer wants max_concurrent_tasks >= 2 x batch_size (10): below that, the
        # entrypoint's own concurrency_limit caps the run.
        cap = args.concurrency if args.concurrency >= 20 else None

        @qm.entrypoint("noop", concurrency_limit=args.concurrency)
        async def noop(job: Any) -> None:
            done.add()

        @qm.entrypoint("probe")
        async def probe(job: Any) -> None:
            _common.record_start(args.record, job.payload.decode())

        if args.command == "drain":
            started = time.perf_counter()
            await qm.run(mode=QueueExecutionMode.drain, max_concurrent_tasks=cap)
            seconds = time.perf_counter() - started
            if done.done != args.n:
                raise RuntimeError(f"{done.done} of {args.n} jobs ran")
            return _common.drain_result(args.n, seconds)
        if args.command == "serve":
            loop = asyncio.get_running_loop()
            _common.stop_on_sigterm(lambda: loop.call_soon_threadsafe(qm.shutdown.set))
            task = asyncio.create_task(qm.run(max_concurrent_tasks=cap))
            await asyncio.sleep(0.5)
            _common.ready()
            await task
            return {"served": True}
        raise SystemExit(f"pgqueuer driver: {args.command} is not supported")
    finally:
        await conn.close()


if __name__ == "__main__":
    _common.emit(asyncio.run(main(_common.parse_args())))
