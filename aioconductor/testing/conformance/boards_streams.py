"""The board conformance suite: delays, notifications and waits, namespaces, closing, bad input,
conductors and headers."""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any

import anyio
import pytest

from aioconductor.boards import JobBoard
from aioconductor.errors import BoardClosed
from aioconductor.errors import ClaimLost
from aioconductor.errors import JobNotFound
from aioconductor.errors import PayloadError
from aioconductor.errors import UnclaimableJob
from aioconductor.models import JobNotification
from aioconductor.models import JobState
from aioconductor.models import NotificationKind
from aioconductor.testing.conformance._common import SHORT_LEASE
from aioconductor.testing.conformance._common import BoardOpener
from aioconductor.testing.conformance._common import collect
from aioconductor.testing.conformance._common import snapshot
from aioconductor.testing.conformance._common import subscribed
from aioconductor.testing.conformance._common import two_boards

# -- delays -------------------------------------------------------------------------------------


async def test_delayed_job_is_not_claimable_before_its_time(board: JobBoard) -> None:
    now_job = await board.post("now", "f")
    later = await board.post("later", "f", delay=0.4, priority=10)
    assert later.state is JobState.SCHEDULED and later.not_before is not None
    with pytest.raises(UnclaimableJob):
        await board.claim(later.id, "owner-1")
    first = await board.claim_next("owner-1")
    assert first is not None and first[0].id == now_job.id
    assert await board.claim_next("owner-1") is None
    await anyio.sleep(0.5)
    assert (await board.get(later.id)).state is JobState.UNCLAIMED
    second = await board.claim_next("owner-1")
    assert second is not None and second[0].id == later.id


async def test_not_before_in_the_past_is_claimable_now(board: JobBoard) -> None:
    job = await board.post("j", "f", not_before=time.time() - 10)
    assert job.state is JobState.UNCLAIMED
    assert (await board.claim_next("o")) is not None


async def test_stream_announces_a_delayed_job_when_due(board: JobBoard) -> None:
    job = await board.post("later", "f", delay=0.3)
    started = time.monotonic()
    notes = await collect(board, 1)
    assert notes[0].job_id == job.id
    assert time.monotonic() - started >= 0.25


# -- notifications ------------------------------------------------------------------------------


async def test_stream_sees_posts_made_before_and_after_it_started(board: JobBoard) -> None:
    before = await board.post("before", "f")
    received: list[JobNotification] = []
    async with contextlib.aclosing(board.stream()) as stream:
        iterator = aiter(stream)
        with anyio.fail_after(5):
            received.append(await anext(iterator))
            after = await board.post("after", "f")
            received.append(await anext(iterator))
    assert [n.job_id for n in received] == [before.id, after.id]
    assert received[1].kind is NotificationKind.POSTED


async def test_stream_announces_an_expired_lease(board: JobBoard) -> None:
    job = await board.post("j", "f")
    await board.claim(job.id, "owner-1", lease=SHORT_LEASE)
    notes = await collect(board, 1)
    assert notes[0].job_id == job.id
    assert await board.claim_next("owner-2") is not None


async def test_each_stream_is_an_independent_subscription(board: JobBoard) -> None:
    async def first_note(into: list[str]) -> None:
        into.extend(n.job_id for n in await collect(board, 1))

    a: list[str] = []
    b: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(first_note, a)
        tg.start_soon(first_note, b)
        await anyio.sleep(0.05)
        job = await board.post("j", "f")
    assert a == [job.id] and b == [job.id]


async def test_stream_from_another_board_object_sees_posts(backend: BoardOpener) -> None:
    async with two_boards(backend, poll_interval=0.05) as (producer, consumer):
        async with contextlib.aclosing(consumer.stream()) as stream:
            iterator = aiter(stream)
            job = await producer.post("j", "f")
            with anyio.fail_after(5):
                note = await anext(iterator)
        assert note.job_id == job.id


async def test_pushes_do_not_hold_off_the_sweep(backend: BoardOpener) -> None:
    async with two_boards(backend, poll_interval=0.2) as (busy, operator):
        held = await busy.post("held", "f")
        await busy.claim(held.id, "owner-1")
        marker = await busy.post("marker", "f")
        async with subscribed(busy, marker) as iterator, anyio.create_task_group() as tg:

            async def keep_posting() -> None:
                while True:  # a push every 50 ms: more often than poll_interval
                    await busy.post("busy", "f")
                    await anyio.sleep(0.05)

            tg.start_soon(keep_posting)
            # Told by a push where the backend pushes across objects, else by a sweep.
            await operator.cancel(held.id)
            with anyio.fail_after(5):
                while (await anext(iterator)).kind is not NotificationKind.CANCEL:
                    pass
            tg.cancel_scope.cancel()


