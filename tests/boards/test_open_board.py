"""``open_board(url)``: scheme to backend, the library's options, and clear errors."""

from __future__ import annotations

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
        ("memory://?lease=-1", "must be positive"),
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
    with pytest.raises(DependencyMissing, match=r"pip install 'aioconductor\[fakemq\]'"):
        open_board("fakemq://host")


def test_the_password_stays_out_of_errors() -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_board("redis://user:hunter2@127.0.0.1:1/0?namespace=Bad")
    assert "hunter2" not in str(caught.value)
