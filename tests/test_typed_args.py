"""Typed job args: a flow registered with a pydantic model gets its args validated before it is
built (a job whose args do not fit is trashed with the errors, never run), its tasks get the
validated values in JSON mode, and producers that hold the registry check before posting."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime
from typing import Any

import anyio
import pydantic
import pytest

from aioconductor import Conductor, FlowRegistry, JobState, Outcome, linear, task
from aioconductor.boards.memory import MemoryJobBoard
from aioconductor.errors import ConfigurationError, FlowNotFound, PayloadError
from aioconductor.persistence.memory import MemoryStore


class ChargeArgs(pydantic.BaseModel):
    order_id: int
    amount: decimal.Decimal
    at: datetime
    currency: str = "EUR"


SEEN: list[dict[str, Any]] = []


def _flows() -> FlowRegistry:
    flows = FlowRegistry()

    @task(provides="charged")
    async def charge(order_id: int, amount: str, at: str, currency: str) -> str:
        SEEN.append({"order_id": order_id, "amount": amount, "at": at, "currency": currency})
        return f"{order_id}:{amount}{currency}"

    @flows.register("charge", args=ChargeArgs)
    def charge_flow(**args: Any) -> Any:
        SEEN.append({"factory": args})
        return linear("charge", charge)

    return flows


@pytest.fixture(autouse=True)
def _reset() -> None:
    SEEN.clear()


async def _run_until_final(board: MemoryJobBoard, job_id: str, **kwargs: Any) -> Any:
    conductor = Conductor("c", board, flows=_flows(), **kwargs)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            done = await board.wait_for(job_id)
            conductor.stop()
    return done


async def test_valid_args_reach_the_factory_and_tasks_validated_in_json_mode() -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board, MemoryStore() as store:
        raw = {"order_id": "42", "amount": "9.90", "at": "2026-01-01T10:00:00+00:00"}
        job = await board.post("c", "charge", raw)
        done = await _run_until_final(board, job.id, store=store)
    assert done.state is JobState.COMPLETE and done.outcome is Outcome.SUCCESS
    validated = {
        "order_id": 42,
        "amount": "9.90",
        "at": "2026-01-01T10:00:00Z",
        "currency": "EUR",
    }
    assert SEEN == [{"factory": validated}, validated]
    assert done.result == {"charged": "42:9.90EUR"}


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"order_id": "forty-two", "amount": "1", "at": "2026-01-01T00:00:00Z"},
        {"order_id": 1, "amount": "x", "at": "yesterday"},
    ],
)
async def test_args_that_do_not_fit_trash_the_job_with_the_errors_never_run(
    args: dict[str, Any],
) -> None:
    async with MemoryJobBoard(poll_interval=0.05) as board:
        job = await board.post("c", "charge", args)
        done = await _run_until_final(board, job.id)
    assert done.state is JobState.TRASHED and SEEN == []
    reason = done.trash_reason or ""
    assert "the args do not fit flow 'charge' (ChargeArgs)" in reason
    for field, value in ChargeArgs.model_fields.items():
        if value.is_required() and field not in args:
            assert f"{field}: Field required" in reason
    assert done.attempts == 1


async def test_flows_post_checks_then_posts_the_validated_args() -> None:
    flows = _flows()
    async with MemoryJobBoard() as board:
        model = ChargeArgs(
            order_id=7, amount=decimal.Decimal("5"), at=datetime(2026, 1, 1, tzinfo=UTC)
        )
        job = await flows.post(board, "charge", model, key="order-7", priority=3)
        assert job.name == "charge" and job.key == "order-7" and job.priority == 3
        assert job.args == {
            "order_id": 7, "amount": "5", "at": "2026-01-01T00:00:00Z", "currency": "EUR",
        }  # fmt: skip
        named = await flows.post(board, "charge", {**job.args, "order_id": "8"}, name="eight")
        assert named.name == "eight" and named.args["order_id"] == 8
        assert await board.job_count() == 2


async def test_flows_post_refuses_an_unknown_flow_or_bad_args_and_writes_nothing() -> None:
    flows = _flows()
    async with MemoryJobBoard() as board:
        with pytest.raises(FlowNotFound):
            await flows.post(board, "chrage", {"order_id": 1})
        with pytest.raises(PayloadError, match="order_id: Input should be a valid integer"):
            await flows.post(board, "charge", {"order_id": "x", "amount": 1, "at": 0})
        with pytest.raises(PayloadError, match="amount: Field required"):
            await flows.post(board, "charge", {"order_id": 1, "at": 0})
        assert await board.job_count() == 0


async def test_a_flow_without_a_model_takes_args_as_given() -> None:
    flows = FlowRegistry()
    flows.register("plain", lambda **args: None)
    async with MemoryJobBoard() as board:
        job = await flows.post(board, "plain", {"anything": [1, 2]})
        assert job.args == {"anything": [1, 2]}
    assert flows.args_model("plain") is None


async def test_board_post_takes_a_model_dumped_in_json_mode() -> None:
    async with MemoryJobBoard() as board:
        at = datetime(2026, 1, 1, tzinfo=UTC)
        job = await board.post(
            "c", "charge", ChargeArgs(order_id=1, amount=decimal.Decimal("2.5"), at=at)
        )
        assert job.args == {
            "order_id": 1, "amount": "2.5", "at": "2026-01-01T00:00:00Z", "currency": "EUR",
        }  # fmt: skip
        [many] = await board.post_many("charge", [ChargeArgs(order_id=2, amount=1, at=at)])
        assert many.args["order_id"] == 2


def test_args_must_be_a_pydantic_model_class() -> None:
    flows = FlowRegistry()
    for bad in (dict, ChargeArgs(order_id=1, amount=1, at=0), "ChargeArgs"):
        with pytest.raises(ConfigurationError):
            flows.register("x", lambda **args: None, args=bad)  # type: ignore[arg-type]
    assert "x" not in flows
