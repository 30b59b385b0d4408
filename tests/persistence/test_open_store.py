"""`open_store(url)`: the backend by scheme, the namespace, and clear errors for bad URLs."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aioconductor import open_board
from aioconductor.boards import open as board_open
from aioconductor.errors import ConfigurationError, DependencyMissing
from aioconductor.persistence import open as open_module
from aioconductor.persistence import open_store
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import LogBook
from aioconductor.persistence.sqlite import SqliteStore
from tests.backends import Space, params


def test_memory_url() -> None:
    store = open_store("memory://?namespace=app_1")

    assert type(store) is MemoryStore
    assert store.namespace == "app_1"
    assert open_store("memory://").namespace == "default"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///progress.db", "progress.db"),
        ("sqlite:///sub/dir/progress.db?namespace=ns", "sub/dir/progress.db"),
        ("sqlite:////abs/path/progress.db", "/abs/path/progress.db"),
        ("sqlite:///with%20space.db", "with space.db"),
        ("sqlite://", ":memory:"),
        ("sqlite://?namespace=ns", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite://:memory:", ":memory:"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    store = open_store(url)

    assert type(store) is SqliteStore
    assert store.path == path
    assert store.namespace == ("ns" if "namespace=ns" in url else "default")


def test_keyword_arguments_override_the_url(tmp_path: Path) -> None:
    store = open_store("sqlite:///ignored.db?namespace=from_url", path=tmp_path / "x.db")
    assert isinstance(store, SqliteStore)
    assert (store.path, store.namespace) == (str(tmp_path / "x.db"), "from_url")

    assert open_store("memory://?namespace=from_url", namespace="kw").namespace == "kw"


async def test_a_relative_sqlite_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_store("sqlite:///rel.db") as store:
        await store.save_logbook(LogBook(name="x"))

    assert (tmp_path / "rel.db").is_file()


async def test_an_in_memory_sqlite_store_works() -> None:
    async with open_store("sqlite://") as store:
        book = await store.save_logbook(LogBook(name="x"))
        assert await store.get_logbook(book.uuid) == book


@pytest.mark.parametrize(
    "url",
    [
        "memory://?namespace=Bad-Name",
        "memory://?namespace=",
        f"sqlite:///x.db?namespace={'n' * 49}",
    ],
)
def test_a_bad_namespace_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        open_store(url)


def test_a_bad_namespace_argument_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        MemoryStore(namespace="Not Valid")
    with pytest.raises(ConfigurationError, match="namespace"):
        SqliteStore(":memory:", namespace="")


@pytest.mark.parametrize("url", ["nosuch://host/db", "not a url", "sqlite:///x.db?timeout=3"])
def test_an_unknown_scheme_or_option_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(url)


def test_an_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"memory://.*sqlite://"):
        open_store("nosuch://")


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        open_module._BACKENDS,
        "fakedb",
        ("aioconductor.persistence._no_such_module", "FakeStore", "fakedb"),
    )

    with pytest.raises(DependencyMissing, match=r"pip install 'aioconductor-taskflow\[fakedb\]'"):
        open_store("fakedb://localhost/x")


# -- one URL for a board and a store (#16, item 10) ----------------------------------------------


def _class(table: dict[str, tuple[str, str, str | None]], scheme: str) -> type:
    import importlib

    module, name, _ = table[scheme]
    cls: type = getattr(importlib.import_module(module), name)
    return cls


@pytest.mark.parametrize("scheme", sorted(open_module._BACKENDS))
def test_every_store_option_is_a_board_option_and_back(scheme: str) -> None:
    """What one of them reads, the other reads or ignores: neither refuses nor passes to its
    driver an option of the other, so one URL serves both."""
    board = _class(board_open._BACKENDS, scheme)
    store = _class(open_module._BACKENDS, scheme)
    assert store.url_options <= board.url_options | board.ignored_url_options
    assert board.url_options <= store.url_options | store.ignored_url_options


#: A valid value for every option a board or store reads (a new option needs one here).
OPTION_VALUES = {
    "lease": "7",
    "poll_interval": "0.5",
    "max_payload_bytes": "4096",
    "pool_min": "1",
    "pool_max": "2",
}


@pytest.mark.parametrize("space", params(store=True), indirect=True)
async def test_one_url_with_every_option_serves_the_board_and_the_store(space: Space) -> None:
    """``aioconductor migrate`` opens the store on the board's URL: every store takes the
    board's options and ignores them (Redis raised redis-py's TypeError, PostgreSQL sent
    ``lease`` to the server, SQLite refused ``poll_interval``), and every board takes the
    store's."""
    base = space.board_url(f"one_url_{uuid.uuid4().hex[:8]}")
    scheme = urlsplit(base).scheme
    board_cls = _class(board_open._BACKENDS, scheme)
    store_cls = _class(open_module._BACKENDS, scheme)
    names = (board_cls.url_options | store_cls.url_options) - {"schema"}
    url = base + "".join(f"&{name}={OPTION_VALUES[name]}" for name in sorted(names))
    async with open_board(url) as board, open_store(url) as store:
        assert (board.lease, board.poll_interval, board.max_payload_bytes) == (7, 0.5, 4096)
        job = await board.post("j", "f")
        book = await store.save_logbook(LogBook(name=job.id))
        assert (await store.get_logbook(book.uuid)).name == job.id
        if scheme == "postgresql":
            assert store.schema == board.schema and store._link.pool_max == 2


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("memory://?bogus=1", "bogus"),
        ("memory://shared?topic=t", "topic"),  # a Kafka board's option: no memory store takes it
        ("sqlite:///x.db?timeout=3", "timeout"),
        ("sqlite://?schema=s", "schema"),  # PostgreSQL's, not SQLite's
        ("redis://127.0.0.1:1/0?bogus=1", "bogus"),
    ],
)
def test_an_unknown_option_is_refused_by_name(url: str, option: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"unknown option.*{option}"):
        open_store(url)
