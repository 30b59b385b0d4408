"""TaskFlow driver: the Redis jobboard, memory persistence, a one-task linear flow per job.

As in TaskFlow's jobboard examples, memory persistence lives in one process, so this driver
posts and conducts in the same process (``drain --post``, ``latency --inproc``). Concurrency 1
uses the blocking conductor; more uses the non-blocking conductor with
``max_simultaneous_jobs`` set to the concurrency. Engine: ``serial``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.append(str(Path(__file__).resolve().parent))

import _common
from taskflow import engines, task
from taskflow.conductors import backends as conductor_backends
from taskflow.jobs import backends as job_backends
from taskflow.patterns import linear_flow
from taskflow.persistence import backends as persistence_backends
from taskflow.persistence import models

RECORD: dict[str, str | None] = {"path": None}


class Noop(task.Task):
    """The no-op task."""

    def execute(self, key: Any) -> Any:
        return key


class Probe(task.Task):
    """The latency probe: records when it started."""

    def execute(self, key: Any) -> Any:
        _common.record_start(RECORD["path"], key)
        return key


def noop_flow() -> Any:
    """The one-task linear flow."""
    return linear_flow.Flow("noop").add(Noop("noop"))


def probe_flow() -> Any:
    """The latency probe's flow."""
    return linear_flow.Flow("probe").add(Probe("probe"))


def _setup(args: Any) -> tuple[Any, Any]:
    persistence = persistence_backends.fetch({"connection": "memory://"})
    with contextlib.closing(persistence.get_connection()) as conn:
        conn.upgrade()
    url = urlsplit(args.redis_url)
    board = job_backends.fetch(
        "bench",
        {
            "board": "redis",
            "host": url.hostname or "127.0.0.1",
            "port": url.port or 6379,
            "db": int((url.path or "/0").strip("/") or 0),
            "namespace": args.prefix,
        },
        persistence=persistence,
    )
    board.connect()
    return persistence, board


def _post(persistence: Any, board: Any, factory: Any, key: Any) -> None:
    name = f"job-{key}"
    book = models.LogBook(name)
    detail = models.FlowDetail(name, uuid=book.uuid)
    book.add(detail)
    with contextlib.closing(persistence.get_connection()) as conn:
        conn.save_logbook(book)
    engines.save_factory_details(detail, factory, (), {}, backend=persistence)
    board.post(name, book=book, details={"store": {"key": key}})


def _conductor(args: Any, board: Any, persistence: Any) -> Any:
    if args.concurrency <= 1:
        return conductor_backends.fetch(
            "blocking", "bench", board, persistence=persistence, engine="serial"
        )
    return conductor_backends.fetch(
        "nonblocking",
        "bench",
        board,
        persistence=persistence,
        engine="serial",
        max_simultaneous_jobs=args.concurrency,
    )


def main(args: Any) -> dict[str, Any]:
    """Run one driver command."""
    if args.command == "version":
        return _common.version_of("taskflow", "redis")
    persistence, board = _setup(args)
    try:
        if args.command == "drain":
            started = time.perf_counter()
            for i in range(args.n):
                _post(persistence, board, noop_flow, i)
            post_seconds = time.perf_counter() - started
            conductor = _conductor(args, board, persistence)
            done = _common.Completions(args.n)
            # run(max_dispatches=N) only returns when it tries to dispatch job N + 1, so
            # completions are counted from the conductor's notifications instead.
            conductor.notifier.register("job_consumed", lambda *_a, **_k: done.add())
            runner = threading.Thread(target=conductor.run, daemon=True)
            started = time.perf_counter()
            runner.start()
            if not done.finished.wait(3600):
                raise RuntimeError("the drain did not finish")
            seconds = done.last - started
            conductor.stop()
            runner.join(10)
            return _common.drain_result(args.n, seconds, post_rate=args.n / post_seconds)
        if args.command == "latency":
            RECORD["path"] = str(Path(args.workdir or ".") / "starts.txt")
            conductor = _conductor(args, board, persistence)
            runner = threading.Thread(target=conductor.run, daemon=True)
            runner.start()
            try:
                return _common.latency_sync(
                    lambda key: _post(persistence, board, probe_flow, key),
                    args.n,
                    RECORD["path"],
                    args.deadline,
                )
            finally:
                conductor.stop()
                runner.join(10)
        raise SystemExit(f"taskflow driver: {args.command} is not supported (in-process only)")
    finally:
        board.close()


if __name__ == "__main__":
    _common.emit(main(_common.parse_args()))
