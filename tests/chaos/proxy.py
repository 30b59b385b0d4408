"""A small TCP proxy that injects network faults between conductors and their server.

``ChaosProxy(("127.0.0.1", 6379))`` listens on a free loopback port and forwards every connection
to the server. While it runs, a test can:

- ``latency = 0.05``: delay every chunk, both ways, by that many seconds (order kept);
- ``blackhole()`` / ``heal()``: stop forwarding (bytes wait in the kernel's buffers and new
  connections wait to be connected, as in a network partition), then carry on;
- ``reset()``: end every open connection with a TCP RST, both ways;
- ``half_close()``: send FIN to every client and drop what the server sends them afterwards,
  while the client's side stays open (the server seems to have hung up, the socket lingers).

Loopback only, and the proxy is closed by ``async with``.

A Kafka client connects to the addresses the broker advertises, not to the one it bootstrapped
from: :class:`KafkaChaosProxy` rewrites them (in Metadata and FindCoordinator responses) to its
own, so a client that bootstrapped through it stays behind it while other clients of the same
broker reach it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["ChaosProxy", "KafkaChaosProxy"]

_CHUNK = 65536


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    half_closed: bool = False
    #: Requests sent and not answered yet (for :class:`KafkaChaosProxy`): correlation id ->
    #: (api key, api version).
    requests: dict[int, tuple[int, int]] = field(default_factory=dict)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ChaosProxy:
    """A fault-injecting TCP proxy in front of ``upstream`` (see the module docstring)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.latency = 0.0
        self.port = 0
        self.connections = 0
        self.resets = 0
        #: Answers that would send a client around the proxy (a Kafka broker address it could not
        #: rewrite): a fault test whose victim escaped the proxy proves nothing.
        self.leaks = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ChaosProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            self._drop(pair, reset=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- faults ----------------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Stop forwarding anything, and connecting anyone, until :meth:`heal`."""
        self._flowing.clear()

    def heal(self) -> None:
        """End a blackhole and any latency."""
        self.latency = 0.0
        self._flowing.set()

    def reset(self) -> int:
        """RST every open connection, both ways; returns how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair, reset=True)
        self.resets += len(pairs)
        return len(pairs)

    def half_close(self) -> int:
        """FIN to every client, and silence from the server to it; returns how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.half_closed = True
            with contextlib.suppress(OSError, RuntimeError):
                pair.client.write_eof()
        return len(pairs)

    # -- forwarding ------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        self.connections += 1
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, pair, upstream=True)),
            asyncio.create_task(self._pump(up_reader, writer, pair, upstream=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: _Pair,
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await self._read(reader, pair, upstream=upstream):
                await self._flowing.wait()
                if self.latency:
                    await asyncio.sleep(self.latency)
                if pair.half_closed and not upstream:
                    continue  # the client was told the server hung up
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            if pair in self._pairs:
                self._drop(pair, reset=False)

    async def _read(self, reader: asyncio.StreamReader, pair: _Pair, *, upstream: bool) -> bytes:
        """The next bytes to forward (b"" at the end)."""
        return await reader.read(_CHUNK)

    def _drop(self, pair: _Pair, *, reset: bool) -> None:
        self._pairs.discard(pair)
        for writer in (pair.client, pair.server):
            if reset:
                _abort(writer)
            else:
                writer.close()


# -- Kafka ---------------------------------------------------------------------------------------

_METADATA, _FIND_COORDINATOR = 3, 10


class _Cursor:
    """Reads a Kafka response body, keeping what it read."""

    def __init__(self, body: bytes, pos: int) -> None:
        self.body = body
        self.pos = pos

    def take(self, size: int) -> bytes:
        chunk = self.body[self.pos : self.pos + size]
        if len(chunk) != size:
            raise ValueError("a truncated Kafka response")
        self.pos += size
        return chunk

    def int16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def string(self) -> bytes:
        """A (nullable) STRING, length prefix included."""
        size = self.int16()
        return struct.pack(">h", size) + (self.take(size) if size > 0 else b"")


class KafkaChaosProxy(ChaosProxy):
    """A :class:`ChaosProxy` in front of one Kafka broker that keeps its clients behind it.

    It forwards whole frames, and in the answers to Metadata (versions 0 to 8) and
    FindCoordinator (0 to 2, the non-flexible versions: aiokafka uses Metadata 0 to 5 and
    FindCoordinator 0 and 1) it replaces every broker's host and port with its own. An answer it
    cannot rewrite (a newer version) is counted in :attr:`leaks`.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream)
        #: Broker addresses rewritten to the proxy's.
        self.rewritten = 0

    async def _read(self, reader: asyncio.StreamReader, pair: _Pair, *, upstream: bool) -> bytes:
        try:
            head = await reader.readexactly(4)
            body = await reader.readexactly(int.from_bytes(head, "big", signed=True))
        except asyncio.IncompleteReadError:
            return b""
        if upstream:
            api_key, version, correlation = struct.unpack_from(">hhi", body)
            if api_key in (_METADATA, _FIND_COORDINATOR):
                pair.requests[correlation] = (api_key, version)
            return head + body
        (correlation,) = struct.unpack_from(">i", body)
        request = pair.requests.pop(correlation, None)
        if request is None:
            return head + body
        try:
            rewritten = self._rewrite(body, *request)
        except (ValueError, struct.error):
            rewritten = None
        if rewritten is None:
            self.leaks += 1
            return head + body
        return len(rewritten).to_bytes(4, "big") + rewritten

    def _address(self) -> bytes:
        host = b"127.0.0.1"  # where the proxy listens
        return struct.pack(">h", len(host)) + host + struct.pack(">i", self.port)

    def _rewrite(self, body: bytes, api_key: int, version: int) -> bytes | None:
        """``body`` with the broker addresses replaced by the proxy's; None if the version is
        not one this proxy can parse.

        Raises:
            ValueError: the body is shorter than its fields say.
        """
        read = _Cursor(body, 4)  # past the correlation id (response header v0)
        out = [body[:4]]
        if api_key == _METADATA:
            if version > 8:
                return None
            if version >= 3:
                out.append(read.take(4))  # throttle_time_ms
            count = read.int32()
            out.append(struct.pack(">i", count))
            for _ in range(max(count, 0)):
                out.append(read.take(4))  # node_id
                read.string()  # host
                read.take(4)  # port
                out.append(self._address())
                if version >= 1:
                    out.append(read.string())  # rack
                self.rewritten += 1
        else:
            if version > 2:
                return None
            if version >= 1:
                out.append(read.take(4))  # throttle_time_ms
            error = read.take(2)
            out.append(error)
            if version >= 1:
                out.append(read.string())  # error_message
            out.append(read.take(4))  # node_id
            host = read.string()
            port = read.take(4)
            if struct.unpack(">h", error)[0] == 0:
                out.append(self._address())
                self.rewritten += 1
            else:
                out += [host, port]
        out.append(body[read.pos :])
        return b"".join(out)
