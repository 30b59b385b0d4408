"""procrastinate driver (PostgreSQL, psycopg 3): a no-op task; ``run_worker_async(wait=False)``
for the drain (the worker returns once the queue is empty), LISTEN/NOTIFY for latency.

procrastinate settings are its defaults except ``concurrency``. Its schema is applied to the
run's own database on first use.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))

import _common
import procrastinate

RECORD: dict[str, str | None] = {"path": None}


def _app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(key: Any) -> Any:
        return key

    @app.task(name="probe")
    async def probe(key: Any) -> Any:
        _common.record_start(RECORD["path"], key)
        return key

    return app


async def main(args: Any) -> dict[str, Any]:
    """Run one driver command."""
    if args.command == "version":
        return _common.version_of("procrastinate", "psycopg")
    logging.basicConfig(level=logging.WARNING)
    app = _app(args.postgres_url)
    async with app.open_async():
        if args.command in {"post", "latency", "serve", "drain"}:
            row = await app.connector.execute_query_one_async(
                "SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS present"
            )
            if not row["present"]:
                await app.schema_manager.apply_schema_async()
        if args.command == "post":
            task = app.tasks["noop"]
            started = time.perf_counter()
            for i in range(args.n):
                await task.defer_async(key=i)
            return _common.post_result(args.n, time.perf_counter() - started)
        if args.command == "latency":
            probe = app.tasks["probe"]

            async def post(key: str) -> None:
                await probe.defer_async(key=key)

            return await _common.latency_async(
                post, args.n, args.record, asyncio.sleep, args.deadline
            )
        if args.command == "drain":
            started = time.perf_counter()
            await app.run_worker_async(concurrency=args.concurrency, wait=False)
            seconds = time.perf_counter() - started
            row = await app.connector.execute_query_one_async(
                "SELECT count(*) AS done FROM procrastinate_jobs WHERE status = 'succeeded'"
            )
            if row["done"] != args.n:
                raise RuntimeError(f"{row['done']} of {args.n} jobs succeeded")
            return _common.drain_result(args.n, seconds)
        if args.command == "serve":
            RECORD["path"] = args.record
            worker = asyncio.create_task(
                app.run_worker_async(concurrency=args.concurrency, install_signal_handlers=False)
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            _common.stop_on_sigterm(lambda: loop.call_soon_threadsafe(stop.set))
            await asyncio.sleep(0.5)
            _common.ready()
            await stop.wait()
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
            return {"served": True}
    raise SystemExit(f"procrastinate driver: {args.command} is not supported")


if __name__ == "__main__":
    _common.emit(asyncio.run(main(_common.parse_args())))
