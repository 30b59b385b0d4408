"""`open_store(url)`: the backend by scheme, the namespace, and clear errors for bad URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from aioconductor.errors import ConfigurationError, DependencyMissing
from aioconductor.persistence import open as open_module
from aioconductor.persistence import open_store
from aioconductor.persistence.memory import MemoryStore
from aioconductor.persistence.models import LogBook
from aioconductor.persistence.sqlite import SqliteStore


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

    with pytest.raises(DependencyMissing, match=r"pip install 'aioconductor\[fakedb\]'"):
        open_store("fakedb://localhost/x")
