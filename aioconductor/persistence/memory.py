"""`MemoryStore`: logbooks in this process's memory; the reference semantics and a test fake."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

from anyio.lowlevel import checkpoint

from aioconductor._backends.memory.backend import InMemory
from aioconductor._backends.memory.backend import open_backend
from aioconductor._models import build_from
from aioconductor._models import copy_json
from aioconductor._models import evolve
from aioconductor.errors import LogBookNotFound
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.persistence._copy import copy_atom
from aioconductor.persistence._copy import copy_book
from aioconductor.persistence._copy import copy_flow
from aioconductor.persistence._copy import created_book
from aioconductor.persistence._json import check_atoms
from aioconductor.persistence._json import check_meta
from aioconductor.persistence.base import Store
from aioconductor.persistence.base import check_token
from aioconductor.persistence.base import check_version
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook
from aioconductor.persistence.runs import FusedClaim
from aioconductor.persistence.runs import RunTemplate
from aioconductor.persistence.runs import is_first_run
from aioconductor.persistence.runs import new_flow_uuid
from aioconductor.persistence.runs import new_run

__all__ = ["MemoryStore"]


class MemoryStore(InMemory, Store):
    """A store that keeps logbooks in a dict. Nothing survives the process.

    ``memory://`` is a private store; ``memory://NAME`` shares the process-wide backend NAME
    with every store opened with that URL (each namespace its own space), like the memory board.

    Every verb starts with a checkpoint, so cancellation reaches it where it would reach a
    networked store, and never after its change was made.

    Args:
        namespace: isolates one application's logbooks from another's on a shared backend.
        backend_name: share the backend of that name; a private one when None.
        migrate: accepted for ``open_store(url, migrate=False)``; a memory store has no
            schema to create.
    """

    def __init__(
        self, *, namespace: str = "default", backend_name: str | None = None, migrate: bool = True
    ) -> None:
        super().__init__(namespace=namespace, migrate=migrate)
        self._books = open_backend(backend_name).logbooks(namespace)

    def _book(self, book_uuid: str) -> LogBook:
        try:
            return self._books[book_uuid]
        except KeyError:
            raise LogBookNotFound(f"no logbook {book_uuid!r} in this store") from None

    async def _save_logbook(self, book: LogBook, token: int | None) -> LogBook:
        await checkpoint()
        check_meta(f"logbook {book.uuid} meta", book.meta)
        for flow in book.flows.values():
            check_meta(f"flow {flow.name!r} meta", flow.meta)
            check_atoms(flow.atoms.values())
        stored = self._books.get(book.uuid)
        if stored is None:
            new_token = check_token(book.uuid, None, token)
            self._books[book.uuid] = evolve(copy_book(book), token=new_token)
            return created_book(book, new_token)
        else:
            stored.token = check_token(book.uuid, stored.token, token)
            stored.name = book.name
            stored.meta = copy_json(book.meta)
            stored.updated_at = book.updated_at
            for flow_uuid, flow in book.flows.items():
                stored.flows.setdefault(flow_uuid, copy_flow(flow))
        return copy_book(stored)

    async def _get_logbook(self, book_uuid: str) -> LogBook:
        await checkpoint()
        return copy_book(self._book(book_uuid))

    async def _update_flow_detail(
        self, book_uuid: str, flow: FlowDetail, token: int | None, atoms: tuple[AtomDetail, ...]
    ) -> FlowDetail:
        await checkpoint()
        book = self._book(book_uuid)
        new_token = check_token(book_uuid, book.token, token)
        stored = book.flows.get(flow.uuid)
        check_version(f"flow {flow.name!r}", stored.version if stored else 0, flow.version)
        if atoms:
            if stored is None:
                raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow.uuid!r}")
            for atom in atoms:
                _check_atom_version(stored, atom)
        check_meta(f"flow {flow.name!r} meta", flow.meta)
        check_atoms(atoms if stored is not None else flow.atoms.values())  # what is saved
        saved_atoms = stored.atoms if stored is not None else {}
        for atom in atoms:
            saved_atoms[atom.name] = copy_atom(atom, atom.version + 1)
        saved = evolve(flow, version=flow.version + 1, atoms=saved_atoms, meta=copy_json(flow.meta))
        if stored is None:
            saved.atoms = {name: copy_atom(a) for name, a in flow.atoms.items()}
        book.flows[flow.uuid] = saved
        book.token = new_token
        if not atoms:
            return copy_flow(saved)
        # What was written is returned as given (one version up); what was not, copied.
        written = {atom.name: evolve(atom, version=atom.version + 1) for atom in atoms}
        returned = {name: written.get(name) or copy_atom(a) for name, a in saved_atoms.items()}
        return evolve(flow, version=saved.version, atoms=returned)

    async def _update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: tuple[AtomDetail, ...], token: int | None
    ) -> list[AtomDetail]:
        await checkpoint()
        book = self._book(book_uuid)
        new_token = check_token(book_uuid, book.token, token)
        try:
            flow = book.flows[flow_uuid]
        except KeyError:
            raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow_uuid!r}") from None
        for atom in atoms:
            _check_atom_version(flow, atom)
        check_atoms(atoms)
        for atom in atoms:
            flow.atoms[atom.name] = copy_atom(atom, atom.version + 1)
        book.token = new_token
        # As given, one version up: the caller's own values, none of the store's.
        return [evolve(atom, version=atom.version + 1) for atom in atoms]

    def fused_claim(self, board: object, templates: Mapping[str, RunTemplate]) -> FusedClaim | None:
        """Jobs claimed (as ``board.claim_batch`` claims them) and the runs of those of
        ``templates``' flows that never ran created (see :mod:`aioconductor.persistence.runs`),
        with nothing awaited between
        the two: no other task of this process sees the one without the other. None unless
        ``board`` is a memory board (in this process, as this store is)."""
        from aioconductor.boards.memory import MemoryJobBoard

        if not isinstance(board, MemoryJobBoard):
            return None
        books = self._books

        async def claim(
            owner: str, limit: int, lease: float
        ) -> list[tuple[Job, Claim, FlowDetail | None]]:
            self._check_open()
            claimed = await board.claim_batch(owner, limit, lease=lease)
            now = time.time()
            out: list[tuple[Job, Claim, FlowDetail | None]] = []
            for job, claim in claimed:
                template = templates.get(job.flow)
                created = None
                if template is not None and is_first_run(job, claim) and job.id not in books:
                    created = new_run(new_flow_uuid(), template.detail, template.first, now)
                    books[job.id] = _new_book(job.id, job.name, now, claim.token, created)
                out.append((job, claim, created))
            return out

        return claim

    async def _destroy_logbook(self, book_uuid: str) -> None:
        await checkpoint()
        self._book(book_uuid)
        del self._books[book_uuid]

    async def _destroy_logbooks(self, book_uuids: list[str]) -> int:
        await checkpoint()
        books = self._books
        found = [book_uuid for book_uuid in book_uuids if book_uuid in books]
        for book_uuid in found:
            del books[book_uuid]
        return len(found)

    async def _logbooks(self) -> AsyncIterator[LogBook]:
        for book in sorted(self._books.values(), key=lambda b: b.created_at):
            await checkpoint()
            yield copy_book(book)


def _new_book(uuid: str, name: str, now: float, token: int, run: FlowDetail) -> LogBook:
    """A new logbook holding (a copy of) ``run``, as this store keeps it."""
    values = {"uuid": uuid, "name": name, "created_at": now, "updated_at": now, "meta": {}}
    values.update(flows={run.uuid: copy_flow(run)}, token=token)
    return build_from(LogBook, values)


def _check_atom_version(flow: FlowDetail, atom: AtomDetail) -> None:
    stored = flow.atoms.get(atom.name)
    check_version(f"atom {atom.name!r}", stored.version if stored else 0, atom.version)
