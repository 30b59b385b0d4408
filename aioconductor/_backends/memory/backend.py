"""The memory backends: a private one per board or store opened on ``memory://``, and the
process-wide one that every board and store opened on ``memory://NAME`` shares."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Self

from anyio.lowlevel import checkpoint

from aioconductor._backends.memory.jobs import Space
from aioconductor._lifecycle import Lifecycle
from aioconductor._urls import ParsedURL
from aioconductor._urls import refuse_options

if TYPE_CHECKING:
    from aioconductor.persistence.models import LogBook

__all__ = ["InMemory", "MemoryBackend", "open_backend", "url_backend_name"]


class MemoryBackend:
    """What the boards and the stores on one memory backend share: each namespace's jobs and
    each namespace's logbooks."""

    def __init__(self) -> None:
        self.spaces: dict[str, Space] = {}
        self.books: dict[str, dict[str, LogBook]] = {}

    def space(self, namespace: str) -> Space:
        """The jobs of ``namespace``, the boards' part."""
        space = self.spaces.get(namespace)
        if space is None:
            space = self.spaces[namespace] = Space()
        return space

    def logbooks(self, namespace: str) -> dict[str, LogBook]:
        """The logbooks of ``namespace`` by uuid, the stores' part."""
        books = self.books.get(namespace)
        if books is None:
            books = self.books[namespace] = {}
        return books


#: The backends named by ``memory://NAME`` URLs, for as long as the process lives.
_NAMED: dict[str, MemoryBackend] = {}


def open_backend(name: str | None) -> MemoryBackend:
    """The process-wide backend called ``name`` (made on first use), or a private one for None."""
    if name is None:
        return MemoryBackend()
    backend = _NAMED.get(name)
    if backend is None:
        backend = _NAMED[name] = MemoryBackend()
    return backend


def url_backend_name(parsed: ParsedURL, what: str, known: Collection[str]) -> str | None:
    """The NAME of ``memory://NAME``, or None for ``memory://`` (a private backend).

    Args:
        parsed: the URL.
        what: names the board or store in errors.
        known: the options it takes (``namespace`` aside).

    Raises:
        ConfigurationError: the URL holds an option that ``what`` does not take.
    """
    refuse_options(parsed.driver_url, what, known)
    return parsed.driver_url.split("://", 1)[1].split("?", 1)[0].strip("/") or None


class InMemory(Lifecycle):
    """What the memory board and store share: ``memory://`` names a private backend and
    ``memory://NAME`` the shared one called NAME; there is nothing to open or close."""

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """``memory://`` is a private one; ``memory://NAME`` the shared backend NAME."""
        options = cls.url_options | cls.ignored_url_options
        kwargs.setdefault("backend_name", url_backend_name(parsed, f"memory {cls.kind}", options))
        return super().from_url(parsed, **kwargs)

    async def _connect(self) -> None:
        await checkpoint()

    async def _aclose(self) -> None:
        await checkpoint()
