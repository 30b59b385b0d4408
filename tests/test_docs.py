"""The documentation's Python examples run as written, and its pages are all linked."""

from __future__ import annotations

import json
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


#: A python block whose first line is this is a fragment (it needs names it does not define, or
#: a server): it is shown, not run. Every other python block of the pages below runs as written.
FRAGMENT = "# fragment"


def run_block(block: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """Run one python block as a script in ``folder``; the finished process."""
    return subprocess.run(
        [sys.executable, "-c", block],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_example(page: Path, folder: Path) -> None:
    """Run the page's example (the block that ends in ``anyio.run(main)``) in ``folder``."""
    [example] = [block for block in python_blocks(page) if "anyio.run(main)" in block]
    result = run_block(example, folder)
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


FLOWS = REPO / "docs" / "flows.md"
FLOW_BLOCKS = [b for b in python_blocks(FLOWS) if not b.startswith(FRAGMENT)]


def test_the_flows_guide_has_examples_and_few_fragments() -> None:
    fragments = [b for b in python_blocks(FLOWS) if b.startswith(FRAGMENT)]
    assert len(FLOW_BLOCKS) >= 10 and len(fragments) <= 2


@pytest.mark.parametrize("block", FLOW_BLOCKS, ids=[f"block{i}" for i in range(len(FLOW_BLOCKS))])
def test_each_flows_guide_example_runs(block: str, tmp_path: Path) -> None:
    result = run_block(block, tmp_path)
    assert result.returncode == 0, f"{block}\n{result.stderr}"


def logs_section() -> str:
    text = (REPO / "docs" / "operations.md").read_text()
    start = text.index("\n## Logs\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_json_logs_example_writes_one_json_object_per_record(tmp_path: Path) -> None:
    [example] = [
        b
        for b in re.findall(r"```python\n(.*?)```", logs_section(), re.DOTALL)
        if "class JsonFormatter" in b
    ]
    result = run_block(example, tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    [failed] = [r for r in records if r["level"] == "WARNING" and "failed" in r["message"]]
    assert failed["logger"] == "aioconductor.conductor"
    assert failed["flow"] == "charge" and failed["job_id"] and failed["owner"]
    assert "ValueError: card declined" in failed["message"]
    # The task's own frame (the example runs with -c: no source line) and the exception.
    assert "in charge\nValueError: card declined" in failed["traceback"]
    # A task's own line carries the job it ran for; a line outside a job carries None.
    [own] = [r for r in records if r["logger"] == "shop.payments"]
    assert own["job_id"] == failed["job_id"] and own["message"] == "charging 500"
    [outside] = [r for r in records if r["logger"] == "shop"]
    assert outside["job_id"] is None


def test_every_public_name_is_in_the_api_reference() -> None:
    import aioconductor

    reference = (REPO / "docs" / "reference.md").read_text()
    missing = [name for name in aioconductor.__all__ if not re.search(rf"\b{name}\b", reference)]
    assert not missing, f"not in docs/reference.md: {missing}"
