"""Payload fuzz (hypothesis) on every board: a hostile post is refused cleanly or runs to an end.

Whatever a producer posts (invalid UTF-8, lone surrogates, NUL, deep nesting, huge integers,
payloads around ``max_payload_bytes``, hostile names), the board either refuses it at ``post``
with :class:`aioconductor.errors.PayloadError` and writes nothing, or stores it so that it reads
back as posted; and a conductor then runs each stored job to an end (consumed, or trashed with a
reason), once: no crash, no cycling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioconductor import Conductor, FlowRegistry, JobState, PayloadError, linear, open_board, task
from aioconductor.boards import JobBoard
from aioconductor.persistence.memory import MemoryStore

from .backends import FULL, backend_params, open_target, scale

pytestmark = [pytest.mark.chaos]

MAX_BYTES = 4096
EXAMPLES = scale(25, 400)

HOSTILE = [
    "'; DROP TABLE jobs; --",
    '"; DROP SCHEMA public CASCADE; --',
    "aioc:{other}:job:1",
    "../../etc/passwd",
    "${jndi:ldap://127.0.0.1/x}",
    "{{7*7}}",
    "\u202e\u200b\ufeff",
    "\x1b[31mred",
    "\r\nSET x 1\r\n",
]

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
    st.sampled_from(HOSTILE),
    st.just("a\x00b"),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    # Too large for str() since Python 3.11's limit of 4300 digits.
    st.builds(pow, st.just(10), st.integers(min_value=4300, max_value=6000)),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.binary(max_size=8),  # bytes, and invalid UTF-8 in them
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


#: Values JSON carries: these must be taken and read back as posted.
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
        st.sampled_from(HOSTILE),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=20,
)

payloads = st.one_of(
    st.dictionaries(st.text(), json_values, max_size=6),
    st.dictionaries(texts, values, max_size=5),
    st.builds(lambda d: {"deep": nested(d)}, st.integers(min_value=10, max_value=5000)),
    st.builds(lambda n: {"big": "x" * n}, st.integers(min_value=MAX_BYTES - 40, max_value=5000)),
    st.builds(
        lambda n: {"big": "é" * n}, st.integers(min_value=MAX_BYTES // 2 - 20, max_value=3000)
    ),
    # Not an object at the top, most of the time (a falsy one, such as [], included).
    values,
)
names = st.one_of(texts, st.text(min_size=250, max_size=300), st.sampled_from(HOSTILE))

fuzz_flows = FlowRegistry()


@fuzz_flows.register("any")
def any_flow(**args: Any) -> Any:
    @task(provides="keys")
    async def count() -> int:
        return len(args)

    return linear("any", count)


@fuzz_flows.register("strict")
def strict_flow(**args: Any) -> Any:
    """Takes only ``x``: a job with other args can never run, and is trashed."""
    if set(args) != {"x"}:
        raise TypeError(f"strict takes x only, got {sorted(args)!r:.100}")

    @task(provides="x")
    async def echo() -> Any:
        return args["x"]

    return linear("strict", echo)


def json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))


class Ledger:
    def __init__(self) -> None:
        self.posted: dict[str, Any] = {}
        self.refused = 0
        self.accepted = 0


async def post_one(
    board: JobBoard, ledger: Ledger, name: Any, args: Any, flow: str = "any"
) -> None:
    before = await board.job_count()
    try:
        job = await board.post(name, flow, args)
    except PayloadError as exc:
        ledger.refused += 1
        assert str(exc), "a refusal must say why"
        assert await board.job_count() == before, "a refused post wrote something"
        return
    ledger.accepted += 1
    assert await board.job_count() == before + 1
    stored = await board.get(job.id)
    assert stored.name == name
    assert stored.args == json_round_trip({} if args is None else args)  # None: no args
    ledger.posted[job.id] = args


@pytest.mark.timeout(scale(90, 900))
@pytest.mark.parametrize("backend", backend_params())
async def test_hostile_payloads_are_refused_or_run_to_an_end(backend: str, tmp_path: Path) -> None:
    ledger = Ledger()
    async with open_target(backend, tmp_path) as target:
        async with open_board(target.board_url, max_payload_bytes=MAX_BYTES) as board:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=not FULL,  # the bounded CI run is the same every time
                suppress_health_check=list(HealthCheck),
            )
            @given(name=names, args=payloads)
            def fuzz(name: Any, args: Any) -> None:
                examples.append((name, args))

            examples: list[tuple[Any, Any]] = []
            fuzz()
            for n, (name, args) in enumerate(examples):
                try:
                    await post_one(board, ledger, name, args, "strict" if n % 3 == 2 else "any")
                except Exception as exc:
                    raise AssertionError(f"post({name!r:.80}, args={args!r:.300})") from exc
            # The limit itself: exactly max_payload_bytes is taken, one byte more is refused.
            head = len(json.dumps({"big": ""}, separators=(",", ":")))
            await post_one(board, ledger, "limit", {"big": "x" * (MAX_BYTES - head)})
            assert list(ledger.posted.values())[-1] == {"big": "x" * (MAX_BYTES - head)}
            await post_one(board, ledger, "limit+1", {"big": "x" * (MAX_BYTES - head + 1)})
            # Every job that was taken runs to an end, once.
            conductor = Conductor(
                "fuzz", board, store=MemoryStore(), flows=fuzz_flows, lease=5, sweep_interval=0.2
            )
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(conductor.run)
                    for job_id in ledger.posted:
                        await board.wait_for(job_id)
                    conductor.stop()
            final = {job.id: job async for job in board.iterjobs()}
    assert set(final) == set(ledger.posted)
    for job in final.values():
        assert job.attempts == 1, "a hostile job was claimed more than once (cycling)"
        if job.state is JobState.TRASHED:
            assert job.flow == "strict" and "do not fit" in (job.trash_reason or "")
        else:
            assert job.state is JobState.COMPLETE
    trashed = sum(job.state is JobState.TRASHED for job in final.values())
    print(
        f"\nchaos fuzz[{backend}]: examples={len(examples) + 2} accepted={ledger.accepted} "
        f"refused={ledger.refused} trashed={trashed}"
    )
    assert ledger.refused > 0 and ledger.accepted > 0
