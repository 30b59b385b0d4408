"""``open_board(url)``: scheme to backend, the library's options, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aioconductor import ConfigurationError, DependencyMissing, open_board
from aioconductor.boards import open as board_open
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.boards.sqlite import SqliteJobBoard


def test_schemes_pick_their_backend_and_options_are_read(tmp_path: Path) -> None:
    memory = open_board("memory://?namespace=app&lease=7&poll_interval=0.5&max_payload_bytes=99")
    assert isinstance(memory, MemoryJobBoard)
    assert (memory.namespace, memory.lease, memory.poll_interval) == ("app", 7.0, 0.5)
    assert memory.max_payload_bytes == 99
    sqlite = open_board(f"sqlite:///{tmp_path}/jobs.db?namespace=app")
    assert isinstance(sqlite, SqliteJobBoard) and sqlite.namespace == "app"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/x", "no board backend for URL scheme 'ftp'"),
        ("not a url", "not a board or store URL"),
        ("memory://?namespace=Upper", "namespace 'Upper' is not valid"),
        ("memory://?namespace=a;drop", "is not valid"),
        ("memory://?lease=-1", "lease='-1' must be more than 0"),
        ("memory://?max_payload_bytes=lots", "is not an integer"),
    ],
)
def test_bad_urls_are_clear_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_board(url)


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        board_open._BACKENDS, "fakemq", ("aioconductor.boards.no_such_module", "X", "fakemq")
    )
    with pytest.raises(DependencyMissing, match=r"pip install 'aioconductor-taskflow\[fakemq\]'"):
        open_board("fakemq://host")


def test_the_password_stays_out_of_errors() -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_board("redis://user:hunter2@127.0.0.1:1/0?namespace=Bad")
    assert "hunter2" not in str(caught.value)


# -- URL options (#16, item 10) ----------------------------------------------------------------

#: A URL of every board scheme; none is connected to, so no server is needed.
BOARD_URLS = {
    "memory": "memory://",
    "sqlite": "sqlite:///jobs.db",
    "redis": "redis://127.0.0.1:1/0",
    "postgres": "postgresql://postgres@127.0.0.1:1/test",
    "kafka": "kafka://127.0.0.1:1",
}


@pytest.mark.parametrize("scheme", BOARD_URLS)
@pytest.mark.parametrize("lease", ["inf", "-inf", "nan", "0", "-1", "86400.5", "1e308", "soon"])
def test_a_lease_outside_0_to_a_day_is_refused_naming_the_option(scheme: str, lease: str) -> None:
    """A lease that never expires (``inf``) or is no number of seconds up to a day is refused
    when the board is opened, on every backend, by an error that names the option."""
    with pytest.raises(ConfigurationError, match=rf"option lease='{lease}' "):
        open_board(f"{BOARD_URLS[scheme]}?lease={lease}")


@pytest.mark.parametrize("scheme", BOARD_URLS)
def test_a_lease_of_up_to_a_day_is_taken(scheme: str) -> None:
    assert open_board(f"{BOARD_URLS[scheme]}?lease=86400").lease == 86400.0
    assert open_board(f"{BOARD_URLS[scheme]}?lease=0.25").lease == 0.25


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/x",
        "redis://127.0.0.1:1/-1",
        "redis://127.0.0.1:1/1/2",
        "redis://127.0.0.1:1/0?db=-1",
        "redis://127.0.0.1:1?db=x",
    ],
)
def test_a_redis_database_that_is_no_number_is_refused(url: str) -> None:
    # redis-py alone would open database 0 for /x, and fail at the first command for -1.
    with pytest.raises(ConfigurationError, match=r"bad Redis URL .*(database|db)"):
        open_board(url)


@pytest.mark.parametrize("path", ["", "/", "/0", "/15", "/3/"])
def test_a_redis_database_number_is_taken(path: str) -> None:
    board = open_board(f"redis://127.0.0.1:1{path}")
    assert board._link.client.connection_pool.connection_kwargs.get("db", 0) == int(
        path.strip("/") or 0
    )


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("postgresql://u@127.0.0.1:99999/test", "99999"),
        ("postgresql://u@127.0.0.1:0/test", "0"),
        ("postgresql://u@127.0.0.1:abc/test", "abc"),
        ("postgresql://u@[::1]:70000/test", "70000"),
        ("postgresql://u@h1:5432,h2:65536/test", "65536"),
        ("postgres://u@127.0.0.1/test?port=99999", "99999"),
    ],
)
def test_a_postgres_port_out_of_range_is_one_clear_error(url: str, port: str) -> None:
    # asyncpg alone raised a bare OverflowError at connect.
    with pytest.raises(ConfigurationError, match=rf"port '{port}' is not a number from 1 to"):
        open_board(url)


async def test_a_url_asyncpg_refuses_at_connect_is_a_configuration_error() -> None:
    board = open_board("postgresql://u@127.0.0.1:1/test?sslmode=sometimes&password=hunter2")
    with pytest.raises(ConfigurationError, match=r"bad PostgreSQL URL .*sslmode") as caught:
        await board.connect()
    assert "hunter2" not in str(caught.value) and "password=***" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://postgres@127.0.0.1:99999/test", "port '99999' is not a number"),
        ("redis://127.0.0.1:1/x", "the path must be a database number"),
        ("memory://?lease=inf", "option lease='inf' must be more than 0"),
    ],
)
def test_the_command_line_prints_a_bad_url_as_one_line(url: str, message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aioconductor", "jobs", "--board", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("aioconductor jobs: error: ") and message in done.stderr


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("memory://?bogus=1", "bogus"),
        ("sqlite:///jobs.db?timeout=3", "timeout"),
        ("kafka://127.0.0.1:1?security_protocol=SSL", "security_protocol"),
        ("redis://127.0.0.1:1/0?bogus=1", "bogus"),
        ("redis://127.0.0.1:1/0?ssl_certfile=/x.pem", "ssl_certfile"),  # a rediss:// option
    ],
)
def test_an_unknown_option_is_refused_by_name(url: str, option: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"unknown option.*{option}"):
        open_board(url)


def test_the_drivers_own_options_still_reach_it() -> None:
    board = open_board("redis://127.0.0.1:1/0?socket_timeout=3&client_name=worker&lease=9")
    kwargs = board._link.client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["client_name"], board.lease) == (3.0, "worker", 9.0)
    assert "lease" not in kwargs


def test_a_kafka_url_with_a_password_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError, match="takes no user or password") as caught:
        open_board("kafka://app:hunter2@127.0.0.1:1")
    assert "hunter2" not in str(caught.value)
