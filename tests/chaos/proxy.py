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
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from types import TracebackType

__all__ = ["ChaosProxy"]

_CHUNK = 65536


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    half_closed: bool = False


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
            while data := await reader.read(_CHUNK):
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

    def _drop(self, pair: _Pair, *, reset: bool) -> None:
        self._pairs.discard(pair)
        for writer in (pair.client, pair.server):
            if reset:
                _abort(writer)
            else:
                writer.close()
