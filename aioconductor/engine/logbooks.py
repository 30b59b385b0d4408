"""A new run's logbook: created with its flow RUNNING (and its only first task, when it has
one), in one write, built without pydantic's validation (every value is the engine's own)."""

from __future__ import annotations

import time
from typing import Any

from aioconductor._models import build_from
from aioconductor.engine.compiler import Node
from aioconductor.persistence.base import Store
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook
from aioconductor.persistence.runs import new_flow_uuid
from aioconductor.persistence.runs import new_run

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
    now = time.time()
    flow_uuid = new_flow_uuid()
    detail = new_run(flow_uuid, detail_name, None if first is None else first.name, now)
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


#: The fields of a new logbook that are the same for every new run.
_NEW_BOOK: dict[str, Any] = {"token": None}
