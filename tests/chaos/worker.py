"""A conductor that writes its history: run in a process of its own by the chaos scenarios.

``python -m tests.chaos.worker --board URL --store URL --history FILE --name NAME``

It records what the conductor's ``Notifier`` reports (claims, consumes, trashes, abandons, lost
leases, atom states) and, by wrapping the board's and the store's verbs, every write refused
with ``ClaimLost``. SIGTERM drains it and it exits 0.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import anyio

from aioconductor import ClaimLost, Conductor, open_board, open_store
from aioconductor.boards import JobBoard
from aioconductor.events import Event
from aioconductor.persistence.base import Store

from . import flows as chaos_flows
from .history import HistoryWriter

_ENDS = {
    Event.JOB_CONSUMED: "consumed",
    Event.JOB_TRASHED: "trashed",
    Event.JOB_ABANDONED: "abandoned",
    Event.JOB_RELEASED: "released",
    Event.JOB_RETRIED: "retried",
    Event.LEASE_LOST: "lease_lost",
}


def instrument(conductor: Conductor, writer: HistoryWriter) -> None:
    """Record ``conductor``'s events, and the ``ClaimLost`` refusals of its board and store."""
    tokens: dict[str, int] = {}

    def on_claimed(event: str, details: Mapping[str, Any]) -> None:
        chaos_flows.CURRENT[details["job_name"]] = (details["job_id"], details["token"])
        tokens[details["job_id"]] = details["token"]
        writer.write(
            "claimed",
            owner=details["owner"],
            job=details["job_id"],
            token=details["token"],
            attempt=details["attempt"],
        )

    def on_end(event: str, details: Mapping[str, Any]) -> None:
        extra = {k: str(details[k]) for k in ("outcome", "reason") if k in details}
        writer.write(
            _ENDS[Event(event)],
            owner=details["owner"],
            job=details["job_id"],
            token=details["token"],
            **extra,
        )

    def on_atom(event: str, details: Mapping[str, Any]) -> None:
        job_id = details["book_id"]
        writer.write(
            "atom",
            owner=conductor.owner,
            job=job_id,
            atom=details["atom"],
            state=str(details["state"]),
            token=tokens.get(job_id, -1),
        )

    notifier = conductor.notifier
    notifier.register(Event.JOB_CLAIMED, on_claimed)
    for event in _ENDS:
        notifier.register(event, on_end)
    notifier.register(Event.ATOM_STATE, on_atom)
    _wrap_board(conductor.board, conductor.owner, writer)
    _wrap_store(conductor.store, conductor.owner, writer, tokens)


def _wrap_board(board: JobBoard, owner: str, writer: HistoryWriter) -> None:
    def wrap(op: str) -> None:
        verb = getattr(board, op)

        @functools.wraps(verb)
        async def wrapper(claim: Any, *args: Any, **kwargs: Any) -> Any:
            if op != "renew":
                writer.write(f"{op}_try", owner=owner, job=claim.job_id, token=claim.token)
            try:
                return await verb(claim, *args, **kwargs)
            except ClaimLost:
                writer.write("refused", owner=owner, job=claim.job_id, token=claim.token, op=op)
                raise

        setattr(board, op, wrapper)

    for op in ("consume", "renew", "abandon", "release", "retry"):
        wrap(op)


def _wrap_store(store: Store, owner: str, writer: HistoryWriter, tokens: dict[str, int]) -> None:
    def wrap(op: str) -> None:
        write = getattr(store, op)

        @functools.wraps(write)
        async def wrapper(first: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await write(first, *args, **kwargs)
            except ClaimLost:
                job_id = first if isinstance(first, str) else first.uuid
                token = kwargs.get("token", tokens.get(job_id, -1))
                writer.write("refused", owner=owner, job=job_id, token=token, op=f"store.{op}")
                raise

        setattr(store, op, wrapper)

    for op in ("save_logbook", "update_flow_detail", "update_atom_detail", "update_atom_details"):
        wrap(op)


async def main(args: argparse.Namespace) -> None:
    writer = HistoryWriter(args.history, args.name)
    chaos_flows.RECORDER[:] = [writer]
    board = open_board(args.board, poll_interval=args.sweep)
    store = open_store(args.store)
    conductor = Conductor(
        args.name,
        board,
        store=store,
        flows=chaos_flows.flows,
        max_concurrency=args.concurrency,
        lease=args.lease,
        sweep_interval=args.sweep,
        drain_timeout=5,
    )
    writer.owner = conductor.owner
    instrument(conductor, writer)
    _time_shutdown(conductor, writer)
    async with conductor, anyio.create_task_group() as tg:

        async def stop_on_sigterm() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    writer.write("sigterm")
                    conductor.stop()
                    return

        tg.start_soon(stop_on_sigterm)
        writer.write("start")
        await conductor.run()
        writer.write("stopped")
        tg.cancel_scope.cancel()
    writer.write("exit")


def _time_shutdown(conductor: Conductor, writer: HistoryWriter) -> None:
    """Record how long each step of the shutdown takes (unregister, closing board and store)."""
    for name, resource, method in (
        ("unregister", conductor.board, "unregister_conductor"),
        ("board.aclose", conductor.board, "aclose"),
        ("store.aclose", conductor.store, "aclose"),
    ):
        original = getattr(resource, method)

        def timed(original: Any = original, name: str = name) -> Any:
            @functools.wraps(original)
            async def step(*args: Any, **kwargs: Any) -> Any:
                started = time.monotonic()
                try:
                    return await original(*args, **kwargs)
                finally:
                    writer.write("shutdown_step", step=name, seconds=time.monotonic() - started)

            return step

        setattr(resource, method, timed())


if __name__ == "__main__":
    if os.environ.get("AIOCONDUCTOR_CHAOS_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="%(created).3f %(name)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("--board", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--history", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--sweep", type=float, default=0.5)
    anyio.run(main, parser.parse_args())
