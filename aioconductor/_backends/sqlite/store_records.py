"""The SQLite store's rows and details: a detail encoded for its row, and details (pydantic
models) built from rows read back.

An encoder refuses what JSON cannot carry (``StoreError``). The store encodes before it
queues a write, so nothing is written then; but for a new flow's own atoms, which are saved
only when the write finds the flow new: they are encoded in the write, rolled back on a refusal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from aioconductor.persistence._json import atom_json
from aioconductor.persistence._json import dumps
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook

__all__ = ["EncodedAtom", "EncodedFlow", "assemble", "atom_from_row"]


class EncodedFlow:
    """A flow detail encoded for its row, with its atoms encoded for theirs (unless
    ``atoms`` is false: a write that saves only the atoms it is given)."""

    def __init__(self, flow: FlowDetail, *, atoms: bool = True) -> None:
        self.uuid = flow.uuid
        self.name = flow.name
        self.state = flow.state.value
        self.version = flow.version
        self.meta = dumps(f"flow {flow.name!r} meta", flow.meta)
        self.atoms = [EncodedAtom(atom) for atom in flow.atoms.values()] if atoms else []


class EncodedAtom:
    """An atom detail encoded for its row."""

    def __init__(self, atom: AtomDetail) -> None:
        self.name = atom.name
        self.version = atom.version
        self.detail = atom_json(atom)


def atom_from_row(row: Sequence[Any]) -> AtomDetail:
    """An atom detail from a row of ``ATOM_COLUMNS``."""
    data = json.loads(row[4])
    data.update(name=row[2], version=row[3])
    return AtomDetail.model_validate(data)


def assemble(
    books: Iterable[Sequence[Any]], flows: Iterable[Sequence[Any]], atoms: Iterable[Sequence[Any]]
) -> list[LogBook]:
    """Logbooks from rows of ``BOOK_COLUMNS``, ``FLOW_COLUMNS`` and ``ATOM_COLUMNS``."""
    atoms_of: dict[tuple[str, str], dict[str, Any]] = {}
    for row in atoms:
        atom = atom_from_row(row)
        atoms_of.setdefault((row[0], row[1]), {})[atom.name] = atom
    flows_of: dict[str, dict[str, Any]] = {}
    for book_uuid, uuid, name, state, version, meta in flows:
        flows_of.setdefault(book_uuid, {})[uuid] = {
            "uuid": uuid,
            "name": name,
            "state": state,
            "version": version,
            "meta": json.loads(meta),
            "atoms": atoms_of.get((book_uuid, uuid), {}),
        }
    return [
        LogBook.model_validate(
            {
                "uuid": uuid,
                "name": name,
                "created_at": created_at,
                "updated_at": updated_at,
                "meta": json.loads(meta),
                "token": token,
                "flows": flows_of.get(uuid, {}),
            }
        )
        for uuid, name, created_at, updated_at, meta, token in books
    ]
