"""The demo: an order-processing saga run by a conductor on a SQLite board, no server needed.

Each order reserves stock, charges the customer and ships the parcel. About one charge in eight
is declined: the saga then reverts, releasing the reservation, and the job is consumed with
outcome ``REVERTED``. One order names a flow nobody registered, and is trashed with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio

from aioconductor.boards import JobBoard
from aioconductor.boards import open_board
from aioconductor.conductor import Conductor
from aioconductor.engine import Task
from aioconductor.engine import linear
from aioconductor.models import Job
from aioconductor.models import JobState
from aioconductor.models import Outcome
from aioconductor.persistence import open_store
from aioconductor.registry import FlowRegistry

__all__ = ["DemoSummary", "flows", "run_demo"]

flows = FlowRegistry()


class PaymentDeclined(Exception):
    """The customer's card was declined."""


def _declined(order_id: str, rate: float) -> bool:
    # Deterministic per order, so a resumed saga makes the same decision.
    digest = hashlib.sha256(order_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < rate


class ReserveStock(Task):
    """Reserve the order's items in the warehouse."""

    async def execute(self, order_id: str, items: list[str]) -> str:
        await anyio.sleep(0.001)
        return f"res-{order_id}"

    async def revert(self, order_id: str, items: list[str], **kwargs: Any) -> None:
        await anyio.sleep(0.001)


class ChargeCustomer(Task):
    """Charge the customer's card."""

    async def execute(self, order_id: str, amount: float, decline_rate: float) -> str:
        await anyio.sleep(0.002)
        if _declined(order_id, decline_rate):
            raise PaymentDeclined(f"card declined for order {order_id} ({amount:.2f} EUR)")
        return f"pay-{order_id}"

    async def revert(self, order_id: str, amount: float, **kwargs: Any) -> None:
        await anyio.sleep(0.001)


class ShipParcel(Task):
    """Hand the parcel to the carrier."""

    async def execute(self, order_id: str, reservation: str, payment: str) -> str:
        await anyio.sleep(0.001)
        return f"ship-{order_id}"


@flows.register("order")
def order_flow(**args: Any) -> Any:
    """The order saga: reserve, then charge, then ship; reverted if a step fails."""
    return linear(
        "order",
        ReserveStock(provides="reservation"),
        ChargeCustomer(provides="payment"),
        ShipParcel(provides="tracking"),
    )


@dataclass
class DemoSummary:
    """What the demo did."""

    jobs: int
    succeeded: int
    reverted: int
    trashed: int
    seconds: float

    @property
    def jobs_per_second(self) -> float:
        """Jobs finished per second of wall time."""
        return self.jobs / self.seconds if self.seconds else 0.0


async def run_demo(
    *,
    jobs: int = 200,
    concurrency: int = 32,
    decline_rate: float = 0.125,
    folder: Path | None = None,
    out: TextIO = sys.stdout,
) -> DemoSummary:
    """Post ``jobs`` orders (plus one poison job) to a SQLite board and run them all.

    Args:
        jobs: how many orders to post.
        concurrency: the conductor's ``max_concurrency``.
        decline_rate: the share of charges that are declined (and reverted).
        folder: where the SQLite file goes; a temporary folder when None.
        out: where progress and the summary are written.
    """
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aioc-demo-")))
        url = f"sqlite:///{folder / 'demo.db'}"
        async with open_board(url) as board, open_store(url) as store:
            out.write(f"aioconductor demo: {jobs} orders on {url}\n")
            for n in range(jobs):
                await _post_order(board, n, decline_rate)
            # A client that retries a post after a timeout: the key finds the order's job.
            again = min(jobs, 10)
            for n in range(again):
                if (await _post_order(board, n, decline_rate))[1]:
                    raise RuntimeError(f"order {n} was posted twice under one key")
            out.write(f"posted {again} orders again under their keys: nothing duplicated\n")
            await board.post("order-mystery", "no-such-flow", {"order_id": "x"})
            total = jobs + 1
            started = time.monotonic()
            conductor = Conductor(
                "demo", board, store=store, flows=flows, max_concurrency=concurrency
            )
            async with conductor, anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                await _show_progress(conductor, total, started, out)
                conductor.stop()
            seconds = time.monotonic() - started
            states = {state: await board.job_count(state=state) for state in JobState}
            summary = DemoSummary(
                jobs=total,
                succeeded=conductor.stats.succeeded,
                reverted=conductor.stats.reverted,
                trashed=states[JobState.TRASHED],
                seconds=seconds,
            )
            if states[JobState.COMPLETE] + states[JobState.TRASHED] != total:
                raise RuntimeError(f"the demo ended with jobs unfinished: {states}")
            example = await _first_reverted(board)
    out.write(
        f"\nconsumed {summary.succeeded + summary.reverted} "
        f"({summary.succeeded} shipped, {summary.reverted} reverted), "
        f"trashed {summary.trashed}, in {summary.seconds:.2f} s: "
        f"{summary.jobs_per_second:.0f} jobs/s\n"
    )
    if example:
        out.write(f"a reverted order: {example}\n")
    return summary


async def _post_order(board: JobBoard, n: int, decline_rate: float) -> tuple[Job, bool]:
    """Post order ``n`` under its idempotency key; the job and whether it was created."""
    return await board.get_or_post(
        f"order-{n:05d}",
        "order",
        {
            "order_id": f"{n:05d}",
            "items": ["book", "lamp"],
            "amount": 10.0 + n % 90,
            "decline_rate": decline_rate,
        },
        key=f"order-{n:05d}",
    )


async def _show_progress(conductor: Conductor, total: int, started: float, out: TextIO) -> None:
    live = out.isatty()
    last_line = 0.0
    while True:
        stats = conductor.stats
        done = stats.consumed + stats.trashed
        now = time.monotonic()
        if live or now - last_line >= 1.0 or done >= total:
            line = (
                f"{done}/{total} done: {stats.succeeded} shipped, {stats.reverted} reverted, "
                f"{stats.trashed} trashed, {len(conductor.running)} running"
            )
            out.write(f"\r{line}" if live else f"{line}\n")
            out.flush()
            last_line = now
        if done >= total:
            return
        await anyio.sleep(0.1)


async def _first_reverted(board: Any) -> str | None:
    async for job in board.iterjobs(state=JobState.COMPLETE):
        if job.outcome is Outcome.REVERTED and job.result:
            failure = job.result.get("failure", {})
            return f"{job.name}: {failure.get('exc_type')}: {failure.get('message')}"
    return None
