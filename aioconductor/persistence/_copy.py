"""Copies of store details that share nothing mutable with the original.

A store hands callers details they may change, and keeps (or returns) details callers must
not reach into; these copies cut the link without pydantic's generic ``deepcopy``.
Failures are frozen, so they are shared.
"""

from __future__ import annotations

from aioconductor._models import copy_json
from aioconductor._models import evolve
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook

__all__ = ["copy_atom", "copy_book", "copy_flow", "created_book"]


def copy_atom(atom: AtomDetail, version: int | None = None) -> AtomDetail:
    """A copy of ``atom`` (at ``version``, when given)."""
    return evolve(
        atom,
        version=atom.version if version is None else version,
        result=copy_json(atom.result),
        revert_result=copy_json(atom.revert_result),
        meta=copy_json(atom.meta),
    )


def copy_flow(flow: FlowDetail, version: int | None = None) -> FlowDetail:
    """A copy of ``flow`` and its atoms (the flow at ``version``, when given)."""
    atoms = {name: copy_atom(atom) for name, atom in flow.atoms.items()}
    return evolve(
        flow,
        version=flow.version if version is None else version,
        meta=copy_json(flow.meta),
        atoms=atoms,
    )


def copy_book(book: LogBook) -> LogBook:
    """A copy of ``book`` and its flows."""
    flows = {flow_uuid: copy_flow(flow) for flow_uuid, flow in book.flows.items()}
    return evolve(book, meta=copy_json(book.meta), flows=flows)


def created_book(book: LogBook, token: int | None) -> LogBook:
    """``book`` as a store holds it right after creating it (with the token it stored): a new
    logbook holds exactly what was given, so a store need not read it back. It shares the
    given book's details (the caller's own, which the store keeps no reference to)."""
    return evolve(book, token=token)
