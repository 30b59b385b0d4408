"""Validation and JSON encoding of what producers and owners hand to a board.

Everything a board stores is JSON. Nothing is pickled or evaluated, so a board holds data, never
code. A value is refused here, before any backend is touched, so a refusal changes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aioconductor.errors import PayloadError

__all__ = ["MAX_NAME_LENGTH", "encode_json", "validate_name"]

MAX_NAME_LENGTH = 255
#: The longest delay, lease or ttl accepted: a century, so no backend's time arithmetic overflows.
MAX_SECONDS = 100 * 365.25 * 86400


def validate_name(what: str, value: object) -> str:
    """Return ``value`` if it is a non-blank str of at most 255 characters, else refuse it."""
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"the job's {what} must be a non-empty string, got {value!r:.80}")
    if len(value) > MAX_NAME_LENGTH:
        raise PayloadError(
            f"the job's {what} is {len(value)} characters long; at most {MAX_NAME_LENGTH} allowed"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(f"the job's {what} is not valid unicode (lone surrogate)") from None
    if "\x00" in value:
        # Refused everywhere so that a board's data can move to any backend (PostgreSQL text
        # cannot hold NUL).
        raise PayloadError(f"the job's {what} contains a NUL character")
    return value


def encode_json(what: str, value: Mapping[str, Any], max_bytes: int) -> bytes:
    """Encode a JSON object strictly, as UTF-8 bytes of at most ``max_bytes``.

    Refuses (``PayloadError``): anything but a mapping with str keys at the top; values JSON
    cannot carry (sets, bytes, objects, NaN, infinities); lone surrogates; integers too large
    to print; nesting too deep to encode; an encoding longer than ``max_bytes``.
    """
    if not isinstance(value, Mapping):
        raise PayloadError(f"{what} must be a JSON object (a dict), got {type(value).__name__}")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        data = text.encode("utf-8")
    except TypeError as exc:
        raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from None
    except UnicodeEncodeError:
        raise PayloadError(f"{what} holds a string that is not valid unicode") from None
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply to encode") from None
    except ValueError as exc:
        raise PayloadError(f"{what} cannot be encoded as JSON: {exc}") from None
    if len(data) > max_bytes:
        raise PayloadError(
            f"{what} is {len(data)} bytes of JSON; this board takes at most {max_bytes}"
        )
    return data


def decode_json(data: bytes | str) -> Any:
    """Decode JSON written by :func:`encode_json`."""
    return json.loads(data)


def finite_seconds(what: str, value: float) -> float:
    """Return ``value`` as float if it is a finite, non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{what} must be a number of seconds, got {value!r:.80}")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise PayloadError(
            f"{what} must be a number of seconds from 0 to {MAX_SECONDS:.0f}, got {value!r}"
        )
    return seconds
