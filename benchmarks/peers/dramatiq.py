"""dramatiq driver (Redis): a no-op actor; one worker process with ``worker_threads`` set to
the run's concurrency (dramatiq's concurrency is threads).

Completion is counted by a middleware's ``after_process_message`` hook.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))

import _common
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

ARGS = _common.parse_args()
broker = RedisBroker(url=ARGS.redis_url, namespace=ARGS.prefix)
dramatiq.set_broker(broker)
DONE = _common.Completions(ARGS.n)


class _Count(Middleware):
    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if message.actor_name == "noop":
            DONE.add()


broker.add_middleware(_Count())


@dramatiq.actor(queue_name="bench")
def noop(key: Any) -> Any:
    """The no-op job."""
    return key


@dramatiq.actor(queue_name="bench")
def probe(key: Any) -> Any:
    """The latency probe: records when it started."""
    _common.record_start(ARGS.record, key)
    return key


def main(args: Any) -> dict[str, Any]:
    """Run one driver command."""
    if args.command == "version":
        return _common.version_of("dramatiq", "redis")
    if args.command == "post":
        started = time.perf_counter()
        for i in range(args.n):
            noop.send(i)
        return _common.post_result(args.n, time.perf_counter() - started)
    if args.command == "latency":
        return _common.latency_sync(lambda key: probe.send(key), args.n, args.record, args.deadline)
    worker = dramatiq.Worker(broker, worker_threads=args.concurrency)
    if args.command == "drain":
        started = time.perf_counter()
        worker.start()
        if not DONE.finished.wait(3600):
            raise RuntimeError("the drain did not finish")
        seconds = DONE.last - started
        worker.stop()
        return _common.drain_result(args.n, seconds)
    if args.command == "serve":
        stop = threading.Event()
        _common.stop_on_sigterm(stop.set)
        worker.start()
        time.sleep(0.5)
        _common.ready()
        stop.wait()
        worker.stop()
        return {"served": True}
    raise SystemExit(f"dramatiq driver: {args.command} is not supported")


if __name__ == "__main__":
    _common.emit(main(ARGS))
