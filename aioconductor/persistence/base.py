"""The `Store` contract: where engines save the progress of their flows.

Every backend subclasses :class:`Store` and implements the ``_``-prefixed primitives; the public
methods here check the store is open and validate input, so each backend stays small.

Fencing: a write made for a claimed job carries the claim's ``token``. The store remembers the
highest token that wrote to each logbook and refuses an older one with ``ClaimLost``, so an owner
that lost its claim can never overwrite the progress of the owner that holds it now. Versions:
every flow and atom detail carries the ``version`` it was read at; a write of an older version
raises ``VersionConflict``, and a successful write returns the detail with its version bumped.

Isolation: a store keeps no reference to what it is given, and gives out nothing it keeps, so
no caller can change saved progress but through a write. What a write returns may share
values (a result, a meta) with what it was given: those are the caller's own.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence

from aioconductor._lifecycle import Lifecycle
from aioconductor._urls import BOARD_OPTIONS
from aioconductor._urls import validate_namespace
from aioconductor.errors import ClaimLost
from aioconductor.errors import ConfigurationError
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import StoreClosed
from aioconductor.errors import VersionConflict
from aioconductor.persistence._copy import copy_flow
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook

__all__ = [
    "Store",
    "check_flow_write",
    "check_token",
    "check_version",
]


class Store(Lifecycle):
    """An async store of logbooks. Use it inside ``async with`` or call ``connect``/``aclose``.

    Args:
        namespace: isolates this application's logbooks from another's on a shared backend.
        migrate: create or upgrade the store's schema when connecting (the default). False
            for read-only tools (``open_store(url, migrate=False)``): nothing is created or
            written (a SQLite file that does not exist stays so), and a store whose schema is
            missing or older refuses to connect with
            :class:`~aioconductor.errors.SchemaMissing`. The Redis and memory stores create
            nothing on connect either way.
    """

    #: The namespace that isolates this application's logbooks from another's.
    namespace: str

    closed_error = StoreClosed
    kind = "store"

    url_options: frozenset[str] = frozenset()
    ignored_url_options: frozenset[str] = BOARD_OPTIONS

    def __init__(self, *, namespace: str = "default", migrate: bool = True) -> None:
        super().__init__()
        self.namespace = validate_namespace(namespace)
        #: Whether connecting creates or upgrades the store's schema (the default); False for
        #: read-only tools: nothing is created or written, and a store whose schema is
        #: missing or older refuses to connect with :class:`~aioconductor.errors.SchemaMissing`.
        self.migrate = bool(migrate)

    # -- public verbs ------------------------------------------------------------------------

    async def save_logbook(self, book: LogBook, *, token: int | None = None) -> LogBook:
        """Create ``book``, or update a saved one's name and meta and add its new flow details.

        Flow details already saved are left as they are (update them with
        :meth:`update_flow_detail` and :meth:`update_atom_detail`).

        Returns:
            The logbook as saved.

        Raises:
            ClaimLost: ``token`` is older than a token that already wrote to this logbook.
            ConfigurationError: a flow or atom detail is filed under a key that is not its
                ``uuid`` or ``name``.
        """
        self._check_open()
        for flow in book.flows.values():
            _check_keys(flow)
        _check_keys(book)
        return await self._save_logbook(book, token)

    async def get_logbook(self, book_uuid: str) -> LogBook:
        """The saved logbook with all its flow and atom details.

        Raises:
            LogBookNotFound: no logbook has that uuid.
        """
        self._check_open()
        return await self._get_logbook(book_uuid)

    async def update_flow_detail(
        self,
        book_uuid: str,
        flow: FlowDetail,
        *,
        token: int | None = None,
        atoms: Sequence[AtomDetail] = (),
    ) -> FlowDetail:
        """Save a flow detail's own fields (name, state, meta; not its atoms).

        A flow detail the logbook does not hold yet is added (its version must be 0).

        ``atoms`` are atom details of this (saved) flow to write in the same atomic write,
        each checked as :meth:`update_atom_detail` checks it: the engine saves a flow's last
        task and the flow's end together, one round trip instead of two. If any check fails,
        nothing is written.

        Returns:
            The saved flow detail, version bumped, with its atoms as stored (``atoms``
            included, their versions bumped).

        Raises:
            LogBookNotFound: no logbook has that uuid, or ``atoms`` are given for a flow the
                logbook does not hold.
            VersionConflict: ``flow.version`` (or an atom's version) is not the stored version.
            ClaimLost: ``token`` is older than a token that already wrote to this logbook.
            ConfigurationError: an atom detail is filed under a key that is not its ``name``,
                or ``atoms`` names one atom twice.
        """
        self._check_open()
        _check_keys(flow)
        if len({atom.name for atom in atoms}) != len(atoms):
            raise ConfigurationError(f"{flow.name!r}: atoms to save name one atom twice")
        return await self._update_flow_detail(book_uuid, flow, token, tuple(atoms))

    async def update_atom_detail(
        self, book_uuid: str, flow_uuid: str, atom: AtomDetail, *, token: int | None = None
    ) -> AtomDetail:
        """Save one atom detail of a flow (added if the flow does not hold it yet).

        Returns:
            The saved atom detail, version bumped.

        Raises:
            LogBookNotFound: no logbook or flow detail has that uuid.
            VersionConflict: ``atom.version`` is not the stored version.
            ClaimLost: ``token`` is older than a token that already wrote to this logbook.
        """
        self._check_open()
        return await self._update_atom_detail(book_uuid, flow_uuid, atom, token)

    async def update_atom_details(
        self,
        book_uuid: str,
        flow_uuid: str,
        atoms: Sequence[AtomDetail],
        *,
        token: int | None = None,
    ) -> list[AtomDetail]:
        """Save several atom details of one flow in one atomic write (the engine saves a
        task's end and the next task's start together).

        Each is checked as :meth:`update_atom_detail` checks it; if any check fails, nothing
        is written.

        Returns:
            The saved atom details, versions bumped, in the order given.

        Raises:
            LogBookNotFound: no logbook or flow detail has that uuid.
            VersionConflict: an atom's version is not the stored version.
            ClaimLost: ``token`` is older than a token that already wrote to this logbook.
            ConfigurationError: ``atoms`` is empty or names one atom twice.
        """
        self._check_open()
        if not atoms or len({atom.name for atom in atoms}) != len(atoms):
            raise ConfigurationError("atoms to save must be one or more distinct atoms")
        return await self._update_atom_details(book_uuid, flow_uuid, tuple(atoms), token)

    async def destroy_logbook(self, book_uuid: str) -> None:
        """Delete a logbook and everything in it.

        Raises:
            LogBookNotFound: no logbook has that uuid.
        """
        self._check_open()
        await self._destroy_logbook(book_uuid)

    async def destroy_logbooks(self, book_uuids: Sequence[str]) -> int:
        """Delete the logbooks with these uuids (those that do not exist are skipped), in one
        round trip where the backend can; how many were deleted.

        A board's ``purge`` deletes the logbooks of each batch of jobs this way.
        """
        self._check_open()
        unique = list(dict.fromkeys(str(book_uuid) for book_uuid in book_uuids))
        return await self._destroy_logbooks(unique) if unique else 0

    async def logbooks(self) -> AsyncIterator[LogBook]:
        """Every logbook in this store's namespace, oldest first."""
        self._check_open()
        async for book in self._logbooks():
            yield book

    # -- backend primitives --------------------------------------------------------------------

    @abc.abstractmethod
    async def _save_logbook(self, book: LogBook, token: int | None) -> LogBook: ...

    @abc.abstractmethod
    async def _get_logbook(self, book_uuid: str) -> LogBook: ...

    @abc.abstractmethod
    async def _update_flow_detail(
        self, book_uuid: str, flow: FlowDetail, token: int | None, atoms: tuple[AtomDetail, ...]
    ) -> FlowDetail: ...

    async def _update_atom_detail(
        self, book_uuid: str, flow_uuid: str, atom: AtomDetail, token: int | None
    ) -> AtomDetail:
        """One atom's write: the many-atom write of one (a backend may override it with a
        cheaper one)."""
        (saved,) = await self._update_atom_details(book_uuid, flow_uuid, (atom,), token)
        return saved

    @abc.abstractmethod
    async def _update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: tuple[AtomDetail, ...], token: int | None
    ) -> list[AtomDetail]: ...

    @abc.abstractmethod
    async def _destroy_logbook(self, book_uuid: str) -> None: ...

    async def _destroy_logbooks(self, book_uuids: list[str]) -> int:
        """Delete each logbook that exists; one ``_destroy_logbook`` each unless a backend
        does better."""
        deleted = 0
        for book_uuid in book_uuids:
            try:
                await self._destroy_logbook(book_uuid)
            except LogBookNotFound:
                continue
            deleted += 1
        return deleted

    @abc.abstractmethod
    def _logbooks(self) -> AsyncIterator[LogBook]: ...


