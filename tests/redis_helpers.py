"""Redis test support: an isolated database and namespaces per test run, cleaned up after, and
a private ``redis-server`` to stop, kill and start at will."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import hiredis
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


def clients(client: redis.Redis, name: str, *, subscribers_only: bool = False) -> list[str]:
    """The ids of the connections named ``name`` (only those subscribed to a channel, if asked)."""
    return [
        info["id"]
        for info in client.client_list()
        if info["name"] == name and not (subscribers_only and info.get("sub") in ("0", 0))
    ]


def kill_clients(client: redis.Redis, name: str, *, subscribers_only: bool = False) -> int:
    """Kill the server side of every connection named ``name`` (``CLIENT KILL``), or of those
    subscribed to a channel only; how many were killed."""
    killed = 0
    for client_id in clients(client, name, subscribers_only=subscribers_only):
        with contextlib.suppress(redis.ResponseError):  # it may have gone already
            killed += client.client_kill_filter(_id=client_id)
    return killed


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free loopback port, its append-only file
    fsynced on every write (in ``folder``), to stop, kill and start at will."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("the redis-server binary")
        assert binary is not None  # service_missing() raised if not
        folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._command = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--daemonize", "no", "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        self._process: anyio.abc.Process | None = None

    @property
    def url(self) -> str:
        """The server's URL (database 0), no query options."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server and wait until it answers (its append-only file loaded)."""
        self._process = await anyio.open_process(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            with anyio.fail_after(20):
                while True:
                    try:
                        if await anyio.to_thread.run_sync(client.ping):
                            return
                    except redis.RedisError:
                        # Not listening yet, or up but still loading the append-only file.
                        await anyio.sleep(0.05)
        finally:
            client.close()

    async def stop(self) -> None:
        """Stop the server as an operator would (SIGTERM: it ends every connection and exits)."""
        await self._end(signal.SIGTERM)

    async def crash(self) -> None:
        """Kill the server (SIGKILL): what it acknowledged is on disk, nothing else happens."""
        await self._end(signal.SIGKILL)

    async def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.returncode is None:
                process.send_signal(sig)
            await process.wait()
            await process.aclose()


@contextlib.asynccontextmanager
async def private_redis(folder: Path) -> AsyncIterator[PrivateRedis]:
    """Make and start a private server; it is killed at the end. Skips (fails under CI)
    without the redis-server binary."""
    server = PrivateRedis(folder)
    await server.start()
    try:
        yield server
    finally:
        with anyio.CancelScope(shield=True):  # never leave a server running behind a test
            await server.crash()


class ScriptedRedis:
    """A fake Redis server: answers ``+OK`` to a connection's set-up, and the ``n``-th
    ``EVALSHA`` (from 1) with ``answer(n)``: bytes to send, ``b""`` to send nothing (a reply
    that never comes), or None to close the connection."""

    def __init__(self, answer: Callable[[int], bytes | None]) -> None:
        self.answer = answer
        self.evals = 0

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        """Serve one connection until its client closes it, or ``answer`` says to."""
        reader = hiredis.Reader()
        async with stream:
            while True:
                try:
                    reader.feed(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                while (command := reader.gets()) is not False:
                    if command[0].upper() != b"EVALSHA":
                        await stream.send(b"+OK\r\n")
                        continue
                    self.evals += 1
                    answer = self.answer(self.evals)
                    if answer is None:
                        return
                    if answer:
                        await stream.send(answer)


@contextlib.asynccontextmanager
async def scripted_redis(
    answer: Callable[[int], bytes | None],
) -> AsyncIterator[tuple[ScriptedRedis, int]]:
    """A :class:`ScriptedRedis` answering with ``answer``, listening on a free loopback port
    until the block ends: (server, port)."""
    server = ScriptedRedis(answer)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.serve)
        try:
            yield server, port
        finally:
            tg.cancel_scope.cancel()
