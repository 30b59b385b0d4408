"""The PostgreSQL batched statements' JSON documents (``_backends/postgres/store_batch.py``):
what concurrent creations and fused endings send as one document is read back exactly as given
(strings with escapes, quotes, control characters and characters outside the BMP; floats to
the last bit), and what a document cannot carry exactly (a lone surrogate, a float JSON or
``numeric`` has not) goes as arrays, each call with the outcome of today's statement.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from aioconductor._backends.postgres import store_batch
from aioconductor.models import JobState, Outcome
from aioconductor.persistence.models import AtomState, FlowState, LogBook
from tests.backends import BY_NAME
from tests.flow_ends import running_book
from tests.persistence.test_postgres_batch import Statements, _claimed, _running, _to_end, _together

pytestmark = pytest.mark.parametrize("space", [BY_NAME["postgres"].param()], indirect=True)

#: Strings a JSON document escapes or carries as they are.
AWKWARD = ['qu"ote\\', "tab\tnew\nline\x01\x1f", "é ü ß", "\U0001f600 \u2028", "\\u0000"]


class Documents:
    """Whether each batched statement went as JSON documents (True) or arrays (False)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[bool] = []
        document = store_batch.document

        def spied(*sets: Any, **kwargs: Any) -> list[str] | None:
            made = document(*sets, **kwargs)
            self.sent.append(made is not None)
            return made

        monkeypatch.setattr(store_batch, "document", spied)


def _awkward_book(job_id: str, n: int, created_at: float) -> LogBook:
    book = running_book(job_id)
    book.name = AWKWARD[n % len(AWKWARD)]
    book.meta = {"s": AWKWARD, "nul": "a\x00b", "f": 0.1 + 0.2}
    book.created_at = book.updated_at = created_at
    [flow] = book.flows.values()
    flow.meta = {"s": AWKWARD[n % len(AWKWARD)]}
    flow.atoms["echo"].meta = {"started": created_at, "big": 10**30}
    return book


