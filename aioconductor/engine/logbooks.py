"""A new run's logbook: created with its flow RUNNING (and its only first task, when it has
one), in one write, built without pydantic's validation (every value is the engine's own)."""

from __future__ import annotations

import random
import time

from aioconductor._models import build
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
        meta = {"started": now}
        atoms[first.name] = build(AtomDetail, **_NEW_ATOM, name=first.name, meta=meta)
    flow_uuid = _uuid4()
    detail = build(FlowDetail, **_NEW_FLOW, uuid=flow_uuid, name=detail_name, meta={}, atoms=atoms)
    book = build(
        LogBook,
        **_NEW_BOOK,
        uuid=book_id,
        name=book_name,
        created_at=now,
        updated_at=now,
        meta={},
        flows={flow_uuid: detail},
    )
    book = await store.save_logbook(book, token=token)
    earlier = [f for f in book.flows.values() if f.name == detail_name and f.uuid != detail.uuid]
    if earlier:
        return earlier[0], False
    return book.flows[detail.uuid], True


def _uuid4() -> str:
    """A random (version 4) UUID's text, as ``str(uuid.uuid4())`` gives it, at a quarter of
    the cost: a flow's uuid need only be unique among its logbook's flows, so ``random``'s
    generator (reseeded in every forked child) serves, not ``os.urandom``."""
    bits = random.getrandbits(128) & _UUID_CLEAR | _UUID_SET
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


#: The version (4) and variant (RFC 4122) bits of a random UUID, as ``uuid.UUID`` sets them.
_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


#: The fields of the details ``create_run`` builds that are the same for every new run (no
#: mutable value: each detail gets a ``meta`` of its own).
_NEW_ATOM = {
    "kind": "task",
    "state": AtomState.RUNNING,
    "intention": Intention.EXECUTE,
    "result": None,
    "failure": None,
    "revert_result": None,
    "revert_failure": None,
    "version": 0,
}
_NEW_FLOW = {"state": FlowState.RUNNING, "version": 0}
_NEW_BOOK = {"token": None}
