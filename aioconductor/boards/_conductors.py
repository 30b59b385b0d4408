"""The registry of live conductors, written once for every board: who is alive, with
heartbeats (``register_conductor``, ``unregister_conductor``, ``conductors``)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from aioconductor._payload import encode_json
from aioconductor._payload import finite_seconds
from aioconductor._payload import validate_name
from aioconductor.boards._part import BoardPart
from aioconductor.errors import PayloadError
from aioconductor.models import ConductorInfo

__all__ = ["ConductorRegistry"]

#: The most a conductor's meta may weigh, as JSON.
MAX_META_BYTES = 64 * 1024


class ConductorRegistry(BoardPart):
    """The conductor verbs of :class:`~aioconductor.boards.base.JobBoard`."""

    async def register_conductor(
        self,
        owner: str,
        name: str,
        *,
        ttl: float,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Record (or refresh) that conductor ``owner`` is alive for ``ttl`` more seconds."""
        self._check_open()
        validate_name("owner", owner)
        validate_name("conductor name", name)
        encode_json("the conductor's meta", meta or {}, MAX_META_BYTES)
        ttl = finite_seconds("ttl", ttl)
        if ttl <= 0:
            raise PayloadError(f"ttl must be positive, got {ttl}")
        await self._register_conductor(owner, name, float(ttl), dict(meta or {}))

    async def unregister_conductor(self, owner: str) -> None:
        """Forget conductor ``owner`` (it stopped)."""
        self._check_open()
        await self._unregister_conductor(owner)

    async def conductors(self) -> list[ConductorInfo]:
        """The conductors alive now (heartbeat within their ttl), by name."""
        self._check_open()
        infos = await self._conductors()
        return sorted(infos, key=lambda info: (info.name, info.owner))

    # -- what the board gives ------------------------------------------------------------------

    @abc.abstractmethod
    async def _register_conductor(
        self, owner: str, name: str, ttl: float, meta: dict[str, Any]
    ) -> None: ...

    @abc.abstractmethod
    async def _unregister_conductor(self, owner: str) -> None: ...

    @abc.abstractmethod
    async def _conductors(self) -> list[ConductorInfo]: ...