async def test_batched_creations_keep_every_value_exactly(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    times = [0.1 + 0.2, 1e300, 5e-324, 1796505556.502078, 2.0**53 + 2]
    async with _claimed(space, len(times)) as (_, store, claims):
        books = [
            _awkward_book(c.job_id, n, t)
            for n, (c, t) in enumerate(zip(claims, times, strict=True))
        ]
        statements, documents = Statements(monkeypatch), Documents(monkeypatch)
        outcomes = await _together(
            *(
                lambda b=b, c=c: store.save_logbook(b, token=c.token)
                for b, c in zip(books, claims, strict=True)
            )
        )
        assert statements.sizes == [len(times)] and statements.again == 0
        assert documents.sent == [True]
        for book, claim, saved in zip(books, claims, outcomes, strict=True):
            read = await store.get_logbook(claim.job_id)
            assert read == saved == book.model_copy(update={"token": claim.token})
            assert read.created_at.hex() == book.created_at.hex()


@pytest.mark.parametrize("created_at", [-0.0, math.inf, math.nan, -1.5])
async def test_a_float_json_cannot_carry_sends_the_creations_as_arrays(
    space: Any, monkeypatch: pytest.MonkeyPatch, created_at: float
) -> None:
    async with _claimed(space, 3) as (_, store, claims):
        books = [_awkward_book(c.job_id, n, 1.5) for n, c in enumerate(claims)]
        books[1].created_at = created_at
        statements, documents = Statements(monkeypatch), Documents(monkeypatch)
        await _together(
            *(
                lambda b=b, c=c: store.save_logbook(b, token=c.token)
                for b, c in zip(books, claims, strict=True)
            )
        )
        assert statements.sizes == [3] and statements.again == 0
        assert documents.sent == [False]
        for book, claim in zip(books, claims, strict=True):
            read = await store.get_logbook(claim.job_id)
            assert read.created_at.hex() == book.created_at.hex()
            assert read.flows == book.flows


async def test_a_lone_surrogate_sends_the_creations_as_arrays_with_todays_outcomes(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _claimed(space, 4) as (_, store, claims):
        # What a lone creation of that book raises, on a logbook of its own.
        alone = running_book(claims[3].job_id)
        alone.name = "bad \ud800"
        with pytest.raises(Exception) as raised:
            await store.save_logbook(alone, token=claims[3].token)
        books = [_awkward_book(c.job_id, n, 1.5) for n, c in enumerate(claims[:3])]
        books[1].name = "bad \ud800"
        statements, documents = Statements(monkeypatch), Documents(monkeypatch)
        outcomes = await _together(
            *(
                lambda b=b, c=c: store.save_logbook(b, token=c.token)
                for b, c in zip(books, claims, strict=False)
            )
        )
        assert statements.sizes[0] == 3 and documents.sent == [False]
        assert type(outcomes[1]) is type(raised.value), outcomes[1]
        for n in (0, 2):
            assert await store.get_logbook(claims[n].job_id) == outcomes[n]


async def test_batched_endings_keep_every_value_exactly(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _claimed(space, 5) as (board, store, claims):
        fused, _, ends = await _to_end(board, store, claims)
        for n, (flow, atom) in enumerate(ends):
            flow.meta = {"s": AWKWARD[n]}
            atom.result = {"s": AWKWARD, "n": n, "f": 5e-324, "big": -(10**30)}
        results = [{"r": AWKWARD[n], "nul": "\x00"} for n in range(5)]
        statements, documents = Statements(monkeypatch), Documents(monkeypatch)
        outcomes = await _together(
            *(
                lambda c=c, e=e, r=r: fused(c, Outcome.SUCCESS, r, c.job_id, e[0], c.token, (e[1],))
                for c, e, r in zip(claims, ends, results, strict=True)
            )
        )
        assert outcomes == [None] * 5
        assert statements.sizes == [5] and statements.again == 0
        assert documents.sent == [True]
        for claim, (flow, atom), result in zip(claims, ends, results, strict=True):
            job = await board.get(claim.job_id)
            assert job.state is JobState.COMPLETE and job.result == result
            saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
            assert saved.state is FlowState.SUCCESS and saved.meta == flow.meta
            assert saved.atoms["echo"].state is AtomState.SUCCESS
            assert saved.atoms["echo"].result == atom.result


async def test_a_lone_surrogate_sends_the_endings_as_arrays_with_todays_outcomes(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _claimed(space, 4) as (board, store, claims):
        fused, _, ends = await _to_end(board, store, claims)
        # What a lone ending of such a flow raises.
        ends[3][0].name = "bad \ud800"
        with pytest.raises(Exception) as raised:
            await fused(
                claims[3],
                Outcome.SUCCESS,
                {},
                claims[3].job_id,
                ends[3][0],
                claims[3].token,
                (ends[3][1],),
            )
        ends[1][0].name = "bad \ud800"
        statements, documents = Statements(monkeypatch), Documents(monkeypatch)
        outcomes = await _together(
            *(
                lambda c=c, e=e: fused(c, Outcome.SUCCESS, {}, c.job_id, e[0], c.token, (e[1],))
                for c, e in zip(claims[:3], ends, strict=False)
            )
        )
        assert statements.sizes[0] == 3 and documents.sent == [False]
        assert type(outcomes[1]) is type(raised.value), outcomes[1]
        for n in (0, 2):
            assert outcomes[n] is None
            assert (await board.get(claims[n].job_id)).state is JobState.COMPLETE
        assert (await board.get(claims[1].job_id)).state is JobState.CLAIMED


async def test_batched_atom_writes_keep_every_value_exactly_or_go_as_arrays(
    space: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioconductor.persistence.models import AtomDetail

    async with _claimed(space, 4) as (_, store, claims):
        flows = await _running(store, claims)
        writes = []
        for n, (claim, flow) in enumerate(zip(claims, flows, strict=True)):
            done = flow.atoms["echo"].model_copy(update={"state": AtomState.SUCCESS})
            done.result = {"s": AWKWARD, "n": n, "f": 5e-324, "big": 10**30}
            new = AtomDetail(name=AWKWARD[n], state=AtomState.RUNNING, meta={"m": AWKWARD[n]})
            writes.append((claim, flow, [done, new]))
        documents = Documents(monkeypatch)

        async def write_all(batch: list[Any]) -> list[Any]:
            return await _together(
                *(
                    lambda c=c, f=f, a=a: store.update_atom_details(
                        c.job_id, f.uuid, a, token=c.token
                    )
                    for c, f, a in batch
                )
            )

        await write_all(writes[:2])
        assert documents.sent == [True]
        for claim, flow, atoms in writes[:2]:
            saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid].atoms
            for atom in atoms:
                assert saved[atom.name].result == atom.result
                assert saved[atom.name].meta == atom.meta
        # A lone surrogate in a name: the lone write's error (its own statement, no document)
        # and, batched, arrays with the same error, the other write of the batch written.
        bad = (claims[3], flows[3], [AtomDetail(name="bad \ud800")])
        [lone] = await write_all([bad])
        assert isinstance(lone, Exception) and documents.sent == [True]
        writes[2][2][1] = AtomDetail(name="bad \ud800")
        outcomes = await write_all([writes[2], writes[3]])
        assert documents.sent[-1] is False
        assert type(outcomes[0]) is type(lone), outcomes[0]
        assert [a.name for a in outcomes[1]] == ["echo", AWKWARD[3]]
