"""The dashboard's pages and JSON API over ASGI (no browser): escaping, store details, actions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from aioconductor import Conductor, JobBoard, JobState, Store, open_board, open_store
from aioconductor.dashboard import create_app

from ..apps import flows

EVIL = "<script>window.pwned = 1</script><img src=x onerror=alert(1)>"


@pytest.fixture
async def board_and_store() -> AsyncIterator[tuple[JobBoard, Store]]:
    async with open_board(f"memory://{uuid.uuid4().hex}") as board, open_store("memory://") as s:
        yield board, s


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash")


async def finish(board: JobBoard, store: Store, job_ids: list[str]) -> None:
    conductor = Conductor("dash-test", board, store=store, flows=flows, max_concurrency=4)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            for job_id in job_ids:
                await board.wait_for(job_id)
            conductor.stop()


async def test_counts_and_jobs_in_the_summary(board_and_store: tuple[JobBoard, Store]) -> None:
    board, store = board_and_store
    done = await board.post("done", "noop", {"key": 1})
    await finish(board, store, [done.id])
    await board.post("waiting", "noop", {"key": 2})
    await board.post("later", "noop", {"key": 3}, delay=3600)
    async with client(create_app(board, store)) as http:
        summary = (await http.get("/api/summary")).json()
        assert summary["counts"] == {
            "SCHEDULED": 1, "UNCLAIMED": 1, "CLAIMED": 0, "COMPLETE": 1, "TRASHED": 0,
        }  # fmt: skip
        assert summary["total"] == 3 and len(summary["jobs"]) == 3
        complete = (await http.get("/api/summary?state=complete")).json()
        assert [job["name"] for job in complete["jobs"]] == ["done"]
        page = await http.get("/?state=COMPLETE")
        assert page.status_code == 200 and 'id="count-COMPLETE">1<' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]


async def test_untrusted_text_is_escaped_everywhere(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, store = board_and_store
    job = await board.post(EVIL, "noop", {"key": EVIL})
    async with client(create_app(board, store)) as http:
        for path in ("/", f"/jobs/{job.id}"):
            text = (await http.get(path)).text
            assert "<script>window.pwned" not in text and "<img src=x" not in text
            assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in text


async def test_a_failed_jobs_page_shows_task_states_and_the_traceback(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, store = board_and_store
    job = await board.post("bad", "fails", {"key": "x"})
    await finish(board, store, [job.id])
    async with client(create_app(board, store)) as http:
        text = (await http.get(f"/jobs/{job.id}")).text
        detail = (await http.get(f"/api/jobs/{job.id}")).json()
        without_store = (await http.get(f"/jobs/{job.id}")).text
    assert "REVERTED" in text and "Traceback of boom" in text
    assert "RuntimeError: boom x" in text and "Traceback (most recent call last)" in text
    atoms = {atom["name"]: atom for atom in detail["flows"][0]["atoms"]}
    assert atoms["first"]["state"] == "REVERTED" and atoms["boom"]["failure"] is not None
    async with client(create_app(board)) as http:
        without_store = (await http.get(f"/jobs/{job.id}")).text
    assert "--store URL" in without_store and "Traceback of" not in without_store
    # The board's record of the failure shows even without a store.
    assert "builtins.RuntimeError: boom x" in without_store
    assert "Traceback (most recent call last)" in without_store


async def test_a_missing_job_is_a_404(board_and_store: tuple[JobBoard, Store]) -> None:
    board, _ = board_and_store
    async with client(create_app(board)) as http:
        assert (await http.get("/jobs/nope")).status_code == 404
        assert (await http.get("/api/jobs/nope")).status_code == 404


async def test_actions_are_off_unless_allowed(board_and_store: tuple[JobBoard, Store]) -> None:
    board, _ = board_and_store
    job = await board.post("j", "noop", {"key": 1})
    headers = {"X-Aioconductor-Action": "1"}
    async with client(create_app(board)) as http:
        assert "data-action" not in (await http.get(f"/jobs/{job.id}")).text
        refused = await http.post(f"/api/jobs/{job.id}/trash", headers=headers)
        assert refused.status_code == 403 and "--allow-actions" in refused.json()["error"]
    assert (await board.get(job.id)).state is JobState.UNCLAIMED

    async with client(create_app(board, allow_actions=True)) as http:
        assert 'data-action="trash"' in (await http.get(f"/jobs/{job.id}")).text
        # Without the header, as a cross-site form would post: refused.
        assert (await http.post(f"/api/jobs/{job.id}/trash")).status_code == 403
        reposted = await http.post(f"/api/jobs/{job.id}/repost", headers=headers)
        assert reposted.status_code == 200
        trashed = await http.post(f"/api/jobs/{job.id}/trash", headers=headers)
        assert trashed.json()["job"]["state"] == "TRASHED"
        again = await http.post(f"/api/jobs/{job.id}/trash", headers=headers)
        assert again.status_code == 409
    new = await board.get(reposted.json()["job"]["id"])
    assert new.id != job.id and new.args == {"key": 1} and new.state is JobState.UNCLAIMED


async def test_mounted_under_a_prefix_links_stay_under_it(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    board, _ = board_and_store
    job = await board.post("j", "noop", {"key": 1})
    outer = Starlette(routes=[Mount("/ops", create_app(board))])
    async with client(outer) as http:
        page = await http.get("/ops/")
        assert page.status_code == 200
        assert 'href="/ops/static/dashboard.css"' in page.text
        assert f'href="/ops/jobs/{job.id}"' in page.text
        assert (await http.get("/ops/static/dashboard.js")).status_code == 200


async def test_an_unconnected_board_is_connected_on_the_first_request() -> None:
    board = open_board(f"memory://{uuid.uuid4().hex}")
    app = create_app(board)
    async with client(app) as http:
        assert (await http.get("/api/summary")).json()["total"] == 0
    assert board.connected
    await app.state.dashboard.aclose()
    assert not board.connected