async def test_wait_returns_once_a_job_is_claimable(board: JobBoard) -> None:
    with pytest.raises(TimeoutError):
        await board.wait(timeout=0.1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(board.wait)
        await anyio.sleep(0.05)
        await board.post("j", "f")
    await board.wait(timeout=1)


async def test_wait_for_returns_the_final_job(board: JobBoard) -> None:
    job = await board.post("j", "f")
    with pytest.raises(TimeoutError):
        await board.wait_for(job.id, timeout=0.1)

    async def finish() -> None:
        await anyio.sleep(0.05)
        claim = await board.claim(job.id, "owner-1")
        await board.consume(claim, result={"ok": True})

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish)
        done = await board.wait_for(job.id, timeout=5)
    assert done.state is JobState.COMPLETE and done.result == {"ok": True}
    trashed = await board.post("t", "f")
    await board.trash(trashed.id, reason="r")
    assert (await board.wait_for(trashed.id, timeout=1)).state is JobState.TRASHED


# -- isolation, lifecycle, bad input -----------------------------------------------------------


async def test_namespaces_isolate_boards_on_one_backend(backend: BoardOpener) -> None:
    async with backend.open("tenant_a") as a, backend.open("tenant_b") as b:
        job = await a.post("j", "f")
        assert await b.job_count() == 0
        assert [j async for j in b.iterjobs()] == []
        assert await b.claim_next("o") is None
        with pytest.raises(JobNotFound):
            await b.get(job.id)
        with pytest.raises(JobNotFound):
            await b.claim(job.id, "o")
        claim = await a.claim(job.id, "o")
        with pytest.raises((JobNotFound, ClaimLost)):
            await b.consume(claim)
        assert (await a.get(job.id)).state is JobState.CLAIMED


async def test_a_closed_board_refuses_every_call(backend: BoardOpener) -> None:
    board = backend.open()
    with pytest.raises(BoardClosed):
        await board.post("j", "f")
    await board.connect()
    job = await board.post("j", "f")
    await board.aclose()
    await board.aclose()
    with pytest.raises(BoardClosed):
        await board.post("j", "f")
    with pytest.raises(BoardClosed):
        await board.get(job.id)
    with pytest.raises(BoardClosed):
        await board.claim_next("o")
    with pytest.raises(BoardClosed):
        await board.connect()


async def test_closing_a_board_ends_its_streams(backend: BoardOpener) -> None:
    board = backend.open(poll_interval=0.05)
    await board.connect()
    ended = anyio.Event()

    async def read() -> None:
        async with contextlib.aclosing(board.stream()) as stream:
            async for _ in stream:
                pass
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.sleep(0.05)
        await board.aclose()
        with anyio.fail_after(2):
            await ended.wait()


BAD_POSTS: list[tuple[str, dict[str, Any]]] = [
    ("empty name", {"name": "", "flow": "f"}),
    ("blank name", {"name": "   ", "flow": "f"}),
    ("long name", {"name": "x" * 256, "flow": "f"}),
    ("empty flow", {"name": "j", "flow": ""}),
    ("not json", {"name": "j", "flow": "f", "args": {"x": {1, 2}}}),
    ("bytes", {"name": "j", "flow": "f", "args": {"x": b"raw"}}),
    ("nan", {"name": "j", "flow": "f", "args": {"x": float("nan")}}),
    ("lone surrogate", {"name": "j", "flow": "f", "args": {"x": "\ud800"}}),
    ("not a dict", {"name": "j", "flow": "f", "args": [1, 2]}),
    ("too large", {"name": "j", "flow": "f", "args": {"x": "y" * (1 << 20)}}),
    ("bad attempts", {"name": "j", "flow": "f", "max_attempts": 0}),
    ("bad priority", {"name": "j", "flow": "f", "priority": "high"}),
    ("negative delay", {"name": "j", "flow": "f", "delay": -1}),
    ("delay past a century", {"name": "j", "flow": "f", "delay": 1e300}),
    ("nul in name", {"name": "a\x00b", "flow": "f"}),
    ("nul in flow", {"name": "j", "flow": "f\x00"}),
    ("both delays", {"name": "j", "flow": "f", "delay": 1, "not_before": time.time()}),
]


@pytest.mark.parametrize(("why", "post"), BAD_POSTS, ids=[why for why, _ in BAD_POSTS])
async def test_bad_posts_are_refused_and_change_nothing(
    board: JobBoard, why: str, post: dict[str, Any]
) -> None:
    existing = await board.post("existing", "f")
    before = await snapshot(board)
    post = dict(post)
    name, flow = post.pop("name"), post.pop("flow")
    with pytest.raises(PayloadError):
        await board.post(name, flow, **post)
    assert await snapshot(board) == before
    assert [n.job_id for n in await collect(board, 1)] == [existing.id]


