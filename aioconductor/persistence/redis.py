"""`RedisStore`: logbooks in Redis, with fenced writes checked on the server.

``redis://[[user]:password@]host[:port][/db]?namespace=NAME`` (``rediss://`` for TLS). Every
write is one Lua script that checks the logbook's fencing token and the detail's version before
it changes anything, so a writer holding a stale token or version changes nothing. An atom write
sends that one atom, never the whole logbook. Key layout: see
:mod:`aioconductor._backends.redis.store_scripts`.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Self, cast

from redis.commands.core import AsyncScript

from aioconductor._backends.base import OverLink
from aioconductor._backends.redis import board_records
from aioconductor._backends.redis import scripts
from aioconductor._backends.redis import store_records as records
from aioconductor._backends.redis.fused import END_AND_CONSUME
from aioconductor._backends.redis.fused_claim import CLAIM_AND_CREATE
from aioconductor._backends.redis.fused_claim import template_args
from aioconductor._backends.redis.link import RedisLink
from aioconductor._backends.redis.link import fmt_time
from aioconductor._backends.redis.link import hash_tag_prefix
from aioconductor._backends.redis.link import pairs
from aioconductor._backends.redis.store_scripts import StoreScripts
from aioconductor._payload import encode_json
from aioconductor._urls import ParsedURL
from aioconductor.errors import LogBookNotFound
from aioconductor.errors import StoreClosed
from aioconductor.errors import StoreError
from aioconductor.models import Claim
from aioconductor.models import Job
from aioconductor.models import Outcome
from aioconductor.persistence._copy import created_book
from aioconductor.persistence.base import Store
from aioconductor.persistence.base import check_token
from aioconductor.persistence.base import check_version
from aioconductor.persistence.models import AtomDetail
from aioconductor.persistence.models import FlowDetail
from aioconductor.persistence.models import LogBook
from aioconductor.persistence.runs import FusedClaim
from aioconductor.persistence.runs import RunTemplate
from aioconductor.persistence.runs import new_flow_uuid
from aioconductor.persistence.runs import new_run

__all__ = ["RedisStore"]

_CHUNK = 200


class RedisStore(OverLink[RedisLink], Store):
    """A store of logbooks on Redis: fenced, versioned writes, each one Lua script.

    Open it with ``open_store("redis://host:6379/0?namespace=NAME")``; the URL's password is
    never shown in reprs, logs or errors.

    Args:
        driver_url: the Redis URL without the library's options.
        namespace: isolates this application's logbooks from another's on the same Redis.
        migrate: accepted for ``open_store(url, migrate=False)``; connecting writes nothing
            either way (keys are made by the first write).
    """

    def __init__(
        self,
        *,
        driver_url: str = "redis://127.0.0.1:6379/0",
        namespace: str = "default",
        migrate: bool = True,
    ) -> None:
        super().__init__(namespace=namespace, migrate=migrate)
        self._link = RedisLink(driver_url, StoreClosed)
        self._prefix = hash_tag_prefix(namespace)
        self._scripts = scripts.load(StoreScripts, self._link.client)

    @classmethod
    def from_url(cls, parsed: ParsedURL, **kwargs: Any) -> Self:
        """Build the store for a parsed ``redis://`` or ``rediss://`` URL; not yet connected."""
        kwargs.setdefault("driver_url", parsed.driver_url)
        return super().from_url(parsed, **kwargs)

    # -- keys and calls ------------------------------------------------------------------------

    def _book_key(self, book_uuid: str) -> str:
        return f"{self._prefix}book:{book_uuid}"

    def _flow_prefix(self, book_uuid: str) -> str:
        return f"{self._prefix}flow:{book_uuid}:"

    async def _write(
        self, script: AsyncScript, what: str, keys: list[str], book_uuid: str, args: list[str]
    ) -> list[Any]:
        """Run write ``script`` once: a lost reply is not retried (it may have written)."""
        argv = [self._flow_prefix(book_uuid), *args]
        reply = await self._link.run_script(what, script, keys, argv)
        return cast(list[Any], reply)

    def _refused(self, reply: Sequence[Any], book_uuid: str, token: int | None) -> None:
        """Raise the error a script's refusal stands for (nothing if it said ``ok``)."""
        status = reply[0]
        if status == "notfound":
            raise LogBookNotFound(f"no logbook {book_uuid!r} in this store")
        if status == "lost":
            check_token(book_uuid, int(reply[1]), token)  # raises ClaimLost
        if status != "ok":
            raise StoreError(f"unexpected reply {status!r} from Redis for logbook {book_uuid}")

    # -- primitives ----------------------------------------------------------------------------

    async def _save_logbook(self, book: LogBook, token: int | None) -> LogBook:
        detail = records.book_detail_arg(book)
        args = [records.token_arg(token), book.uuid, book.name, detail, fmt_time(book.created_at)]
        args.append(str(len(book.flows)))
        for flow in book.flows.values():
            flow_detail = records.flow_detail_arg(flow)
            args += [flow.uuid, flow_detail, str(flow.version), str(len(flow.atoms))]
            args += records.atom_args(flow.atoms)
        keys = [self._prefix + "books", self._book_key(book.uuid)]
        script = self._scripts.save_logbook
        reply = await self._write(script, "save_logbook", keys, book.uuid, args)
        if reply[0] == "created":
            return created_book(book, token)
        self._refused(reply, book.uuid, token)
        return records.book_from_dump(reply[1])

    async def _get_logbook(self, book_uuid: str) -> LogBook:
        book = await self._read_book(book_uuid)
        if book is None:
            raise LogBookNotFound(f"no logbook {book_uuid!r} in this store")
        return book

    async def _read_book(self, book_uuid: str) -> LogBook | None:
        script = self._scripts.get
        keys = [self._book_key(book_uuid)]
        argv = [self._flow_prefix(book_uuid)]
        reply = await self._link.read("get_logbook", lambda: self._link.script(script, keys, argv))
        return records.book_from_dump(reply[1]) if reply[0] == "ok" else None

    def _flow_update(
        self, book_uuid: str, flow: FlowDetail, token: int | None, atoms: tuple[AtomDetail, ...]
    ) -> tuple[list[str], list[str]]:
        """The keys and arguments of ``UPDATE_FLOW`` (the flow key prefix first)."""
        args = [records.token_arg(token), flow.uuid, records.flow_detail_arg(flow)]
        args.append(str(flow.version))
        # The script saves a flow's own atoms only when it creates the flow, which a write
        # of version > 0 never does (it would be refused as stale), nor one that updates
        # atoms (refused, the flow unknown, with 'noflow'): skip encoding them then.
        new_atoms = flow.atoms if flow.version == 0 and not atoms else {}
        args += [str(len(new_atoms)), *records.atom_args(new_atoms)]
        args += records.update_args(atoms)
        keys = [self._book_key(book_uuid), self._flow_prefix(book_uuid) + flow.uuid]
        return keys, [self._flow_prefix(book_uuid), *args]

    async def _update_flow_detail(
        self, book_uuid: str, flow: FlowDetail, token: int | None, atoms: tuple[AtomDetail, ...]
    ) -> FlowDetail:
        keys, argv = self._flow_update(book_uuid, flow, token, atoms)
        script = self._scripts.update_flow
        reply = await self._link.run_script("update_flow_detail", script, keys, argv)
        return self._flow_updated(reply, book_uuid, flow, token, atoms)

    def _flow_updated(
        self,
        reply: list[Any],
        book_uuid: str,
        flow: FlowDetail,
        token: int | None,
        atoms: tuple[AtomDetail, ...],
    ) -> FlowDetail:
        """The saved flow of ``UPDATE_FLOW``'s reply, or the error its refusal stands for."""
        self._flow_refused(reply, book_uuid, flow, token, atoms)
        return records.flow_from_hash(pairs(reply[1]))

    def _flow_refused(
        self,
        reply: list[Any],
        book_uuid: str,
        flow: FlowDetail,
        token: int | None,
        atoms: tuple[AtomDetail, ...],
    ) -> None:
        """Raise the error a refusal of ``UPDATE_FLOW`` (or ``UPDATE_FLOW_UNREAD``) stands for;
        nothing if it said ``ok``."""
        if reply[0] == "conflict":
            check_version(f"flow {flow.name!r}", int(reply[1]), flow.version)
        records.refused_atoms(reply, book_uuid, flow.uuid, atoms, stale="atomconflict")
        self._refused(reply, book_uuid, token)

    async def _update_atom_details(
        self, book_uuid: str, flow_uuid: str, atoms: tuple[AtomDetail, ...], token: int | None
    ) -> list[AtomDetail]:
        saved, updates = records.updates(atoms)
        args = [records.token_arg(token), flow_uuid, *updates]
        keys = [self._book_key(book_uuid), self._flow_prefix(book_uuid) + flow_uuid]
        script = self._scripts.update_atoms
        reply = await self._write(script, "update_atom_details", keys, book_uuid, args)
        records.refused_atoms(reply, book_uuid, flow_uuid, atoms, stale="conflict")
        self._refused(reply, book_uuid, token)
        return saved

    def fused_ending(self, board: object) -> Callable[..., Awaitable[None]] | None:
        """``consume(claim, outcome, result, book_uuid, flow, token, atoms)``: the flow's end
        saved (as :meth:`update_flow_detail` saves it) and the job consumed (as
        ``board.consume`` does) in one script, fenced by the claim's token (see
        :mod:`aioconductor._backends.redis.fused`); the consumed job is not read back (read it
        from the board). None unless ``board`` is a Redis board on
        this store's server (the same URL) and namespace."""
        from aioconductor.boards.redis import RedisJobBoard

        if not isinstance(board, RedisJobBoard):
            return None
        blink = board._link
        if blink.url != self._link.url or board._prefix != self._prefix:
            return None
        script = blink.client.register_script(END_AND_CONSUME)

        async def consume(
            claim: Claim,
            outcome: Outcome,
            result: dict[str, Any],
            book_uuid: str,
            flow: FlowDetail,
            token: int | None,
            atoms: tuple[AtomDetail, ...],
        ) -> None:
            board._check_open()
            self._check_open()
            # Not encode_object: nothing reads the result decoded back.
            data = encode_json("the job's result", result, board.max_payload_bytes)
            bkeys = [*board._keys, board._job_key(claim.job_id)]
            bargs = [board._job_prefix, board._channel, claim.owner, str(claim.token)]
            bargs += [outcome.value, data.decode("utf-8")]
            skeys, sargs = self._flow_update(book_uuid, flow, token, atoms)
            keys = [*bkeys, *skeys]
            argv = [str(len(bkeys)), str(len(bargs)), *bargs, *sargs]
            reply = await blink.run_script("consume", script, keys, argv)
            status = reply[0]
            if status == "ok":  # the job as consumed is not sent back: nobody reads it
                board._finished(claim.job_id)
                return
            if status == "board":  # the board's refusal: raises what it stands for
                board_records.checked_job(reply[1], claim.job_id, "consume", claim)
            elif status == "store":  # the store's refusal: raises what it stands for
                self._flow_refused(reply[1], book_uuid, flow, token, atoms)
            raise StoreError(f"unexpected reply {status!r} from Redis for job {claim.job_id}")

        return consume

    def fused_claim(self, board: object, templates: Mapping[str, RunTemplate]) -> FusedClaim | None:
        """Jobs claimed (as ``board.claim_batch`` claims them) and the runs of those of
        ``templates``' flows that never ran created (see :mod:`aioconductor.persistence.runs`)
        in one script (see
        :mod:`aioconductor._backends.redis.fused_claim`). None unless ``board`` is a Redis
        board on this store's server (the same URL) and namespace."""
        from aioconductor.boards.redis import RedisJobBoard

        if not isinstance(board, RedisJobBoard):
            return None
        blink = board._link
        if blink.url != self._link.url or board._prefix != self._prefix:
            return None
        script = blink.client.register_script(CLAIM_AND_CREATE)
        encoded = template_args(templates)

        async def claim(
            owner: str, limit: int, lease: float
        ) -> list[tuple[Job, Claim, FlowDetail | None]]:
            seconds, limit = board._claim_batch_args(owner, limit, lease)
            self._check_open()
            bargs = [board._job_prefix, board._channel, owner, fmt_time(seconds), str(limit)]
            argv = [str(len(bargs)), *bargs, self._prefix, *encoded]
            argv += [new_flow_uuid() for _ in range(limit)]
            reply = await blink.run_script("claim_batch", script, board._keys, argv)
            jobs = board_records.claimed_jobs(reply[0])
            board._check_claimed(jobs, limit)
            now = float(reply[0][1])
            claimed = []
            for job, made in zip(jobs, reply[1], strict=True):
                assert job.claim is not None
                created = None
                if made:
                    template = templates[job.flow]
                    created = new_run(made, template.detail, template.first, now)
                claimed.append((job, job.claim, created))
            return claimed

        return claim

    async def _destroy_logbook(self, book_uuid: str) -> None:
        keys = [self._prefix + "books", self._book_key(book_uuid)]
        script = self._scripts.destroy
        reply = await self._write(script, "destroy_logbook", keys, book_uuid, [book_uuid])
        self._refused(reply, book_uuid, None)

    async def _destroy_logbooks(self, book_uuids: list[str]) -> int:
        script = self._scripts.destroy
        books = self._prefix + "books"
        calls = [
            (script, [books, self._book_key(u)], [self._flow_prefix(u), u]) for u in book_uuids
        ]
        replies = await self._link.call("destroy_logbooks", lambda: self._link.scripts(calls))
        return sum(1 for reply in replies if reply[0] == "ok")

    async def _logbooks(self) -> AsyncIterator[LogBook]:
        start = 0
        while True:
            chunk = await self._link.read("logbooks", functools.partial(self._uuids, start))
            for book_uuid in chunk:
                book = await self._read_book(book_uuid)
                if book is not None:  # destroyed since the chunk was read
                    yield book
            if len(chunk) < _CHUNK:
                return
            start += _CHUNK

    async def _uuids(self, start: int) -> list[str]:
        key = self._prefix + "books"
        return cast(list[str], await self._link.client.zrange(key, start, start + _CHUNK - 1))
