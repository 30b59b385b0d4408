"""What a ``post`` is checked for, before any backend sees it: the job's name and flow, its
options, its args, headers and retry policy, each refused with a clear ``PayloadError``.

The options are written once, as :class:`PostOptions`: ``post``, ``post_many`` and
``PostgresJobBoard.post_in_transaction`` take them as keywords and hand them to
:func:`post_spec`, which gives each its default."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, TypedDict

from pydantic import BaseModel

from aioconductor._payload import encode_json
from aioconductor._payload import encode_object
from aioconductor._payload import finite_seconds
from aioconductor._payload import validate_key
from aioconductor._payload import validate_name
from aioconductor.boards._support import PostSpec
from aioconductor.errors import PayloadError
from aioconductor.models import RetryPolicy

__all__ = ["MAX_HEADERS_BYTES", "PostOptions", "post_spec"]

#: The most a job's headers may weigh, as JSON.
MAX_HEADERS_BYTES = 8192


class PostOptions(TypedDict, total=False):
    """The options of a post, each optional (:meth:`JobBoard.post` describes them)."""

    priority: int
    max_attempts: int
    delay: float | None
    not_before: float | None
    headers: Mapping[str, str] | None
    retry: RetryPolicy | None
    limit_key: str | None


def post_spec(
    name: str,
    flow: str,
    args: Mapping[str, Any] | BaseModel | None,
    max_payload_bytes: int,
    *,
    priority: int = 0,
    max_attempts: int = 3,
    delay: float | None = None,
    not_before: float | None = None,
    headers: Mapping[str, str] | None = None,
    retry: RetryPolicy | None = None,
    limit_key: str | None = None,
    key: str | None = None,
) -> PostSpec:
    """The validated post, its payloads encoded, for a backend's ``_post``; the options
    (:class:`PostOptions`) not given take their defaults here.

    Raises:
        PayloadError: a bad name, flow, option, args, headers, retry policy or key.
    """
    validate_name("name", name)
    validate_name("flow name", flow)
    checked_key = None if key is None else validate_key(key)
    checked_limit_key = None if limit_key is None else validate_key(limit_key, "limit key")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise PayloadError(f"priority must be an int, got {priority!r:.80}")
    if not -(2**31) <= priority < 2**31:
        raise PayloadError(f"priority {priority} is out of range (a 32-bit signed int)")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise PayloadError(f"max_attempts must be an int, got {max_attempts!r:.80}")
    if not 1 <= max_attempts <= 1_000_000:
        raise PayloadError(f"max_attempts must be from 1 to 1,000,000, got {max_attempts}")
    if delay is not None and not_before is not None:
        raise PayloadError("give delay or not_before, not both")
    delay_s = 0.0 if delay is None else finite_seconds("delay", delay)
    at = None if not_before is None else finite_seconds("not_before", not_before)
    if isinstance(args, BaseModel):
        args = args.model_dump(mode="json")
    # Store what a reader will get back: decoding normalises tuples to lists and so on.
    data, decoded = encode_object("the job's args", {} if args is None else args, max_payload_bytes)
    checked, headers_json = _check_headers(headers)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise PayloadError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
    return PostSpec(
        id=str(uuid.uuid4()),
        name=name,
        flow=flow,
        args=decoded,
        args_json=data,
        priority=priority,
        max_attempts=max_attempts,
        delay=delay_s,
        not_before=at,
        headers=checked,
        headers_json=headers_json,
        retry=retry,
        retry_json=None if retry is None else retry.model_dump_json().encode(),
        key=checked_key,
        limit_key=checked_limit_key,
    )


def _check_headers(headers: Mapping[str, str] | None) -> tuple[dict[str, str], bytes]:
    """The headers as a plain dict and as JSON, or ``PayloadError`` naming what is wrong."""
    if headers is None:
        return {}, b"{}"
    if not isinstance(headers, Mapping):
        raise PayloadError(f"headers must be a mapping of strings, got {type(headers).__name__}")
    checked: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise PayloadError(f"headers must map strings to strings, got {key!r}: {value!r:.80}")
        validate_name("header name", key)
        if "\x00" in value:
            raise PayloadError(f"header {key!r} contains a NUL character")
        checked[key] = value
    data = encode_json("the job's headers", checked, MAX_HEADERS_BYTES)
    return checked, data