#: Payloads holding a dict key that is not a str (JSON would turn 1 into "1", and lose "a" in
#: the first), and what the refusal names: the key and the path to the dict holding it.
NON_STR_KEYS: list[tuple[dict[Any, Any], str]] = [
    ({1: "a", "1": "b"}, "key 1 (int) is not a string"),
    ({"a": {1: "x"}}, "key 1 (int) in ['a'] is not a string"),
    ({"rows": [{"ok": 1}, {"ok": 2, 3: "x"}]}, "key 3 (int) in ['rows'][1] is not a string"),
    ({"t": {(1, 2): "x"}}, "key (1, 2) (tuple) in ['t'] is not a string"),
    ({"deep": [({"b": {None: 0}},)]}, "key None (NoneType) in ['deep'][0][0]['b'] is not"),
    ({"f": {2.5: 1, True: 2}}, "key 2.5 (float) in ['f'] is not a string"),
]


async def test_keys_that_are_not_strings_are_refused_at_any_depth(board: JobBoard) -> None:
    existing = await board.post("existing", "f", {"ok": {"nested": [{"k": 1}]}})
    claim = await board.claim(existing.id, "owner-1")
    before, count = await snapshot(board), await board.job_count()
    for payload, refusal in NON_STR_KEYS:
        where = re.escape(refusal)
        with pytest.raises(PayloadError, match=f"the job's args.*{where}"):
            await board.post("j", "f", payload)
        with pytest.raises(PayloadError, match=where):
            await board.post_many("f", [{"fine": 1}, payload])
        with pytest.raises(PayloadError, match=f"the job's result.*{where}"):
            await board.consume(claim, result=payload)
        with pytest.raises(PayloadError, match=where):
            await board.register_conductor("owner-2", "worker-2", ttl=30, meta=payload)
    # Nothing was written: no job posted, the claimed job not consumed, no conductor.
    assert await board.job_count() == count
    assert await snapshot(board) == before
    assert await board.conductors() == []
    done = await board.consume(claim, result={"ok": {"1": "a", "2": [{"3": None}]}})
    assert (await board.get(done.id)).result == {"ok": {"1": "a", "2": [{"3": None}]}}


async def test_max_payload_bytes_is_a_board_setting(backend: BoardOpener) -> None:
    async with backend.open(max_payload_bytes=100) as small:
        await small.post("j", "f", {"x": "y" * 50})
        with pytest.raises(PayloadError, match="at most 100"):
            await small.post("j", "f", {"x": "y" * 100})
        assert await small.job_count() == 1


# -- conductors ---------------------------------------------------------------------------------


async def test_conductors_register_heartbeat_and_expire(board: JobBoard) -> None:
    await board.register_conductor("owner-a", "worker-a", ttl=0.3, meta={"running": 2})
    await board.register_conductor("owner-b", "worker-b", ttl=30)
    alive = await board.conductors()
    assert [(c.owner, c.name) for c in alive] == [("owner-a", "worker-a"), ("owner-b", "worker-b")]
    assert alive[0].meta == {"running": 2}
    await anyio.sleep(0.4)
    assert [c.owner for c in await board.conductors()] == ["owner-b"]
    await board.register_conductor("owner-b", "worker-b", ttl=30, meta={"running": 1})
    again = (await board.conductors())[0]
    assert again.started_at == alive[1].started_at and again.heartbeat_at >= alive[1].heartbeat_at
    await board.unregister_conductor("owner-b")
    assert await board.conductors() == []


# -- headers ---------------------------------------------------------------------------------------


async def test_headers_travel_with_the_job_and_not_into_its_args(board: JobBoard) -> None:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "é": "ü"}
    job = await board.post("j", "f", {"a": 1}, headers=headers)
    assert job.headers == headers and job.args == {"a": 1}
    assert (await board.get(job.id)).headers == headers
    (claimed, claim), *_ = await board.claim_batch("o", 1)
    assert claimed.headers == headers
    assert (await board.consume(claim)).headers == headers
    plain = await board.post("k", "f")
    assert plain.headers == {} and (await board.get(plain.id)).headers == {}
    many = await board.post_many("f", [{}, {}], headers={"tenant": "t1"})
    assert [(await board.get(j.id)).headers for j in many] == [{"tenant": "t1"}] * 2


@pytest.mark.parametrize(
    "headers",
    [{"k": 1}, {1: "v"}, {"": "v"}, {"k": "a\x00b"}, {"k": "x" * 9000}, ["k"], {"k": "\ud800"}],
)
async def test_bad_headers_are_refused_and_nothing_is_posted(board: JobBoard, headers: Any) -> None:
    with pytest.raises(PayloadError):
        await board.post("j", "f", headers=headers)
    with pytest.raises(PayloadError):
        await board.post_many("f", [{}], headers=headers)
    assert await board.job_count() == 0
