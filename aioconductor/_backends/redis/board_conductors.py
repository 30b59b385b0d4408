"""The Redis board's conductor registry: ``conductors`` (a sorted set of owners by when their
registration expires) and ``conductor:<owner>`` (a hash per conductor), under the namespace's
prefix. Registering runs the ``REGISTER`` script of
:mod:`aioconductor._backends.redis.board_scripts`; every call here may be sent again when its
reply is lost (registering or forgetting twice changes nothing)."""

from __future__ import annotations

import math
from typing import Any, cast

from redis.commands.core import AsyncScript

from aioconductor._backends.redis import board_records as records
from aioconductor._backends.redis.link import RedisLink
from aioconductor._backends.redis.link import fmt_time
from aioconductor._payload import encode_json
from aioconductor.models import ConductorInfo

__all__ = ["Conductors"]


class Conductors:
    """``_register_conductor``, ``_unregister_conductor`` and ``_conductors`` of one board's
    namespace.

    Args:
        link: the board's link to Redis.
        prefix: the namespace's key prefix (hash tag included).
        register: the loaded ``REGISTER`` script.
    """

    def __init__(self, link: RedisLink, prefix: str, register: AsyncScript) -> None:
        self._link = link
        self._prefix = prefix
        self._register = register

    async def register(self, owner: str, name: str, ttl: float, meta: dict[str, Any]) -> None:
        """Register (or refresh) ``owner`` for ``ttl`` seconds of the server's clock."""
        ttl = min(max(ttl, 0.0), 10 * 365 * 86400.0) if math.isfinite(ttl) else 0.0
        keys = [self._prefix + "conductors", f"{self._prefix}conductor:{owner}"]
        data = encode_json("the conductor's meta", meta, 64 * 1024).decode("utf-8")
        script = self._register
        args = [owner, name, fmt_time(ttl), data]
        await self._link.read("register_conductor", lambda: script(keys=keys, args=args))

    async def unregister(self, owner: str) -> None:
        """Forget ``owner``."""

        async def forget() -> None:
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.delete(f"{self._prefix}conductor:{owner}")
                pipe.zrem(self._prefix + "conductors", owner)
                await pipe.execute()

        await self._link.read("unregister_conductor", forget)

    async def alive(self, now: float) -> list[ConductorInfo]:
        """The conductors whose registration expires after ``now`` (the server's clock)."""

        async def owners() -> list[str]:
            key = self._prefix + "conductors"
            return cast(list[str], await self._link.client.zrangebyscore(key, f"({now}", "+inf"))

        found_owners = await self._link.read("conductors", owners)

        async def fetch() -> list[Any]:
            async with self._link.client.pipeline(transaction=False) as pipe:
                for owner in found_owners:
                    pipe.hgetall(f"{self._prefix}conductor:{owner}")
                return await pipe.execute()

        found = await self._link.read("conductors", fetch) if found_owners else []
        return [
            records.conductor_from_hash(fields)
            for fields in found
            if fields and float(fields["expires_at"]) > now
        ]
