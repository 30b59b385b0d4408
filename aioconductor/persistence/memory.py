"""`MemoryStore`: logbooks in this process's memory; the reference semantics and a test fake."""

from __future__ import annotations

from collections.abc import AsyncIterator

from anyio.lowlevel import checkpoint

from aioconductor.errors import LogBookNotFound
from aioconductor.persistence.base import Store, check_token, check_version
from aioconductor.persistence.models import AtomDetail, FlowDetail, LogBook

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """A store that keeps logbooks in a dict. Nothing survives the process.

    Every verb starts with a checkpoint, so cancellation reaches it where it would reach a
    networked store, and never after its change was made.
    """

    def __init__(self, *, namespace: str = "default") -> None:
        super().__init__(namespace=namespace)
        self._books: dict[str, LogBook] = {}

    async def _connect(self) -> None:
        await checkpoint()

    async def _aclose(self) -> None:
        await checkpoint()

    def _book(self, book_uuid: str) -> LogBook:
        try:
            return self._books[book_uuid]
        except KeyError:
            raise LogBookNotFound(f"no logbook {book_uuid!r} in this store") from None

    async def _save_logbook(self, book: LogBook, token: int | None) -> LogBook:
        await checkpoint()
        stored = self._books.get(book.uuid)
        if stored is None:
            stored = book.model_copy(deep=True)
            stored.token = check_token(book.uuid, None, token)
            self._books[book.uuid] = stored
        else:
            stored.token = check_token(book.uuid, stored.token, token)
            stored.name = book.name
            stored.meta = dict(book.meta)
            stored.updated_at = book.updated_at
            for flow_uuid, flow in book.flows.items():
                stored.flows.setdefault(flow_uuid, flow.model_copy(deep=True))
        return stored.model_copy(deep=True)

    async def _get_logbook(self, book_uuid: str) -> LogBook:
        await checkpoint()
        return self._book(book_uuid).model_copy(deep=True)

    async def _update_flow_detail(
        self, book_uuid: str, flow: FlowDetail, token: int | None
    ) -> FlowDetail:
        await checkpoint()
        book = self._book(book_uuid)
        new_token = check_token(book_uuid, book.token, token)
        stored = book.flows.get(flow.uuid)
        check_version(f"flow {flow.name!r}", stored.version if stored else 0, flow.version)
        atoms = stored.atoms if stored is not None else {}
        saved = flow.model_copy(
            update={"version": flow.version + 1, "atoms": atoms, "meta": dict(flow.meta)},
            deep=False,
        )
        if stored is None:
            saved.atoms = {name: a.model_copy(deep=True) for name, a in flow.atoms.items()}
        book.flows[flow.uuid] = saved
        book.token = new_token
        return saved.model_copy(deep=True)

    async def _update_atom_detail(
        self, book_uuid: str, flow_uuid: str, atom: AtomDetail, token: int | None
    ) -> AtomDetail:
        await checkpoint()
        book = self._book(book_uuid)
        new_token = check_token(book_uuid, book.token, token)
        try:
            flow = book.flows[flow_uuid]
        except KeyError:
            raise LogBookNotFound(f"logbook {book_uuid!r} has no flow {flow_uuid!r}") from None
        stored = flow.atoms.get(atom.name)
        check_version(f"atom {atom.name!r}", stored.version if stored else 0, atom.version)
        saved = atom.model_copy(update={"version": atom.version + 1}, deep=True)
        flow.atoms[atom.name] = saved
        book.token = new_token
        return saved.model_copy(deep=True)

    async def _destroy_logbook(self, book_uuid: str) -> None:
        await checkpoint()
        self._book(book_uuid)
        del self._books[book_uuid]

    async def _logbooks(self) -> AsyncIterator[LogBook]:
        for book in sorted(self._books.values(), key=lambda b: b.created_at):
            await checkpoint()
            yield book.model_copy(deep=True)
