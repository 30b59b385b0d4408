"""`Lifecycle`: built from a URL, connect, close and ``async with``, for every board and store."""

from __future__ import annotations

import abc
import warnings
from typing import Any, ClassVar, Self

from aioconductor._urls import ParsedURL
from aioconductor.errors import AioconductorError

__all__ = ["Lifecycle"]


class Lifecycle(abc.ABC):
    """Opened once by :meth:`connect` (or ``async with``), closed for good by :meth:`aclose`.

    Subclasses name the error raised once closed, and implement ``_connect`` and ``_aclose``.
    """

    #: What a call on a closed (or never connected) resource raises.
    closed_error: ClassVar[type[AioconductorError]]
    #: "board" or "store", for messages.
    kind: ClassVar[str]
    #: The library's own URL options it reads, removed before the URL reaches a driver.
    url_options: frozenset[str]
    #: The URL options of its board or store on the same backend, which it does not read:
    #: accepted and ignored (never passed to the driver), so one URL serves a board and a store.
    ignored_url_options: frozenset[str]

    def __init__(self) -> None:
        self._connected = False
        self._closed = False

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build it for a parsed URL (``open_board`` and ``open_store`` call this); not yet
        connected.

        Keyword arguments are passed to the constructor and win over the URL's options.
        """
        kwargs.setdefault("namespace", parsed.namespace)
        return cls(**kwargs)

    async def connect(self) -> None:
        """Open the connections (and create the schema where there is one); idempotent."""
        if self._closed:
            raise self.closed_error()
        if not self._connected:
            await self._connect()
            self._connected = True

    async def aclose(self) -> None:
        """Close for good: later calls raise the closed error. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._closing()
        if self._connected:
            await self._aclose()

    async def close(self) -> None:
        """Deprecated: use :meth:`aclose` (every async resource in this library closes with
        ``aclose``, as anyio's and the standard library's do). Removed in the next release."""
        warnings.warn(
            f"{type(self).__name__}.close() is deprecated: use aclose()",
            DeprecationWarning,
            stacklevel=2,
        )
        await self.aclose()

    @property
    def connected(self) -> bool:
        """Whether it is connected and not closed."""
        return self._connected and not self._closed

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise self.closed_error()
        if not self._connected:
            raise self.closed_error(
                f"the {self.kind} is not connected: use `async with` or await connect()"
            )

    def _closing(self) -> None:  # noqa: B027 - a hook: most subclasses have nothing to do
        """Called once when closing starts, before the backend's ``_aclose``."""

    @abc.abstractmethod
    async def _connect(self) -> None: ...

    @abc.abstractmethod
    async def _aclose(self) -> None: ...
