"""Validation and JSON encoding of what producers and owners hand to a board.

Everything a board stores is JSON. Nothing is pickled or evaluated, so a board holds data, never
code. A value is refused here, before any backend is touched, so a refusal changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from typing import Any

from aioconductor._fastjson import decode
from aioconductor._fastjson import encode_plain
from aioconductor.errors import PayloadError

__all__ = [
    "MAX_NAME_LENGTH",
    "encode_json",
    "encode_object",
    "non_str_key",
    "validate_key",
    "validate_name",
]

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


def validate_key(value: object, what: str = "key") -> str:
    """Return ``value`` if it is a valid idempotency key (or, with ``what="limit key"``, a
    valid concurrency limit key), else refuse it (``PayloadError``).

    A key is checked like a name (1 to 255 characters, not blank, no NUL) and, because keys
    are typed on command lines and shown in logs, holds no control characters and no
    leading or trailing whitespace.
    """
    key = validate_name(what, value)
    if key != key.strip():
        raise PayloadError(f"the job's {what} has leading or trailing whitespace: {key!r:.80}")
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in key):
        raise PayloadError(f"the job's {what} contains a control character: {key!r:.80}")
    return key


def encode_json(what: str, value: Mapping[str, Any], max_bytes: int) -> bytes:
    """Encode a JSON object strictly, as UTF-8 bytes of at most ``max_bytes``.

    Refuses (``PayloadError``): anything but a mapping at the top; a key that is not a str, at
    any depth (see :func:`non_str_key`); values JSON cannot carry (sets, bytes, objects, NaN,
    infinities); lone surrogates; integers too large to print; nesting too deep to encode; an
    encoding longer than ``max_bytes``.
    """
    fast = encode_plain(value) if isinstance(value, dict) else None
    if fast is not None:
        _check_size(what, fast, max_bytes)
        return fast
    data = _encode(what, value, max_bytes)
    _refuse_non_str_keys(what, value)
    return data


def encode_object(
    what: str, value: Mapping[str, Any], max_bytes: int
) -> tuple[bytes, dict[str, Any]]:
    """:func:`encode_json`, and the object as a reader will get it back (decoded from the
    bytes: a tuple comes back as a list, and so on).

    For the hot path of every post and consume, which needs the decoded object anyway: the
    keys are checked by comparing it with ``value`` (one comparison, in C); they are walked
    only when the two differ, which only a tuple or a key that is not a str makes them do.
    """
    fast = encode_plain(value) if isinstance(value, dict) else None
    if fast is not None:
        # Plain: every key a str, nothing to compare.
        _check_size(what, fast, max_bytes)
        return fast, decode(fast)
    data = _encode(what, value, max_bytes)
    decoded: dict[str, Any] = decode(data)
    if decoded != value:
        _refuse_non_str_keys(what, value)
    return data, decoded


def _encode(what: str, value: Mapping[str, Any], max_bytes: int) -> bytes:
    """:func:`encode_json` but for keys json writes as strings (int, float, bool, None)."""
    if not isinstance(value, Mapping):
        raise PayloadError(f"{what} must be a JSON object (a dict), got {type(value).__name__}")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        data = text.encode("utf-8")
    except TypeError as exc:
        # json refuses some keys itself (a tuple): say where the key is, not only what it is.
        problem = None
        with contextlib.suppress(RecursionError):  # a value holding itself: json's word
            problem = non_str_key(value)
        if problem is not None:
            raise PayloadError(f"{what} cannot be encoded as JSON: {problem}") from None
        raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from None
    except UnicodeEncodeError:
        raise PayloadError(f"{what} holds a string that is not valid unicode") from None
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply to encode") from None
    except ValueError as exc:
        raise PayloadError(f"{what} cannot be encoded as JSON: {exc}") from None
    _check_size(what, data, max_bytes)
    return data


def _check_size(what: str, data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise PayloadError(
            f"{what} is {len(data)} bytes of JSON; this board takes at most {max_bytes}"
        )


def _refuse_non_str_keys(what: str, value: Any) -> None:
    """``PayloadError`` if ``value`` (which json encoded: no cycle) has a key that is not a str."""
    try:
        problem = non_str_key(value)
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply to encode") from None
    if problem is not None:
        raise PayloadError(f"{what} cannot be encoded as JSON: {problem}")


def non_str_key(value: Any) -> str | None:
    """What is wrong with the first dict key in ``value``, at any depth, that is not a str, and
    where it is; None when every key is a str.

    JSON object keys are strings. ``json.dumps`` writes the key ``1`` as ``"1"``, so the value
    read back would not be the value saved, and ``{1: "a", "1": "b"}`` would come back as
    ``{"1": "b"}``: a value silently lost. Every payload and every store refuses such keys.

    The walk costs a few tenths of a microsecond for a small payload, a small part of what
    encoding it costs; the path to the key is worked out only once there is one to name.

    Raises:
        RecursionError: ``value`` is nested too deeply to walk (or holds itself).
    """
    if _str_keys_only(value):
        return None
    path, key = _first_non_str_key(value, "")
    where = f" in {path}" if path else ""
    return (
        f"key {key!r:.80} ({type(key).__name__}){where} is not a string; JSON object keys "
        "must be strings (convert the key, for example with str(), or use a list of pairs)"
    )


#: Types json writes as they are, with nothing inside to walk.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _str_keys_only(value: Any) -> bool:
    # json encodes every dict subclass as an object and every list or tuple as an array.
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return False
            if type(item) not in _SCALARS and not _str_keys_only(item):
                return False
    elif isinstance(value, list | tuple):
        for item in value:
            if type(item) not in _SCALARS and not _str_keys_only(item):
                return False
    return True


def _first_non_str_key(value: Any, path: str) -> tuple[str, Any]:
    """The path to the dict holding the first key that is not a str (in the order
    :func:`_str_keys_only` walks), and that key. ``value`` must hold one."""
    is_dict = isinstance(value, dict)
    for key, item in value.items() if is_dict else enumerate(value):
        if is_dict and not isinstance(key, str):
            return path, key
        if type(item) not in _SCALARS and not _str_keys_only(item):
            return _first_non_str_key(item, f"{path}[{key!r}]")
    raise AssertionError("no key to name")  # pragma: no cover - the caller found one


def decode_json(data: bytes | str) -> Any:
    """Decode JSON written by :func:`encode_json`."""
    return decode(data)


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
