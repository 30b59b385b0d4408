"""``rediss://``: the Redis board over TLS, against a private TLS redis-server started here."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aioconductor import BackendUnavailable, JobState, open_board, open_store
from tests.conftest import service_missing

pytestmark = pytest.mark.redis


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A redis-server with TLS only, on a free loopback port; yields (port, folder of certs)."""
    if not (shutil.which("redis-server") and shutil.which("openssl")):
        service_missing("redis-server and openssl (for a TLS Redis)")
    folder = tmp_path_factory.mktemp("tls")
    _make_ca(folder, "ca")
    _make_ca(folder, "other-ca")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr", cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "ext.cnf", cwd=folder,
    )  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        "redis-server", "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port),
        "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
        "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
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
        yield port, folder
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_board_and_store_over_tls(tls_redis: tuple[int, Path]) -> None:
    port, folder = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={folder / 'ca.crt'}&namespace=tls"
    async with open_board(url) as board, open_store(url) as store:
        job = await board.post("over-tls", "f", {"secret": "s3"})
        claim = await board.claim(job.id, "owner")
        done = await board.consume(claim, result={"ok": True})
        assert done.state is JobState.COMPLETE and done.result == {"ok": True}
        assert [b async for b in store.logbooks()] == []


async def test_a_server_signed_by_another_ca_is_refused(tls_redis: tuple[int, Path]) -> None:
    port, folder = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={folder / 'other-ca.crt'}&namespace=tls"
    with anyio.fail_after(30), pytest.raises(BackendUnavailable):
        async with open_board(url) as board:
            await board.post("never", "f")


async def test_plain_redis_to_a_tls_port_fails_clearly(tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    with anyio.fail_after(30), pytest.raises(BackendUnavailable):
        async with open_board(f"redis://127.0.0.1:{port}/0?namespace=tls") as board:
            await board.post("never", "f")
