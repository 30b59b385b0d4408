"""A gauge of concurrent runs shared by processes: a JSON file updated under an exclusive
``flock``, so the peak it records is exact across every process on the machine."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["enter", "leave", "locked", "read"]


@contextlib.contextmanager
def locked(gauge: str) -> Iterator[dict[str, Any]]:
    """The gauge's state, written back when the block ends, under the gauge's lock."""
    path = Path(gauge)
    with open(f"{gauge}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(path.read_text()) if path.exists() else {}
            state.setdefault("active", {})
            state.setdefault("peak", 0)
            state.setdefault("overlaps", [])
            state.setdefault("runs", {})
            yield state
            path.write_text(json.dumps(state))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def enter(gauge: str, key: str) -> None:
    """A run of ``key`` starts in this process: count it, and note an overlap if another run
    of ``key`` is under way."""
    with locked(gauge) as state:
        active: dict[str, int] = state["active"]
        if key in active:
            state["overlaps"].append(key)
        active[key] = os.getpid()
        state["peak"] = max(state["peak"], len(active))
        state["runs"][key] = state["runs"].get(key, 0) + 1


def leave(gauge: str, key: str) -> None:
    """The run of ``key`` in this process ended."""
    with locked(gauge) as state:
        if state["active"].get(key) == os.getpid():
            del state["active"][key]


def read(gauge: str) -> dict[str, Any]:
    """The gauge's state now."""
    with locked(gauge) as state:
        return dict(state)
