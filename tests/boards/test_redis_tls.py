"""``rediss://``: the Redis board over TLS, against a private TLS redis-server started here."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import anyio
import pytest

from aioconductor import BackendUnavailable, JobState, open_board, open_store
from tests.conftest import service_missing
from tests.tls_helpers import Certificates, make_certificates

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Certificates]]:
    """A redis-server with TLS only, on a free loopback port; yields (port, its certificates)."""
    if not shutil.which("redis-server"):
        service_missing("redis-server (for a TLS Redis)")
    folder = tmp_path_factory.mktemp("tls")
    certs = make_certificates(folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        "redis-server", "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port),
        "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no", "--dir", str(folder),
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None:
                service_missing("a redis-server built with TLS")
            time.sleep(0.05)
        yield port, certs
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_board_and_store_over_tls(tls_redis: tuple[int, Certificates]) -> None:
    port, certs = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs.ca}&namespace=tls"
    async with open_board(url) as board, open_store(url) as store:
        job = await board.post("over-tls", "f", {"secret": "s3"})
        claim = await board.claim(job.id, "owner")
        done = await board.consume(claim, result={"ok": True})
        assert done.state is JobState.COMPLETE and done.result == {"ok": True}
        assert [b async for b in store.logbooks()] == []


async def test_a_server_signed_by_another_ca_is_refused(
    tls_redis: tuple[int, Certificates],
) -> None:
    port, certs = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs.other_ca}&namespace=tls"
    with anyio.fail_after(30), pytest.raises(BackendUnavailable):
        async with open_board(url) as board:
            await board.post("never", "f")


async def test_plain_redis_to_a_tls_port_fails_clearly(tls_redis: tuple[int, Certificates]) -> None:
    port, _ = tls_redis
    with anyio.fail_after(30), pytest.raises(BackendUnavailable):
        async with open_board(f"redis://127.0.0.1:{port}/0?namespace=tls") as board:
            await board.post("never", "f")
