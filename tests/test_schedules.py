"""`Schedule`: its ticks (epoch-anchored periods, cron in a time zone through DST), what is due
after a gap, and the refusals of bad schedules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pydantic
import pytest

from aioconductor import ConfigurationError
from aioconductor.schedules import MAX_CATCH_UP, Schedule

BERLIN = ZoneInfo("Europe/Berlin")


def at(*fields: int, tz: Any = UTC) -> float:
    return datetime(*fields, tzinfo=tz).timestamp()  # type: ignore[misc]


def test_every_ticks_are_multiples_of_the_period_from_the_epoch() -> None:
    schedule = Schedule("s", flow="f", every=60)
    now = at(2026, 1, 1, 12, 0, 30)
    assert schedule.latest(now) == at(2026, 1, 1, 12, 0)
    assert schedule.next_after(now) == at(2026, 1, 1, 12, 1)
    assert schedule.next_after(at(2026, 1, 1, 12, 1)) == at(2026, 1, 1, 12, 2)
    assert schedule.key(at(2026, 1, 1, 12, 1)) == "schedule:s:2026-01-01T12:01:00Z"
    # Every conductor computes the same ticks, whenever it started.
    assert Schedule("s", flow="f", every=7).latest(1000.5) == 994.0


def test_cron_ticks_in_utc() -> None:
    schedule = Schedule("nightly", flow="f", cron="0 2 * * *")
    assert schedule.latest(at(2026, 1, 2, 1, 59)) == at(2026, 1, 1, 2, 0)
    assert schedule.latest(at(2026, 1, 2, 2, 0)) == at(2026, 1, 2, 2, 0)
    assert schedule.next_after(at(2026, 1, 2, 2, 0)) == at(2026, 1, 3, 2, 0)


def test_a_daily_0230_runs_at_0300_on_a_spring_forward_day() -> None:
    schedule = Schedule("s", flow="f", cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; there is no 02:30.
    after = at(2026, 3, 28, 12, 0, tz=BERLIN)
    tick = schedule.next_after(after)
    assert tick == at(2026, 3, 29, 3, 0, tz=BERLIN) == at(2026, 3, 29, 1, 0)
    assert schedule.next_after(tick) == at(2026, 3, 30, 2, 30, tz=BERLIN)
    assert schedule.latest(at(2026, 3, 29, 12, 0, tz=BERLIN)) == tick


def test_a_daily_0230_runs_once_at_the_first_0230_on_a_fall_back_day() -> None:
    schedule = Schedule("s", flow="f", cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    first = at(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert schedule.next_after(at(2026, 10, 24, 12, 0, tz=BERLIN)) == first
    assert schedule.next_after(first) == at(2026, 10, 26, 2, 30, tz=BERLIN)
    # Past the second 02:30 (01:30 UTC), the latest tick is still the first.
    assert schedule.latest(at(2026, 10, 25, 1, 45)) == first
    ticks = Schedule("s", flow="f", cron="30 2 * * *", timezone="Europe/Berlin", catch_up=True)
    day = ticks.due(at(2026, 10, 24, 12, 0, tz=BERLIN), at(2026, 10, 25, 12, 0, tz=BERLIN))
    assert day == [first]


def test_without_catch_up_only_the_latest_missed_tick_is_due() -> None:
    schedule = Schedule("s", flow="f", every=60)
    after, now = at(2026, 1, 1, 0, 0), at(2026, 1, 1, 1, 0, 30)
    assert schedule.due(after, now) == [at(2026, 1, 1, 1, 0)]
    assert schedule.due(at(2026, 1, 1, 1, 0), now) == []


def test_with_catch_up_each_missed_tick_is_due_the_latest_hundred_at_most() -> None:
    every = Schedule("s", flow="f", every=60, catch_up=True)
    after = at(2026, 1, 1, 0, 0)
    assert every.due(after, at(2026, 1, 1, 0, 3, 10)) == [after + 60, after + 120, after + 180]
    day = every.due(after, at(2026, 1, 2, 0, 0))
    assert len(day) == MAX_CATCH_UP == 100
    assert day[-1] == at(2026, 1, 2, 0, 0) and day[0] == day[-1] - 99 * 60
    cron = Schedule("c", flow="f", cron="*/10 * * * *", catch_up=True)
    assert cron.due(after, at(2026, 1, 1, 0, 35)) == [after + 600, after + 1200, after + 1800]
    assert len(cron.due(after, at(2026, 2, 1))) == MAX_CATCH_UP


@pytest.mark.parametrize(
    ("cron", "field"),
    [
        ("61 * * * *", "minute"),
        ("* 25 * * *", "hour"),
        ("* * 32 * *", "day-of-month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day-of-week"),
        ("0 0 30 2 *", "day-of-month"),
        ("* * *", "number of fields"),
    ],
)
def test_bad_cron_is_refused_naming_the_field(cron: str, field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"bad cron .*{field}"):
        Schedule("s", flow="f", cron=cron)


class Report(pydantic.BaseModel):
    day: datetime
    to: list[str] = ["ops@example.com"]


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"cron": "0 2 * * *", "every": 60},
        {"every": 0},
        {"every": 1.5},
        {"every": True},
        {"every": float("inf")},
        {"every": 60, "timezone": "Mars/Olympus"},
        {"every": 60, "name": "x" * 226},
        {"every": 60, "name": "new\nline"},
        {"every": 60, "flow": ""},
        {"every": 60, "args": {"when": {1, 2}}},
        {"every": 60, "priority": "high"},
        {"every": 60, "max_attempts": 0},
    ],
)
def test_bad_schedules_are_refused(bad: dict[str, Any]) -> None:
    fields = {"name": "s", "flow": "f", **bad}
    with pytest.raises(ConfigurationError):
        Schedule(**fields)


def test_args_are_kept_as_json_and_a_model_is_dumped() -> None:
    day = datetime(2026, 1, 1, tzinfo=UTC)
    schedule = Schedule("s", flow="f", every=60, args=Report(day=day))
    assert schedule.job_args == {"day": "2026-01-01T00:00:00Z", "to": ["ops@example.com"]}
    assert Schedule("t", flow="f", every=60, args={"n": (1, 2)}).job_args == {"n": [1, 2]}


def test_a_schedule_describes_itself_for_the_registry() -> None:
    assert Schedule("s", flow="f", every=60).describe() == {
        "name": "s", "flow": "f", "every": 60, "catch_up": False,
    }  # fmt: skip
    assert Schedule("n", flow="f", cron="0 2 * * *", timezone="Europe/Berlin").describe() == {
        "name": "n", "flow": "f", "cron": "0 2 * * *", "timezone": "Europe/Berlin",
        "catch_up": False,
    }  # fmt: skip
