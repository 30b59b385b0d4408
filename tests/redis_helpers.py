"""Redis test support: an isolated database and namespaces per test run, cleaned up after."""

from __future__ import annotations

import contextlib
import uuid
from urllib.parse import urlsplit, urlunsplit

import redis

from tests.conftest import REDIS_URL, service_missing

#: The database the tests use, so they never touch an application's keys in DB 0.
TEST_DB = 9


def redis_url(db: int = TEST_DB) -> str:
    """The test server's URL on database ``db`` (``AIOCONDUCTOR_REDIS_URL`` or the default)."""
    parts = urlsplit(REDIS_URL)
    return urlunsplit(parts._replace(path=f"/{db}"))


def require_redis() -> redis.Redis:
    """A sync client on the test database; skips (fails under CI) when Redis is unreachable."""
    client = redis.Redis.from_url(redis_url(), socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        client.close()
        service_missing(f"Redis at {urlsplit(REDIS_URL).hostname}")
    return client


def unique(namespace: str) -> str:
    """``namespace`` with a suffix unique to this run, so parallel runs never share keys."""
    return f"{namespace}_{uuid.uuid4().hex[:10]}"


def delete_namespaces(client: redis.Redis, namespaces: list[str]) -> None:
    """Delete every key of the given namespaces (both board and store keys)."""
    for namespace in namespaces:
        keys = list(client.scan_iter(match=f"aioc:{{{namespace}}}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])


def kill_clients(client: redis.Redis, name: str) -> int:
    """Kill the server side of every connection named ``name`` (``CLIENT KILL``); how many."""
    killed = 0
    for info in client.client_list():
        if info["name"] == name:
            with contextlib.suppress(Exception):  # it may have gone already
                killed += client.client_kill_filter(_id=info["id"])
    return killed