def _check_keys(parent: LogBook | FlowDetail) -> None:
    """Refuse details filed under a key that is not their own: backends key them by it."""
    children: dict[str, FlowDetail] | dict[str, AtomDetail]
    if isinstance(parent, LogBook):
        children, field = parent.flows, "uuid"
    else:
        children, field = parent.atoms, "name"
    for key, child in children.items():
        own = getattr(child, field)
        if key != own:
            raise ConfigurationError(
                f"{parent.name!r}: detail {own!r} is filed under key {key!r}; key it by its {field}"
            )


def check_token(book_uuid: str, stored: int | None, token: int | None) -> int | None:
    """The token to store after a write carrying ``token``; raise ``ClaimLost`` if stale."""
    if token is None:
        return stored
    if stored is not None and token < stored:
        raise ClaimLost(
            f"logbook {book_uuid}: write with fencing token {token} refused, "
            f"token {stored} already wrote to it"
        )
    return token if stored is None else max(stored, token)


def check_version(what: str, stored: int, given: int) -> None:
    """Raise ``VersionConflict`` unless a write of version ``given`` may replace ``stored``."""
    if stored != given:
        raise VersionConflict(f"{what}: version {given} is stale, the store holds version {stored}")


def check_flow_write(
    book_uuid: str, flow: FlowDetail, token: int | None, stored: tuple[int | None, int | None]
) -> tuple[int | None, FlowDetail]:
    """Check a write of ``flow`` against the logbook's token and the flow's version as
    ``stored`` (a version of None: a flow the logbook does not hold yet), for a store that read
    them in the write's transaction.

    Returns:
        The token to store, and the flow as it will be saved (its version bumped).

    Raises:
        ClaimLost: ``token`` is stale.
        VersionConflict: ``flow.version`` is not the stored one (0 for a new flow).
    """
    stored_token, stored_version = stored
    new_token = check_token(book_uuid, stored_token, token)
    check_version(f"flow {flow.name!r}", stored_version or 0, flow.version)
    return new_token, copy_flow(flow, flow.version + 1)
