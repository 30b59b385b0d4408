"""Commands that only read a board (jobs, show, conductors, schedules, limits, dashboard) never
create or migrate anything: on a board with no schema they say so and write nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from aioconductor import open_board
from aioconductor.cli import main
from aioconductor.errors import ConfigurationError

READERS = [["jobs"], ["show", "0123abcd"], ["conductors"], ["schedules"], ["limits"]]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("command", READERS, ids=[c[0] for c in READERS])
def test_a_reader_on_a_missing_sqlite_file_creates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "jobs.db"
    status, _, err = run_cli(capsys, *command, "--board", f"sqlite:///{path}")
    assert status != 0
    assert "no aioconductor board schema here" in err and "aioconductor migrate" in err
    assert not path.exists()


def test_a_reader_on_an_older_sqlite_schema_migrates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from aioconductor._backends.sqlite import board_schema
    from aioconductor._backends.sqlite.migrations import apply_migrations

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        apply_migrations(conn, "board", board_schema.SCHEMA[:5])
    status, _, err = run_cli(capsys, "jobs", "--board", f"sqlite:///{path}")
    assert status != 0 and "version 5, older than" in err
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM aioc_schema").fetchall() == [(5,)]
    # A writer migrates it; the reader then reads.
    assert run_cli(capsys, "migrate", "--board", f"sqlite:///{path}")[0] == 0
    assert run_cli(capsys, "jobs", "--board", f"sqlite:///{path}")[0] == 0


def test_a_writer_still_creates_the_board(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert run_cli(capsys, "limits", "set", "payments", "3", "--board", url)[0] == 0
    status, out, _ = run_cli(capsys, "limits", "--board", url)
    assert status == 0 and "payments" in out


@pytest.mark.postgres
def test_a_reader_on_a_fresh_postgres_schema_creates_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import asyncpg  # type: ignore[import-untyped]

    from tests.postgres_helpers import drop_schemas, require_postgres, unique_schema, url

    require_postgres()
    schema = unique_schema()
    board = url(schema, "cli")

    async def exists() -> bool:
        conn = await asyncpg.connect(board.split("?")[0])
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1", schema
            )
        finally:
            await conn.close()
        return bool(found)

    try:
        status, _, err = run_cli(capsys, "jobs", "--board", board)
        assert status != 0 and "no aioconductor board tables in schema" in err
        assert not anyio.run(exists)
        assert run_cli(capsys, "migrate", "--board", board)[0] == 0
        assert run_cli(capsys, "jobs", "--board", board)[0] == 0
    finally:
        anyio.run(drop_schemas, schema)


async def test_open_board_without_migrate_refuses_a_missing_schema(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no aioconductor board schema here"):
        async with open_board(f"sqlite:///{tmp_path / 'none.db'}", migrate=False):
            pass
    assert not (tmp_path / "none.db").exists()


@pytest.mark.kafka
def test_a_reader_on_a_fresh_kafka_topic_creates_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    from tests.kafka_helpers import kafka_url, require_kafka, unique_topic

    topic = unique_topic("readonly")
    board = kafka_url(topic, "cli")

    async def topics() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=require_kafka())
        await admin.start()
        try:
            return {name for name in await admin.list_topics() if name.startswith(topic)}
        finally:
            await admin.close()

    status, _, err = run_cli(capsys, "jobs", "--board", board)
    assert status != 0 and "no aioconductor board here" in err
    assert anyio.run(topics) == set()
    assert run_cli(capsys, "migrate", "--board", board)[0] == 0
    assert anyio.run(topics) == {f"{topic}.cli.jobs", f"{topic}.cli.state", f"{topic}.cli.dead"}
    assert run_cli(capsys, "jobs", "--board", board)[0] == 0
