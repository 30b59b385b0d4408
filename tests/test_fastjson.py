"""``aioconductor._fastjson``: msgspec where it gives what the json module gives, the strict
path everywhere else."""

from __future__ import annotations

import asyncio
import enum
import json
from typing import Any

import pytest

from aioconductor._fastjson import decode, encode_plain, plain
from aioconductor.engine.task import task


class Colour(enum.Enum):
    RED = "red"


class Size(enum.StrEnum):
    BIG = "big"


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1.5, -0.0, None, True], "c": {"d": "é\u2028"}},
        {"n": 2**200, "m": -(10**4298)},
        {"t": (1, 2), "size": Size.BIG},
    ],
)
def test_a_plain_value_encodes_as_the_json_module_reads_it(value: Any) -> None:
    assert plain(value)
    encoded = encode_plain(value)
    assert encoded is not None
    assert decode(encoded) == json.loads(json.dumps(value))


@pytest.mark.parametrize(
    "value",
    [
        {"nan": float("nan")},
        {"inf": [float("inf")]},
        {1: "int key"},
        {"set": {1, 2}},
        {"enum": Colour.RED},
        {"huge": 10**5000},  # the json module cannot print it
        {"surrogate": "\ud800"},
    ],
)
def test_what_strict_json_cannot_carry_as_it_is_takes_the_strict_path(value: Any) -> None:
    assert encode_plain(value) is None


def test_decoding_is_exact_and_falls_back_to_the_json_module() -> None:
    assert decode(b'{"n": 123456789012345678901234567890}') == {"n": 123456789012345678901234567890}
    assert decode('{"s": "\\ud800"}') == {"s": "\ud800"}
    with pytest.raises(json.JSONDecodeError):
        decode("{bad")


def test_a_task_returning_an_int_too_large_to_print_fails_as_its_own_failure() -> None:
    @task
    def big() -> dict[str, int]:
        return {"n": 10**5000}

    with pytest.raises(TypeError, match="JSON-serialisable"):
        asyncio.run(big.run_execute({}))
