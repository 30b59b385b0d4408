"""The shipped conformance suites run for a backend of someone else's, as their docs say."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = """
import pytest

from aioconductor import open_board, open_store
from aioconductor.testing.conformance import OpenedBoards, OpenedStores

pytest_plugins = ["aioconductor.testing.conformance.fixtures"]


@pytest.fixture
async def backend(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with OpenedBoards(lambda ns, **kw: open_board(f"{url}?namespace={ns}", **kw)) as opened:
        yield opened


@pytest.fixture
async def store_backend(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with OpenedStores(lambda ns, **kw: open_store(f"{url}?namespace={ns}", **kw)) as opened:
        yield opened
"""

SUITES = """
from aioconductor.testing.conformance.boards_claims import *  # noqa: F403
from aioconductor.testing.conformance.stores_saving import *  # noqa: F403
"""


def test_a_third_party_backend_runs_the_suites_as_documented(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_mine.py").write_text(textwrap.dedent(SUITES))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
         "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_only_the_conformance_suites_need_pytest() -> None:
    code = "import sys, aioconductor, aioconductor.testing; sys.exit('pytest' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
