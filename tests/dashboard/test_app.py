"""The dashboard's pages and JSON API over ASGI (no browser): escaping, store details, actions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from aioconductor import Conductor, JobBoard, JobState, Outcome, Store, open_board, open_store
from aioconductor.dashboard import create_app
from aioconductor.dashboard.app import ACTIONS

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


# -- who may ask: the Host header (DNS rebinding) and cross-site actions -------------------------

FOREIGN = ("evil.example", "evil.example:8000", "localhost.evil.example:8000", "127.0.0.1.evil")


def served_on(app: Any, address: str = "127.0.0.1:8000") -> httpx.AsyncClient:
    """A client whose requests come in on ``address``, as uvicorn tells the app (scope server)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{address}")


@pytest.mark.parametrize("host", FOREIGN)
async def test_a_foreign_host_can_neither_read_the_dashboard_nor_trash_a_job(
    board_and_store: tuple[JobBoard, Store], host: str
) -> None:
    board, store = board_and_store
    job = await board.post("secret-job", "noop", {"key": "secret-arg"})
    foreign = {"Host": host}
    async with served_on(create_app(board, store, allow_actions=True)) as http:
        for path in ("/", "/api/summary", f"/jobs/{job.id}", f"/api/jobs/{job.id}"):
            refused = await http.get(path, headers=foreign)
            assert refused.status_code == 400, path
            assert "secret" not in refused.text and "--allow-host" in refused.text
        assert (await http.get("/static/dashboard.js", headers=foreign)).status_code == 400
        for action in ACTIONS:
            # With the action header: under rebinding the page is same-origin and can send it.
            headers = {**foreign, "X-Aioconductor-Action": "1", "Origin": f"http://{host}"}
            refused = await http.post(f"/api/jobs/{job.id}/{action}", headers=headers)
            assert refused.status_code == 400
        # The same requests with the address the dashboard is served on are answered.
        assert (await http.get(f"/api/jobs/{job.id}")).json()["args"] == {"key": "secret-arg"}
    unchanged = await board.get(job.id)
    assert unchanged.state is JobState.UNCLAIMED and unchanged.updated_at == job.updated_at
    assert await board.job_count() == 1  # nothing re-posted


@pytest.mark.parametrize(
    ("address", "host", "status"),
    [
        ("127.0.0.1:8000", "127.0.0.1:8000", 200),
        ("127.0.0.1:8000", "localhost:8000", 200),
        ("127.0.0.1:8000", "LocalHost.:8000", 200),
        ("127.0.0.1:8000", "[::1]:8000", 200),
        ("127.0.0.1:8000", "localhost:9000", 200),  # ssh -L 9000:127.0.0.1:8000
        ("127.0.0.1:8000", "[::1", 400),
        ("127.0.0.1:8000", "localhost:80x", 400),
        ("127.0.0.1:8000", "", 400),
        ("[::1]:8000", "[0:0::1]:8000", 200),
        ("[::1]:8000", "localhost:8000", 200),
        ("10.1.2.3:8000", "10.1.2.3:8000", 200),
        ("10.1.2.3:8000", "localhost:8000", 400),  # not a loopback address: its own only
        ("10.1.2.3:8000", "ops.example:8000", 400),
    ],
)
async def test_the_address_served_on_is_answered_under_its_names(
    board_and_store: tuple[JobBoard, Store], address: str, host: str, status: int
) -> None:
    board, _ = board_and_store
    async with served_on(create_app(board), address) as http:
        assert (await http.get("/api/summary", headers={"Host": host})).status_code == status


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("ops.example.com", 200),
        ("ops.example.com:1234", 200),  # a name without a port: any port
        ("OPS.example.com.", 200),
        ("admin.example.com:8443", 200),
        ("admin.example.com", 400),  # a name with a port: that port only
        ("admin.example.com:8000", 400),
        ("evil.ops.example.com", 400),
        ("[fd00::5]:8000", 200),
        ("localhost:8000", 400),
    ],
)
async def test_allowed_hosts_add_names(
    board_and_store: tuple[JobBoard, Store], host: str, status: int
) -> None:
    board, _ = board_and_store
    app = create_app(board, allowed_hosts=["ops.example.com", "admin.example.com:8443", "fd00::5"])
    async with served_on(app, "10.1.2.3:8000") as http:
        assert (await http.get("/api/summary", headers={"Host": host})).status_code == status


async def test_any_host_only_when_asked_and_bad_names_refused_at_once(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    from aioconductor.errors import ConfigurationError

    board, _ = board_and_store
    async with served_on(create_app(board, allowed_hosts=["*"]), "10.1.2.3:8000") as http:
        assert (await http.get("/", headers={"Host": "anything.example"})).status_code == 200
    for bad in (["http://ops.example.com"], ["ops:x"], [""], "ops.example.com"):
        with pytest.raises(ConfigurationError, match="allowed hosts are"):
            create_app(board, allowed_hosts=bad)


@pytest.mark.parametrize("hosts", [[], [b"127.0.0.1:8000", b"evil.example"]])
async def test_a_request_without_exactly_one_host_header_is_refused(
    board_and_store: tuple[JobBoard, Store], hosts: list[bytes]
) -> None:
    board, _ = board_and_store
    app = create_app(board)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/api/summary", "raw_path": b"/api/summary",
        "root_path": "", "query_string": b"", "headers": [(b"host", h) for h in hosts],
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
    }  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["status"] == 400


