"""The Redis fused ending's own work per job (issue #25): what it sends and reads back.

Its guarantees (a stale claim changes nothing, a refused flow end consumes nothing) are tested
for every fusing backend in ``tests/test_server_calls.py``; these tests pin that it does no
work it has no use for."""

from __future__ import annotations

from typing import Any

import pytest

from aioconductor import open_board, open_store
from aioconductor._backends.redis import board_records, store_records
from aioconductor.models import JobState, Outcome
from aioconductor.persistence.models import AtomDetail, AtomState, FlowDetail, FlowState
from tests.backends import RedisSpace, one_space_fixture
from tests.flow_ends import claimed_and_running, flow_end

pytestmark = pytest.mark.redis

space = one_space_fixture("redis")


async def test_the_fused_ending_reads_nothing_back(
    space: RedisSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow's end is saved and the job consumed without the flow or the job being read back
    from Redis and parsed (the conductor has no use for either: parsing them was a sixth of the
    CPU per job)."""

    def no_read(fields: Any) -> Any:
        raise AssertionError("the fused ending parsed what it saved")

    url = space.board_url("fused")
    async with open_board(url) as board, open_store(url) as store:
        claim, flow = await claimed_and_running(board, store)
        fused = store.fused_ending(board)
        assert fused is not None
        ended, atom = flow_end(flow)
        monkeypatch.setattr(store_records, "flow_from_hash", no_read)
        monkeypatch.setattr(board_records, "job_from_hash", no_read)
        assert (
            await fused(claim, Outcome.SUCCESS, {"r": 1}, claim.job_id, ended, claim.token, (atom,))
            is None
        )
        monkeypatch.undo()
        job = await board.get(claim.job_id)
        assert job.state is JobState.COMPLETE and job.result == {"r": 1}
        saved = (await store.get_logbook(claim.job_id)).flows[flow.uuid]
        assert saved.state is FlowState.SUCCESS and saved.version == 1
        assert saved.atoms["echo"].result == {"echoed": 1} and saved.atoms["echo"].version == 1


async def test_a_flow_end_with_its_atoms_sends_the_flows_atoms_once(space: RedisSpace) -> None:
    """A flow's end at version 0 that writes its task (a one-task job's end) sends that atom
    once, as the write: the flow's atoms as a new flow would be saved with them are not
    encoded, since a write of atoms to a flow the logbook does not hold is refused anyway."""
    async with open_store(space.store_url("fused")) as store:
        flow = FlowDetail(name="noop", state=FlowState.SUCCESS)
        flow.atoms["echo"] = atom = AtomDetail(name="echo", state=AtomState.SUCCESS)
        _, argv = store._flow_update("book", flow, 1, (atom,))
        # prefix, token, uuid, detail, version, new atoms' count (then the new atoms), writes
        assert argv[5] == "0", argv
        assert argv[6:8] == ["1", "echo"] and len(argv) == 10
