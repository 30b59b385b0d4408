"""``aioconductor run --schedules`` and ``aioconductor schedules``: what the fleet runs, each
schedule's next tick, its last tick and the job that tick posted."""

from __future__ import annotations

import json
import uuid

import anyio
import pytest

from aioconductor.boards import open_board
from aioconductor.cli import main
from aioconductor.cli.parser import build_parser
from aioconductor.errors import ConfigurationError
from aioconductor.schedules import Schedule, load_schedules

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
#: What tests import with --schedules.
SCHEDULES = [Schedule("nightly", flow="noop", cron="0 2 * * *", args={"key": 1})]
ONE = Schedule("one", flow="noop", every=60)


def _fleet(url: str) -> str:
    """A conductor's registration publishing two schedules, and the ticks they posted."""

    async def setup() -> str:
        async with open_board(url) as board:
            published = [
                {"name": "nightly", "flow": "noop", "cron": "0 2 * * *", "timezone": "UTC",
                 "catch_up": False, "next_tick": T0 + 7200},
                {"name": "beat", "flow": "noop", "every": 60, "catch_up": False,
                 "next_tick": T0 + 60},
            ]  # fmt: skip
            await board.register_conductor("c-1", "c", ttl=60, meta={"schedules": published})
            job = await board.post_tick("beat", T0, "beat", "noop", {"key": 1})
            assert job is not None
            await board.post_tick("gone", T0, "gone", "noop")
            gone = await board.get_by_key("schedule:gone:2026-01-01T00:00:00Z")
            await board.trash(gone.id, reason="x")
            await board.purge(older_than=0)
            return job.id

    return anyio.run(setup)


def test_schedules_lists_next_and_last_ticks_and_the_last_job(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"memory://cli_{uuid.uuid4().hex[:12]}"
    job_id = _fleet(url)
    assert main(["schedules", "--utc", "--board", url]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert "every 60 s" in lines["beat"] and "2026-01-01T00:01:00+00:00" in lines["beat"]
    assert job_id in lines["beat"] and "UNCLAIMED" in lines["beat"]
    assert "cron 0 2 * * * UTC" in lines["nightly"]
    assert "2026-01-01T02:00:00+00:00" in lines["nightly"]
    assert "(purged)" in lines["gone"] and "(no conductor runs it)" in lines["gone"]
    assert main(["schedules", "--json", "--board", url]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    beat = next(row for row in rows if row["name"] == "beat")
    assert beat["last_tick"] == T0 and beat["last_job_id"] == job_id
    assert beat["next_tick"] == T0 + 60 and beat["conductors"] == ["c-1"]


def test_run_takes_schedules_as_module_attribute() -> None:
    args = build_parser().parse_args(["run", "--app", "m:f", "--schedules", "m:s"])
    assert args.schedules == "m:s"
    assert load_schedules("tests.test_cli_schedules:SCHEDULES") == SCHEDULES
    assert load_schedules("tests.test_cli_schedules:ONE") == [ONE]
    for bad in ("tests.test_cli_schedules", "tests.test_cli_schedules:T0", "no.such:X"):
        with pytest.raises(ConfigurationError):
            load_schedules(bad)
