"""The documentation's Python examples run as written, and its pages are all linked."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNABLE = [REPO / "README.md", REPO / "docs" / "getting-started.md"]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def run_example(page: Path, folder: Path) -> None:
    """Run the page's example (the block that ends in ``anyio.run(main)``) in ``folder``."""
    [example] = [block for block in python_blocks(page) if "anyio.run(main)" in block]
    result = subprocess.run(
        [sys.executable, "-c", example],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_the_page_example_runs(page: Path, tmp_path: Path) -> None:
    run_example(page, tmp_path)
    assert (tmp_path / "jobs.db").exists()


def test_the_readme_example_run_twice_makes_one_job(tmp_path: Path) -> None:
    for _ in range(2):
        run_example(REPO / "README.md", tmp_path)
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


def test_every_docs_page_is_linked_from_the_index() -> None:
    docs = REPO / "docs"
    index = (docs / "index.md").read_text()
    for page in docs.rglob("*.md"):
        if page.name != "index.md":
            assert str(page.relative_to(docs)) in index, f"{page} is not linked from the index"
