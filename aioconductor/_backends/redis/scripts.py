"""Sets of Lua scripts: a frozen dataclass whose fields name the scripts, each with its source
(``claim: AsyncScript = field(metadata=lua(CLAIM))``), loaded on a client at once.

Scripts are attributes, not string keys: a misspelt name fails the type check, not a call.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, TypeVar

from redis.asyncio import Redis

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["load", "lua"]

S = TypeVar("S", bound="DataclassInstance")


def lua(source: str) -> dict[str, str]:
    """The metadata of a script's field in a set of scripts: its Lua ``source``."""
    return {"lua": source}


def load(scripts: type[S], client: Redis) -> S:
    """The set ``scripts`` with each script registered on ``client``: sent by hash, and loaded
    again whenever Redis lacks it (after a restart or ``SCRIPT FLUSH``)."""
    register = client.register_script
    return scripts(**{f.name: register(f.metadata["lua"]) for f in dataclasses.fields(scripts)})
