"""A one-task job's logbook as a conductor saves it, and its end as the journal writes it: what
the fused-ending tests of every backend start from."""

from __future__ import annotations

from typing import Any

from aioconductor.persistence.models import AtomDetail, AtomState, FlowDetail, FlowState, LogBook


def running_book(job_id: str) -> LogBook:
    """A job's logbook as a conductor's first write saves it: the flow RUNNING (version 0) with
    its task ``echo`` RUNNING."""
    flow = FlowDetail(name="noop", state=FlowState.RUNNING)
    flow.atoms["echo"] = AtomDetail(name="echo", state=AtomState.RUNNING)
    return LogBook(uuid=job_id, name="j", flows={flow.uuid: flow})


async def claimed_and_running(board: Any, store: Any) -> tuple[Any, FlowDetail]:
    """A ``noop`` job posted and claimed by ``owner``, and its logbook saved under the claim's
    token (see :func:`running_book`): the claim and the saved flow."""
    await board.post("j", "noop", {"key": 1})
    [(_, claim)] = await board.claim_batch("owner", 1)
    book = await store.save_logbook(running_book(claim.job_id), token=claim.token)
    (flow,) = book.flows.values()
    return claim, flow


def flow_end(flow: FlowDetail) -> tuple[FlowDetail, AtomDetail]:
    """The flow's end as the journal writes it: the flow SUCCESS, its task SUCCESS."""
    ended = flow.model_copy(deep=True)
    ended.state = FlowState.SUCCESS
    atom = ended.atoms["echo"]
    atom.state, atom.result = AtomState.SUCCESS, {"echoed": 1}
    return ended, atom
