"""A new run's logbook: created with its flow RUNNING (and its only first task, when it has
one), in one write, built without pydantic's validation (every value is the engine's own)."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from typing import Any

from aioconductor._models import build_from
from aioconductor.engine.compiler import Node
from aioconductor.persistence.base import Store
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import FlowState
from aioconductor.persistence.models import Intention
from aioconductor.persistence.models import LogBook

__all__ = ["create_run"]


async def create_run(
    store: Store,
    book_id: str,
    book_name: str,
    detail_name: str,
    token: int | None,
    first: Node | None,
) -> tuple[FlowDetail, bool]:
    """Save a new logbook holding the flow's detail, already RUNNING (one write for two),
    with ``first`` RUNNING too; return the detail to run with, and whether it is the new one.

    Should the logbook exist after all (``fresh`` was wrong), the store merges in the new
    detail and returns the whole book: the detail saved earlier for this flow wins, and the run
    resumes from it as if the book had been read first.
    """
    # Built without pydantic's validation: every value is the engine's own, of the right type.
    now = time.time()
    atoms = {}
    if first is not None:
        atom = _NEW_ATOM.copy()
        atom["name"], atom["meta"] = first.name, {"started": now}
        atoms[first.name] = build_from(AtomDetail, atom)
    flow_uuid = _uuid4()
    flow = _NEW_FLOW.copy()
    flow["uuid"], flow["name"], flow["meta"], flow["atoms"] = flow_uuid, detail_name, {}, atoms
    detail = build_from(FlowDetail, flow)
    values = _NEW_BOOK.copy()
    values["uuid"], values["name"], values["meta"] = book_id, book_name, {}
    values["created_at"] = values["updated_at"] = now
    values["flows"] = {flow_uuid: detail}
    book = build_from(LogBook, values)
    book = await store.save_logbook(book, token=token)
    earlier = [f for f in book.flows.values() if f.name == detail_name and f.uuid != detail.uuid]
    if earlier:
        return earlier[0], False
    return book.flows[detail.uuid], True


def _uuid4() -> str:
    """The text of a version 4 UUID, unique in this process and, with near certainty, among
    processes: a random prefix drawn per process and a counter, at a tenth of
    ``str(uuid.uuid4())``'s cost. A flow's uuid need only be unique among its logbook's
    flows, which one process at a time creates."""
    return f"{_uuid_prefix}{next(_uuid_counter) & 0xFFFFFFFFFFFF:012x}"


def _new_uuid_prefix() -> None:
    """Draw this process's UUID prefix (and after a fork, the child's own)."""
    global _uuid_prefix, _uuid_counter
    text = str(uuid.uuid4())
    _uuid_prefix, _uuid_counter = text[:24], itertools.count()


_uuid_prefix = ""
_uuid_counter = itertools.count()
_new_uuid_prefix()
os.register_at_fork(after_in_child=_new_uuid_prefix)


#: The fields of the details ``create_run`` builds that are the same for every new run (no
#: mutable value: each detail gets a ``meta`` of its own).
_NEW_ATOM: dict[str, Any] = {
    "kind": "task",
    "state": AtomState.RUNNING,
    "intention": Intention.EXECUTE,
    "result": None,
    "failure": None,
    "revert_result": None,
    "revert_failure": None,
    "version": 0,
}
_NEW_FLOW: dict[str, Any] = {"state": FlowState.RUNNING, "version": 0}
_NEW_BOOK: dict[str, Any] = {"token": None}