async def test_the_job_page_offers_exactly_the_actions_the_api_knows(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    import re

    board, _ = board_and_store
    job = await board.post("j", "noop", {"key": 1})
    async with client(create_app(board, allow_actions=True)) as http:
        page = (await http.get(f"/jobs/{job.id}")).text
    assert sorted(re.findall(r'data-action="([a-z]+)"', page)) == sorted(ACTIONS)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"]
)
async def test_every_action_is_refused_to_a_cross_site_post(
    board_and_store: tuple[JobBoard, Store], action: str, content_type: str
) -> None:
    """What a form or a no-cors fetch on another site can send: no custom header."""
    board, _ = board_and_store
    job = await board.post("j", "noop", {"key": 1})
    headers = {"Origin": "https://evil.example", "Content-Type": content_type}
    async with client(create_app(board, allow_actions=True)) as http:
        refused = await http.post(f"/api/jobs/{job.id}/{action}", headers=headers, content=b"a=1")
    assert refused.status_code == 403 and "x-aioconductor-action" in refused.json()["error"]
    assert (await board.get(job.id)).state is JobState.UNCLAIMED
    assert await board.job_count() == 1


async def test_the_schedules_the_fleet_runs_are_listed_with_their_last_job(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, store = board_and_store
    name = "<b>nightly</b>"
    published = [{"name": name, "flow": "noop", "cron": "0 2 * * *", "timezone": "UTC",
                  "catch_up": False, "next_tick": 1_767_232_800.0}]  # fmt: skip
    await board.register_conductor("c-1", "c", ttl=60, meta={"schedules": published})
    job = await board.post_tick(name, 1_767_225_600.0, "nightly", "noop", {"key": 1})
    assert job is not None
    async with client(create_app(board, store)) as http:
        [row] = (await http.get("/api/summary")).json()["schedules"]
        assert row["name"] == name and row["last_job_id"] == job.id
        assert row["when"] == "cron 0 2 * * * (UTC)" and row["runners"] == 1
        assert row["next_tick"] is not None and row["last_job_state"] == "UNCLAIMED"
        page = (await http.get("/")).text
        assert "&lt;b&gt;nightly&lt;/b&gt;" in page and "<b>nightly</b>" not in page
        assert f'/jobs/{job.id}"' in page


# -- cancel and concurrency limits ---------------------------------------------------------------

ACTION = {"X-Aioconductor-Action": "1"}


def _cancel_button(page: str) -> str:
    import re

    found = re.search(r'<button type="button" data-action="cancel"[^>]*>', page)
    assert found is not None
    return found[0]


async def test_cancel_ends_a_waiting_job_at_once_and_is_refused_once_it_ended(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, _ = board_and_store
    job = await board.post("waiting", "noop", {"key": 1})
    async with client(create_app(board)) as http:
        refused = await http.post(f"/api/jobs/{job.id}/cancel", headers=ACTION)
        assert refused.status_code == 403 and "--allow-actions" in refused.json()["error"]
    assert (await board.get(job.id)).cancel_reason is None

    async with client(create_app(board, allow_actions=True)) as http:
        assert "disabled" not in _cancel_button((await http.get(f"/jobs/{job.id}")).text)
        answer = await http.post(f"/api/jobs/{job.id}/cancel", headers=ACTION)
        assert answer.status_code == 200 and answer.json()["cancel"] == "ended"
        assert answer.json()["job"]["outcome"] == "CANCELLED"
        stored = await board.get(job.id)
        assert stored.state is JobState.COMPLETE and stored.outcome is Outcome.CANCELLED
        assert stored.cancel_reason == "cancelled from the dashboard"

        again = await http.post(f"/api/jobs/{job.id}/cancel", headers=ACTION)
        assert again.status_code == 409
        assert again.json()["error"] == (
            f"job {job.id} already ended COMPLETE (CANCELLED): it cannot be cancelled"
        )
        assert (await board.get(job.id)).updated_at == stored.updated_at

        page = (await http.get(f"/jobs/{job.id}")).text
        assert 'id="job-outcome"><span class="pill outcome-CANCELLED">CANCELLED</span>' in page
        assert '<td id="cancel-reason">cancelled from the dashboard</td>' in page
        assert "disabled" in _cancel_button(page)
        listed = (await http.get("/")).text
        assert (
            '<span class="pill outcome-CANCELLED">CANCELLED</span> '
            '<span class="reason">cancelled from the dashboard</span>'
        ) in listed
        assert (await http.get("/api/summary")).json()["jobs"][0]["cancel_reason"] == (
            "cancelled from the dashboard"
        )
        missing = await http.post("/api/jobs/nope/cancel", headers=ACTION)
        assert missing.status_code == 404


async def test_cancel_flags_a_claimed_job_and_the_pages_say_a_cancel_is_asked(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, _ = board_and_store
    job = await board.post("running", "noop", {"key": 1})
    claim = await board.claim(job.id, "conductor-1", lease=600)
    async with client(create_app(board, allow_actions=True)) as http:
        answer = await http.post(f"/api/jobs/{job.id}/cancel", headers=ACTION)
        assert answer.status_code == 200 and answer.json()["cancel"] == "flagged"
        assert answer.json()["job"]["cancel_requested"] is True
        stored = await board.get(job.id)
        assert stored.state is JobState.CLAIMED and stored.cancel_requested
        assert (await board.renew(claim)).cancel_requested

        page = (await http.get(f"/jobs/{job.id}")).text
        assert '<span class="pill cancel-requested">cancel requested</span>' in page
        assert "its owner is stopping it and reverting what it did" in page
        assert 'data-cancel-requested="true"' in page and "disabled" in _cancel_button(page)
        assert 'data-action="trash" title="drop it now, no revert" >' in page  # still offered
        listed = (await http.get("/?state=CLAIMED")).text
        assert '<span class="pill cancel-requested">cancel requested</span>' in listed
        # Asked again: still flagged, the first reason kept.
        again = await http.post(f"/api/jobs/{job.id}/cancel", headers=ACTION)
        assert again.status_code == 200 and again.json()["cancel"] == "flagged"
    assert (await board.get(job.id)).cancel_reason == "cancelled from the dashboard"


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"]
)
async def test_a_cross_site_post_cannot_cancel_a_running_job(
    board_and_store: tuple[JobBoard, Store], content_type: str
) -> None:
    """A form on another site posting to the cancel URL: no action header, nothing flagged."""
    board, _ = board_and_store
    job = await board.post("running", "noop", {"key": 1})
    await board.claim(job.id, "conductor-1", lease=600)
    headers = {"Origin": "https://evil.example", "Content-Type": content_type}
    async with client(create_app(board, allow_actions=True)) as http:
        refused = await http.post(f"/api/jobs/{job.id}/cancel", headers=headers, content=b"a=1")
    assert refused.status_code == 403 and "x-aioconductor-action" in refused.json()["error"]
    after = await board.get(job.id)
    assert after.state is JobState.CLAIMED and after.cancel_reason is None
    assert not after.cancel_requested


async def test_a_rebinding_page_cannot_cancel_even_with_the_action_header(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, _ = board_and_store
    job = await board.post("running", "noop", {"key": 1})
    await board.claim(job.id, "conductor-1", lease=600)
    headers = {**ACTION, "Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
    async with served_on(create_app(board, allow_actions=True)) as http:
        refused = await http.post(f"/api/jobs/{job.id}/cancel", headers=headers)
        assert refused.status_code == 400
        assert (await board.get(job.id)).cancel_reason is None
        # The same request on the address the dashboard is served on is answered.
        answered = await http.post(f"/api/jobs/{job.id}/cancel", headers=ACTION)
        assert answered.status_code == 200
    assert (await board.get(job.id)).cancel_requested


async def test_the_limits_panel_lists_each_key_its_limit_and_its_claims(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, _ = board_and_store
    async with client(create_app(board)) as http:
        assert (await http.get("/api/summary")).json()["limits"] == []
        assert '<td colspan="3">no limit is set</td>' in (await http.get("/")).text

        key = "<b>payments</b>"
        for n in range(3):
            await board.post(f"pay-{n}", "noop", {"key": n}, limit_key=key)
        await board.set_limit(key, 2)
        await board.set_limit("reports", 0)
        while await board.claim_next("conductor-1") is not None:
            pass
        summary = (await http.get("/api/summary")).json()
        assert summary["limits"] == [
            {"key": "<b>payments</b>", "limit": 2, "claimed": 2},
            {"key": "reports", "limit": 0, "claimed": 0},
        ]
        page = (await http.get("/")).text
        assert "<td>&lt;b&gt;payments&lt;/b&gt;</td>" in page and "<b>payments</b>" not in page
        assert 'data-running="2" data-capacity="2"' in page and "<td>2 / 2</td>" in page
        assert '<td>0 / 0 <span class="muted">(paused)</span></td>' in page
        assert 'id="limit-count">2 set<' in page
        job, *_ = [job async for job in board.iterjobs(state=JobState.CLAIMED)]
        detail = (await http.get(f"/jobs/{job.id}")).text
        assert '<td id="limit-key">&lt;b&gt;payments&lt;/b&gt;</td>' in detail


async def test_repost_keeps_the_limit_key(board_and_store: tuple[JobBoard, Store]) -> None:
    board, _ = board_and_store
    job = await board.post("pay", "noop", {"key": 1}, limit_key="payments", priority=3)
    async with client(create_app(board, allow_actions=True)) as http:
        answer = await http.post(f"/api/jobs/{job.id}/repost", headers=ACTION)
    new = await board.get(answer.json()["job"]["id"])
    assert new.id != job.id and new.limit_key == "payments" and new.priority == 3
