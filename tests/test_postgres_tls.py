"""PostgreSQL over TLS: the board and the store against a private TLS-only server started here.

The server (``private_postgres(ssl=True)``) holds a certificate signed by a test CA and takes TCP
connections over TLS only, with a password (``hostssl``; ``hostnossl`` is rejected). Opened from
their public URLs, the board and the store:

- with ``sslmode=verify-full&sslrootcert=<the CA>`` work, and the server reports every one of
  their connections (pools and the stream's listener) as TLS;
- trusting another CA, fail to open with ``BackendUnavailable`` that says why, promptly, without
  the password anywhere in the error chain or the logs, and write nothing;
- with ``sslmode=disable``, are refused by the server, and write nothing.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from aioconductor import BackendUnavailable, JobState, open_board, open_store
from aioconductor.persistence.models import AtomDetail, FlowDetail, LogBook
from tests.postgres_helpers import PrivatePostgres, private_postgres

pytestmark = pytest.mark.postgres

OPENERS: dict[str, Callable[..., Any]] = {"board": open_board, "store": open_store}


@pytest.fixture(scope="module")
def tls_server() -> Iterator[PrivatePostgres]:
    """One TLS-only server for the module (initdb takes a few seconds)."""
    with private_postgres(ssl=True) as server:
        yield server


def _url(server: PrivatePostgres, namespace: str, **options: str) -> str:
    """The server's URL for ``namespace``, its connections tagged with the namespace as their
    ``application_name``; options written as a user would (paths not percent-encoded)."""
    query = {"namespace": namespace, "application_name": namespace, **options}
    return f"{server.url}?" + "&".join(f"{key}={value}" for key, value in query.items())


def _ca(server: PrivatePostgres, which: str = "ca") -> str:
    assert server.certificates is not None
    return str(getattr(server.certificates, which))


async def _footprint(server: PrivatePostgres, namespace: str) -> tuple[int, int]:
    """(schemas of ``namespace``, sessions tagged with it), read over the Unix socket."""
    admin = await server.connect_admin()
    try:
        schemas = await admin.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", f"aioc_{namespace}"
        )
        sessions = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", namespace
        )
        return int(schemas), int(sessions)
    finally:
        await admin.close()


async def test_board_and_store_work_over_verified_tls(tls_server: PrivatePostgres) -> None:
    namespace = "tls_verified"
    url = _url(tls_server, namespace, sslmode="verify-full", sslrootcert=_ca(tls_server))
    with anyio.fail_after(60):
        async with (
            open_board(url, poll_interval=0.05) as board,
            open_store(url) as store,
            contextlib.aclosing(board.stream()) as stream,
        ):
            iterator = aiter(stream)
            job = await board.post("over-tls", "f", {"secret": "s3"})
            assert (await anext(iterator)).job_id == job.id
            claim = await board.claim(job.id, "owner")
            done = await board.consume(claim, result={"ok": True})
            assert done.state is JobState.COMPLETE and done.result == {"ok": True}

            atom = AtomDetail(name="step", result={"n": 1})
            flow = FlowDetail(name="flow", atoms={"step": atom})
            book = await store.save_logbook(LogBook(name="over-tls", flows={flow.uuid: flow}))
            again = await store.get_logbook(book.uuid)
            assert again.name == "over-tls"
            assert again.flows[flow.uuid].atoms["step"].result == {"n": 1}

            admin = await tls_server.connect_admin()
            try:
                rows = await admin.fetch(
                    "SELECT s.ssl, s.version FROM pg_stat_activity AS a"
                    " JOIN pg_stat_ssl AS s USING (pid) WHERE a.application_name = $1",
                    namespace,
                )
            finally:
                await admin.close()
    # The board's pool, its stream's listener and the store's pool: all over TLS.
    assert len(rows) >= 3, rows
    assert all(row["ssl"] and row["version"].startswith("TLS") for row in rows), rows
    # What a refused open must not leave behind, this one did leave: the check below can see it.
    assert (await _footprint(tls_server, namespace))[0] == 1


def _refusal_text(error: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """Everything a user could see of a failed open: the whole traceback (chained causes
    included), the error's repr, and the logs."""
    return "".join(traceback.format_exception(error)) + repr(error) + caplog.text


async def _refused_open(
    server: PrivatePostgres,
    kind: str,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    **options: str,
) -> BackendUnavailable:
    """Open a board or store on ``server`` with ``options``: the refusal, checked to have come
    promptly, leak no password, and leave nothing behind."""
    caplog.set_level(logging.DEBUG)
    url = _url(server, namespace, **options)
    with anyio.fail_after(15), pytest.raises(BackendUnavailable) as refused:
        async with OPENERS[kind](url):
            pytest.fail(f"opened a connection with {options}")
    assert server.password and server.password not in _refusal_text(refused.value, caplog)
    assert await _footprint(server, namespace) == (0, 0)
    return refused.value


@pytest.mark.parametrize("kind", OPENERS)
async def test_a_server_signed_by_another_ca_is_refused(
    tls_server: PrivatePostgres, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    other_ca = _ca(tls_server, "other_ca")
    refused = await _refused_open(
        tls_server,
        kind,
        f"tls_other_ca_{kind}",
        caplog,
        sslmode="verify-full",
        sslrootcert=other_ca,
    )
    assert "certificate verify failed" in str(refused)
    assert f"postgres:***@127.0.0.1:{tls_server.port}" in str(refused)  # the server, redacted


@pytest.mark.parametrize("kind", OPENERS)
async def test_a_connection_without_tls_is_refused(
    tls_server: PrivatePostgres, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    refused = await _refused_open(
        tls_server, kind, f"tls_disabled_{kind}", caplog, sslmode="disable"
    )
    assert "no encryption" in str(refused)  # the server's pg_hba.conf refusal
