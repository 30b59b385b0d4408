"""The Redis store's records: logbooks and flows read back from their hashes, the arguments
the store's scripts take (see :mod:`aioconductor._backends.redis.store_scripts`), and the errors
their refusals stand for."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aioconductor._backends.redis.link import pairs
from aioconductor._models import evolve
from aioconductor.errors import LogBookNotFound
from aioconductor.persistence._copy import copy_atom
from aioconductor.persistence._json import check_atoms
from aioconductor.persistence._json import check_meta
from aioconductor.persistence.base import check_version
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook

__all__ = [
    "atom_args",
    "book_from_dump",
    "flow_detail_arg",
    "flow_from_hash",
    "refused_atoms",
    "token_arg",
    "update_args",
    "updates",
]


def token_arg(token: int | None) -> str:
    """A fencing token as a script takes it: ``''`` for none."""
    return "" if token is None else str(int(token))


def atom_args(atoms: dict[str, AtomDetail]) -> list[str]:
    """The script arguments that save new ``atoms``: per atom its name, JSON and version."""
    check_atoms(atoms.values())
    args: list[str] = []
    for name, atom in atoms.items():
        args += [name, atom.model_dump_json(), str(atom.version)]
    return args


def flow_from_hash(fields: dict[str, str]) -> FlowDetail:
    """A flow detail (with its atoms in the order they were added) from its hash."""
    names = sorted(
        (key[2:] for key in fields if key.startswith("i:")), key=lambda n: int(fields["i:" + n])
    )
    atoms = {name: AtomDetail.model_validate_json(fields["a:" + name]) for name in names}
    data = json.loads(fields["detail"])
    data.update(version=int(fields["version"]), atoms=atoms)
    return FlowDetail.model_validate(data)


def book_from_dump(dump: Sequence[Sequence[str]]) -> LogBook:
    """A logbook from a script's dump: the logbook's hash, then its flows' hashes."""
    fields = pairs(dump[0])
    order = {key[2:]: int(value) for key, value in fields.items() if key.startswith("f:")}
    flows = sorted((flow_from_hash(pairs(flat)) for flat in dump[1:]), key=lambda f: order[f.uuid])
    data = json.loads(fields["detail"])
    data.update(
        uuid=fields["uuid"],
        name=fields["name"],
        created_at=float(fields["created_at"]),
        token=int(fields["token"]) if "token" in fields else None,
        flows={flow.uuid: flow for flow in flows},
    )
    return LogBook.model_validate(data)


def updates(atoms: Sequence[AtomDetail]) -> tuple[list[AtomDetail], list[str]]:
    """``atoms`` as their writes will save them (versions bumped), and the script arguments
    that write them: their count, then per atom its name, JSON and the version read."""
    check_atoms(atoms)
    saved = [copy_atom(atom, atom.version + 1) for atom in atoms]
    args = [str(len(atoms))]
    for atom, new in zip(atoms, saved, strict=True):
        args += [atom.name, new.model_dump_json(), str(atom.version)]
    return saved, args


def update_args(atoms: Sequence[AtomDetail]) -> list[str]:
    """The script arguments of :func:`updates`, for a caller that has no use for the atoms as
    saved (so none is copied but to set its version for the JSON)."""
    check_atoms(atoms)
    args = [str(len(atoms))]
    for atom in atoms:
        new = evolve(atom, version=atom.version + 1)
        args += [atom.name, new.model_dump_json(), str(atom.version)]
    return args


def refused_atoms(
    reply: Sequence[Any],
    book_uuid: str,
    flow_uuid: str,
    atoms: Sequence[AtomDetail],
    *,
    stale: str,
) -> None:
    """Raise what a script's refusal of ``atoms`` stands for: no such flow, or the atom it
    names (reply ``{stale, name, stored version}``) was stale."""
    if reply[0] == "noflow":
        raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow_uuid!r}")
    if reply[0] == stale:
        given = next(atom.version for atom in atoms if atom.name == reply[1])
        check_version(f"atom {reply[1]!r}", int(reply[2]), given)


def flow_detail_arg(flow: FlowDetail) -> str:
    """A flow detail as a script stores it: its JSON, without atoms and version."""
    check_meta(f"flow {flow.name!r} meta", flow.meta)
    return flow.model_dump_json(exclude={"atoms", "version"})
