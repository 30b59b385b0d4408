"""The Redis store's records: logbooks and flows read back from their hashes, the arguments
the store's scripts take (see :mod:`aioconductor._backends.redis.store_scripts`), and the errors
their refusals stand for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from aioconductor._backends.redis.link import pairs
from aioconductor._fastjson import decode
from aioconductor._fastjson import plain
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
    "book_detail_arg",
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
    args: list[str] = []
    for name, atom in atoms.items():
        args += [name, _atom_json(atom, atom.version), str(atom.version)]
    return args


def _atom_json(atom: AtomDetail, version: int) -> str:
    """``atom`` at ``version`` as the store keeps it: the whole detail as JSON (name and
    version too), which ``AtomDetail.model_validate_json`` reads back; ``StoreError`` if JSON
    cannot carry it as it is (see :func:`~aioconductor.persistence._json.check_atoms`)."""
    fields = atom.__dict__
    # No failure (a model) and the free-form values plain: the fields as they are (an enum is
    # written as its value), without pydantic's serializer, which costs several times more.
    if (
        fields["failure"] is None
        and fields["revert_failure"] is None
        and _plain(fields["result"], fields["revert_result"], fields["meta"])
    ):
        fast = _encoded({**fields, "version": version})
        if fast is not None:
            return fast
    check_atoms((atom,))
    if version != atom.version:
        atom = evolve(atom, version=version)
    return atom.model_dump_json()


def _plain(*values: Any) -> bool:
    """Whether each of ``values`` is :func:`plain` JSON: None and an empty dict (most results
    and metas of a job's details) without the walk."""
    for value in values:
        if value is not None and not (type(value) is dict and not value) and not plain(value):
            return False
    return True


def _encoded(fields: dict[str, Any]) -> str | None:
    """``fields`` (their free-form values found plain) as JSON text; None if msgspec will not
    take one (a lone surrogate, a str subclass): the caller's strict path then."""
    try:
        return _encode(fields).decode("utf-8")
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return None


#: The encoder of plain values (see :mod:`aioconductor._fastjson`), for details whose own
#: fields are of known types: only their free-form values need :func:`plain`'s walk.
_encode = msgspec.json.Encoder().encode


def flow_from_hash(fields: dict[str, str]) -> FlowDetail:
    """A flow detail (with its atoms in the order they were added) from its hash."""
    names = sorted(
        (key[2:] for key in fields if key.startswith("i:")), key=lambda n: int(fields["i:" + n])
    )
    atoms = {name: AtomDetail.model_validate_json(fields["a:" + name]) for name in names}
    data = decode(fields["detail"])
    data.update(version=int(fields["version"]), atoms=atoms)
    return FlowDetail.model_validate(data)


def book_from_dump(dump: Sequence[Sequence[str]]) -> LogBook:
    """A logbook from a script's dump: the logbook's hash, then its flows' hashes."""
    fields = pairs(dump[0])
    order = {key[2:]: int(value) for key, value in fields.items() if key.startswith("f:")}
    flows = sorted((flow_from_hash(pairs(flat)) for flat in dump[1:]), key=lambda f: order[f.uuid])
    data = decode(fields["detail"])
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
    # Encoded first, which refuses what JSON cannot carry before anything is copied.
    args = update_args(atoms)
    return [copy_atom(atom, atom.version + 1) for atom in atoms], args


def update_args(atoms: Sequence[AtomDetail]) -> list[str]:
    """The script arguments of :func:`updates`, for a caller that has no use for the atoms as
    saved (none is copied: each is encoded at its version to be)."""
    args = [str(len(atoms))]
    for atom in atoms:
        args += [atom.name, _atom_json(atom, atom.version + 1), str(atom.version)]
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
    meta = flow.meta
    if _plain(meta):
        fast = _encoded({"uuid": flow.uuid, "name": flow.name, "state": flow.state, "meta": meta})
        if fast is not None:
            return fast
    check_meta(f"flow {flow.name!r} meta", meta)
    return flow.model_dump_json(exclude={"atoms", "version"})


def book_detail_arg(book: LogBook) -> str:
    """A logbook's detail as a script stores it: its JSON, without the fields its hash keeps
    apart (uuid, name, created_at, token) and its flows."""
    if _plain(book.updated_at, book.meta):
        fast = _encoded({"updated_at": book.updated_at, "meta": book.meta})
        if fast is not None:
            return fast
    check_meta(f"logbook {book.uuid} meta", book.meta)
    return book.model_dump_json(exclude={"uuid", "name", "created_at", "flows", "token"})
