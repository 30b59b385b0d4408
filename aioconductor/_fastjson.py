"""JSON for the hot path: msgspec's encoder and decoder where they give exactly what the json
module gives, and the json module everywhere else.

A job's path encodes and decodes some ten small JSON values (its payload, its result, its
atoms' details); the json module spent about 5 us on each of them (most of it fixed cost),
msgspec spends about 0.6. msgspec is not a drop-in replacement: it writes NaN as ``null``, an
integer key as ``"1"``, a set as a list, and objects the json module refuses (a UUID, a
datetime) as strings; it refuses strings with lone surrogates. So a value is encoded by msgspec
only when :func:`plain` says strict JSON carries it as it is, and a caller whose value is not
plain takes its own strict path, which refuses it or explains why, as before. Decoding is
exact (msgspec keeps integers of any size, as the json module does); text msgspec refuses (a
lone surrogate escape, a number too large for a float) is decoded by the json module.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

__all__ = ["decode", "encode_plain", "plain"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

#: Types strict JSON carries as they are, with nothing inside to walk (an int too, below
#: :data:`_INT_LIMIT`).
_SIMPLE = frozenset({str, bool, type(None)})
#: Python prints no int of this many digits or more (``sys.get_int_max_str_digits``, 4,300 by
#: default), so the json module refuses it: such an int takes the strict path.
_INT_LIMIT = 10**4299


def plain(value: Any) -> bool:
    """Whether strict JSON carries ``value`` as it is: every key a str, every float finite,
    every int printable (under 4,300 digits), every value a JSON type (dict, list, tuple, str,
    int, float, bool, None, or a subclass of str or int such as an enum). False, not an error,
    for a value nested too deeply to walk.
    """
    try:
        return _plain(value)
    except RecursionError:
        return False


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind in _SIMPLE:
        return True
    if kind is int:
        return bool(-_INT_LIMIT < value < _INT_LIMIT)
    if kind is float:
        return math.isfinite(value)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return False
            if type(item) not in _SIMPLE and not _plain(item):
                return False
        return True
    if isinstance(value, list | tuple):
        for item in value:
            if type(item) not in _SIMPLE and not _plain(item):
                return False
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):  # an int subclass (an enum) is written as its value
        return bool(-_INT_LIMIT < value < _INT_LIMIT)
    return isinstance(value, str)  # a str subclass (an enum) is written as such


def encode_plain(value: Any) -> bytes | None:
    """``value`` as compact UTF-8 JSON if it is :func:`plain` (and encodable: no lone
    surrogate); None otherwise, for the caller's strict path to refuse or explain."""
    if not plain(value):
        return None
    try:
        return _encode(value)
    except Exception:  # a lone surrogate, a str subclass msgspec will not take: the slow path
        return None


def decode(data: bytes | str) -> Any:
    """JSON text decoded, as ``json.loads`` decodes it (whose errors it raises)."""
    try:
        return _decode(data)
    except msgspec.DecodeError:
        return json.loads(data)
