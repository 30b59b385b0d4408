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
        assert 'id="job-outcome"><span class="pill badge-CANCELLED">CANCELLED</span>' in page
        assert '<td id="cancel-reason">cancelled from the dashboard</td>' in page
        assert "disabled" in _cancel_button(page)
        listed = (await http.get("/")).text
        assert (
            '<span class="pill badge-CANCELLED">CANCELLED</span> '
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


# -- issue #24: badges, filters, paging, charts, bulk actions ------------------------------------

BADGE_COLOURS = {
    "SUCCESS": "var(--success)",
    "REVERTED": "var(--reverted)",
    "FAILURE": "var(--failure)",
    "TRASHED": "var(--trashed-end)",
    "CANCELLED": "var(--cancelled)",
}


async def _ended(board: JobBoard, name: str, outcome: Outcome, flow: str = "noop") -> str:
    """A job consumed with ``outcome`` (as a conductor would), by id."""
    job = await board.post(name, flow, {"key": name})
    claim = await board.claim(job.id, "conductor-1", lease=600)
    await board.consume(claim, outcome=outcome)
    return job.id


async def _one_of_each(board: JobBoard) -> dict[str, str]:
    """A job wearing each badge, by badge (and ``flagged``: claimed, cancel asked)."""
    ids = {
        o.value: await _ended(board, o.value.lower(), o) for o in Outcome if o.value != "CANCELLED"
    }
    cancelled = await board.post("cancelled", "noop", {"key": 0})
    await board.cancel(cancelled.id, reason="not needed")
    trashed = await board.post("trashed", "noop", {"key": 0})
    await board.trash(trashed.id, reason="bad input")
    flagged = await board.post("flagged", "noop", {"key": 0})
    await board.claim(flagged.id, "conductor-1", lease=600)
    await board.cancel(flagged.id, reason="stop it")
    waiting = await board.post("waiting", "noop", {"key": 0})
    return {**ids, "CANCELLED": cancelled.id, "TRASHED": trashed.id, "flagged": flagged.id,
            "UNCLAIMED": waiting.id}  # fmt: skip


async def test_each_outcome_wears_its_own_badge(board_and_store: tuple[JobBoard, Store]) -> None:
    board, _ = board_and_store
    ids = await _one_of_each(board)
    async with client(create_app(board)) as http:
        jobs = {job["id"]: job for job in (await http.get("/api/summary")).json()["jobs"]}
        page = (await http.get("/")).text
        css = (await http.get("/static/dashboard.css")).text
    for badge in ("SUCCESS", "REVERTED", "FAILURE", "CANCELLED", "TRASHED", "UNCLAIMED"):
        assert jobs[ids[badge]]["badge"] == badge
        assert f'<span class="pill badge-{badge}">{badge}</span>' in page
    assert jobs[ids["flagged"]]["badge"] == "CLAIMED"
    assert (
        '<span class="pill badge-CLAIMED">CLAIMED</span> '
        '<span class="pill cancel-requested">cancel requested</span> '
        '<span class="reason">stop it</span>'
    ) in page
    assert '<span class="pill badge-TRASHED">TRASHED</span> <span class="reason">bad input' in page
    assert "badge-COMPLETE" not in page  # no finished job wears the state's green any more
    for badge, colour in BADGE_COLOURS.items():
        assert f".pill.badge-{badge} {{ background: {colour}; }}" in css
    assert "--success: #15803d" in css and "--reverted: #d97706" in css
    assert "--failure: #dc2626" in css and "--trashed-end: #991b1b" in css
    assert "--cancelled: #6b7280" in css


async def test_filters_combine_and_are_kept_in_the_url(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, _ = board_and_store
    want = await _ended(board, "Order-17", Outcome.REVERTED, flow="steps")
    await _ended(board, "order-18", Outcome.SUCCESS, flow="steps")  # another outcome
    await _ended(board, "order-19", Outcome.REVERTED, flow="noop")  # another flow
    await _ended(board, "invoice-1", Outcome.REVERTED, flow="steps")  # another name
    await board.post("order-20", "steps", {"key": 1})  # not complete
    keyed = await board.post("refund", "steps", {"key": 2}, key="ORDER-21-refund")
    query = "state=COMPLETE&outcome=REVERTED&flow=steps&text=order"
    async with client(create_app(board, allow_actions=True)) as http:
        found = (await http.get(f"/api/summary?{query}")).json()
        assert [job["id"] for job in found["jobs"]] == [want] and found["matching"] == 1
        assert found["filter"] == {
            "state": "COMPLETE", "outcome": "REVERTED", "flow": "steps", "text": "order",
        }  # fmt: skip
        by_key = (await http.get("/api/summary?text=21-REF")).json()
        assert [job["id"] for job in by_key["jobs"]] == [keyed.id]
        # Lower case and stray values: parsed or left out, never an error.
        loose = (await http.get("/api/summary?state=complete&outcome=nope&before=x")).json()
        assert loose["filter"] == {"state": "COMPLETE"} and loose["matching"] == 4
        assert (await http.get("/api/count?flow=steps&text=order")).json()["count"] == 4

        page = (await http.get(f"/?{query}")).text
        assert '<option value="COMPLETE" selected>' in page
        assert '<option value="REVERTED" selected>' in page
        assert 'id="filter-flow" value="steps"' in page and 'id="filter-text" value="order"' in page
        assert 'id="matching">1<' in page and f'data-job-id="{want}"' in page
        # The page polls for the same filter, and the state cards keep the other filters.
        assert (
            'data-query="?state=COMPLETE&amp;outcome=REVERTED&amp;flow=steps&amp;text=order"'
            in page
        )
        assert 'href="/?state=CLAIMED&amp;outcome=REVERTED&amp;flow=steps&amp;text=order"' in page
        assert 'href="/?outcome=REVERTED&amp;flow=steps&amp;text=order"' in page  # ALL
        assert 'data-filter="{&#34;flow&#34;: &#34;steps&#34;, &#34;outcome&#34;' in page


async def _walk(http: httpx.AsyncClient, query: str, link: str) -> list[list[str]]:
    """The pages met following ``link`` ("older" or "newer") from ``query``, ids each."""
    pages = []
    while query is not None:
        summary = (await http.get(f"/api/summary{query}")).json()
        pages.append([job["id"] for job in summary["jobs"]])
        query = summary["links"][link]
    return pages


async def test_pages_go_older_and_back_newer_without_a_repeat_or_a_skip(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, _ = board_and_store
    posted = await board.post_many("noop", [{"key": n} for n in range(123)], name="bulk")
    await board.post_many("steps", [{"key": n} for n in range(7)], name="other")
    newest_first = [job.id for job in sorted(posted, key=lambda j: j.seq, reverse=True)]
    async with client(create_app(board)) as http:
        pages = await _walk(http, "?flow=noop", "older")
        assert [len(p) for p in pages] == [50, 50, 23]
        assert [i for p in pages for i in p] == newest_first
        # Jobs posted meanwhile land on the first page, not on the older ones.
        first = (await http.get("/api/summary?flow=noop")).json()
        await board.post_many("noop", [{"key": n} for n in range(5)], name="late")
        second = (await http.get(f"/api/summary{first['links']['older']}")).json()
        assert [job["id"] for job in second["jobs"]] == pages[1]

        # From the last page back: each "newer" link is the page before it.
        last = (await http.get(f"/api/summary{second['links']['older']}")).json()
        assert last["links"]["older"] is None and last["links"]["newest"] == "?flow=noop"
        back = await _walk(http, second["links"]["older"], "newer")
        assert back[:2] == [pages[2], pages[1]] and len(back) == 3
        assert back[2][5:] == pages[0][:45]  # the newest page, with the 5 late jobs on top
        html = (await http.get(f"/{first['links']['older']}")).text
        assert 'id="page-older" href="/?flow=noop&amp;before=' in html
        assert 'id="page-newer" href="/?flow=noop"' in html


async def test_the_list_reads_pages_not_the_whole_board(
    board_and_store: tuple[JobBoard, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No job is read one by one: the list is a search page, the conductors' load a count."""
    board, _ = board_and_store
    await board.post_many("noop", [{"key": n} for n in range(60)])
    read: list[JobState | None] = []
    real = board.iterjobs

    def iterjobs(state: JobState | None = None) -> Any:
        read.append(state)
        return real(state=state)

    monkeypatch.setattr(board, "iterjobs", iterjobs)
    await board.register_conductor("conductor-1", "c1", ttl=60)
    await board.claim_next("conductor-1")
    async with client(create_app(board)) as http:
        summary = (await http.get("/api/summary")).json()
        assert len(summary["jobs"]) == 50 and summary["matching"] == 60
        assert [c["running"] for c in summary["conductors"]] == [1]
        assert (await http.get("/?text=noop")).status_code == 200
    assert read == []


async def test_a_filter_that_fits_one_page_is_counted_from_the_page(
    board_and_store: tuple[JobBoard, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    board, _ = board_and_store
    await board.post_many("noop", [{"key": n} for n in range(60)], name="common")
    await board.post("rare-1", "noop", {"key": 0})
    counted: list[Any] = []
    real = board.search_count

    async def search_count(where: Any = None) -> int:
        counted.append(where)
        return await real(where)

    monkeypatch.setattr(board, "search_count", search_count)
    async with client(create_app(board)) as http:
        assert (await http.get("/api/summary?text=rare")).json()["matching"] == 1
        assert counted == []
        assert (await http.get("/api/summary?text=common")).json()["matching"] == 60
        assert len(counted) == 1


async def test_the_charts_count_endings_per_minute_and_jobs_per_state(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, _ = board_and_store
    for n in range(3):
        await _ended(board, f"ok-{n}", Outcome.SUCCESS)
    await _ended(board, "rev", Outcome.REVERTED)
    await _ended(board, "fail", Outcome.FAILURE)
    trashed = await board.post("bad", "noop", {"key": 0})
    await board.trash(trashed.id, reason="bad")
    await board.post("waiting", "noop", {"key": 0})
    async with client(create_app(board)) as http:
        summary = (await http.get("/api/summary")).json()
        page = (await http.get("/")).text
    chart = summary["throughput"]
    assert chart["totals"] == {"SUCCESS": 3, "REVERTED": 1, "FAILURE": 1, "CANCELLED": 0,
                               "TRASHED": 1}  # fmt: skip
    assert chart["total"] == 6 and len(chart["buckets"]) == 60
    assert sum(b["SUCCESS"] for b in chart["buckets"][-2:]) == 3  # this minute (or the last)
    by_cls = {rect["cls"]: rect for rect in chart["rects"]}
    assert set(by_cls) == {"ending-SUCCESS", "ending-REVERTED", "ending-FAILURE", "ending-TRASHED"}
    assert all(0 <= r["y"] and r["y"] + r["h"] <= chart["height"] for r in chart["rects"])
    depth = {rect["title"] for rect in summary["depth"]["rects"]}
    assert depth == {"0 SCHEDULED", "1 UNCLAIMED", "0 CLAIMED", "5 COMPLETE", "1 TRASHED"}
    # Drawn inline, no script or stylesheet from elsewhere.
    assert '<svg class="chart" id="throughput"' in page and '<svg class="chart" id="depth"' in page
    assert '<rect class="ending-SUCCESS"' in page and ": 3 SUCCESS</title>" in page
    assert "<title>5 COMPLETE</title>" in page and 'id="total-SUCCESS">3<' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


async def test_bulk_actions_count_what_they_did(board_and_store: tuple[JobBoard, Store]) -> None:
    board, _ = board_and_store
    waiting = [await board.post(f"w-{n}", "noop", {"key": n}) for n in range(5)]
    running = [await board.post(f"r-{n}", "steps", {"key": n}) for n in range(2)]
    for job in running:
        await board.claim(job.id, "conductor-1", lease=600)
    done = await _ended(board, "done", Outcome.SUCCESS)
    async with client(create_app(board, allow_actions=True)) as http:
        counted = await http.get("/api/count?state=UNCLAIMED")
        assert counted.json() == {"count": 5, "filter": {"state": "UNCLAIMED"}, "limit": 10_000}
        answer = await http.post(
            "/api/bulk/cancel", headers=ACTION, json={"filter": {"state": "UNCLAIMED"}}
        )
        assert answer.status_code == 200
        assert answer.json() == {
            "action": "cancel", "scope": "matching", "examined": 5,
            "counts": {"cancelled": 5}, "more": False, "limit": 10_000,
        }  # fmt: skip
        picked = [running[0].id, done, "nope", running[0].id]
        answer = await http.post("/api/bulk/cancel", headers=ACTION, json={"ids": picked})
        assert answer.json()["examined"] == 3
        assert answer.json()["counts"] == {"flagged": 1, "already ended": 1, "missing": 1}
        answer = await http.post(
            "/api/bulk/trash", headers=ACTION, json={"ids": [running[1].id, done]}
        )
        assert answer.json()["counts"] == {"trashed": 1, "already ended": 1}
    for job in waiting:
        after = await board.get(job.id)
        assert after.outcome is Outcome.CANCELLED
        assert after.cancel_reason == "cancelled from the dashboard"
    assert (await board.get(running[0].id)).cancel_requested
    trashed = await board.get(running[1].id)
    assert (
        trashed.state is JobState.TRASHED and trashed.trash_reason == "trashed from the dashboard"
    )


async def test_a_bulk_repost_keeps_headers_and_options_but_not_the_key(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    from aioconductor import RetryPolicy

    board, _ = board_and_store
    retry = RetryPolicy(retries=2, base=5)
    olds = [
        await board.post(
            f"pay-{n}", "noop", {"key": n}, key=f"pay-key-{n}", priority=4, max_attempts=7,
            headers={"traceparent": f"00-{n:032x}-{n:016x}-01", "x-id": str(n)},
            retry=retry, limit_key="payments",
        )
        for n in range(3)
    ]  # fmt: skip
    for old in olds:
        await board.trash(old.id, reason="oops")
    await board.post("other", "noop", {"key": 9})
    async with client(create_app(board, allow_actions=True)) as http:
        assert (await http.get("/api/count?state=TRASHED&text=pay")).json()["count"] == 3
        where = {"state": "TRASHED", "text": "pay"}
        answer = await http.post("/api/bulk/repost", headers=ACTION, json={"filter": where})
        assert answer.json()["counts"] == {"reposted": 3} and not answer.json()["more"]
        single = await http.post(f"/api/jobs/{olds[0].id}/repost", headers=ACTION)
        assert single.json()["job"]["headers"] == olds[0].headers
    news = (await board.search(limit=4)).jobs
    assert await board.job_count() == 8
    for new in news:
        old = next(o for o in olds if o.name == new.name)
        assert new.id != old.id and new.state is JobState.UNCLAIMED and new.key is None
        assert new.headers == old.headers and new.args == old.args and new.flow == "noop"
        assert (new.priority, new.max_attempts, new.limit_key) == (4, 7, "payments")
        assert new.retry == retry


async def test_a_bulk_action_is_bounded_and_says_more_remain(
    board_and_store: tuple[JobBoard, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioconductor.dashboard import _bulk, app

    board, _ = board_and_store
    monkeypatch.setattr(_bulk, "BULK_LIMIT", 3)
    monkeypatch.setattr(app, "BULK_LIMIT", 3)
    jobs = [await board.post(f"j-{n}", "noop", {"key": n}) for n in range(5)]
    async with client(create_app(board, allow_actions=True)) as http:
        first = (await http.post("/api/bulk/trash", headers=ACTION, json={"filter": {}})).json()
        assert first["examined"] == 3 and first["more"] and first["counts"] == {"trashed": 3}
        # Newest first: the two oldest are left.
        left = [j.id for j in jobs if (await board.get(j.id)).state is JobState.UNCLAIMED]
        assert left == [jobs[0].id, jobs[1].id]
        where = {"filter": {"state": "UNCLAIMED"}}
        second = (await http.post("/api/bulk/trash", headers=ACTION, json=where)).json()
        assert second["examined"] == 2 and not second["more"]
        too_many = await http.post("/api/bulk/trash", headers=ACTION, json={"ids": ["a"] * 4})
        assert too_many.status_code == 400 and "1 to 3 ids" in too_many.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"ids": ["a"], "filter": {}}',
        b'{"ids": "a"}',
        b'{"filter": {"state": "BOGUS"}}',
        b'{"filter": {"owner": "x"}}',
        b'{"filter": {"text": 5}}',
        b"[]",
    ],
)
async def test_a_bad_bulk_request_changes_nothing(
    board_and_store: tuple[JobBoard, Store], body: bytes
) -> None:
    board, _ = board_and_store
    job = await board.post("j", "noop", {"key": 1})
    async with client(create_app(board, allow_actions=True)) as http:
        answer = await http.post("/api/bulk/trash", headers=ACTION, content=body)
    assert answer.status_code == 400 and "a bad bulk request" in answer.json()["error"]
    assert (await board.get(job.id)).state is JobState.UNCLAIMED


@pytest.mark.parametrize("action", ["cancel", "trash", "repost"])
async def test_bulk_actions_are_off_unless_allowed(
    board_and_store: tuple[JobBoard, Store], action: str
) -> None:
    board, _ = board_and_store
    job = await board.post("j", "noop", {"key": 1})
    async with client(create_app(board)) as http:
        page = (await http.get("/")).text
        assert 'id="bulk"' not in page and "data-bulk=" not in page and 'class="pick"' not in page
        for body in ({"ids": [job.id]}, {"filter": {}}):
            refused = await http.post(f"/api/bulk/{action}", headers=ACTION, json=body)
            assert refused.status_code == 403 and "--allow-actions" in refused.json()["error"]
    assert (await board.get(job.id)).state is JobState.UNCLAIMED
    assert await board.job_count() == 1


@pytest.mark.parametrize("action", ["cancel", "trash", "repost"])
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"]
)
async def test_every_bulk_action_is_refused_to_a_cross_site_post(
    board_and_store: tuple[JobBoard, Store], action: str, content_type: str
) -> None:
    """What a form or a no-cors fetch on another site can send: no custom header."""
    board, _ = board_and_store
    job = await board.post("j", "noop", {"key": 1})
    headers = {"Origin": "https://evil.example", "Content-Type": content_type}
    async with client(create_app(board, allow_actions=True)) as http:
        for body in (b'{"filter": {}}', f'{{"ids": ["{job.id}"]}}'.encode()):
            refused = await http.post(f"/api/bulk/{action}", headers=headers, content=body)
            assert refused.status_code == 403
            assert "x-aioconductor-action" in refused.json()["error"]
    assert (await board.get(job.id)).state is JobState.UNCLAIMED
    assert await board.job_count() == 1


@pytest.mark.parametrize("action", ["cancel", "trash", "repost"])
async def test_a_rebinding_page_can_neither_count_nor_use_a_bulk_action(
    board_and_store: tuple[JobBoard, Store], action: str
) -> None:
    board, _ = board_and_store
    job = await board.post("j", "noop", {"key": 1})
    foreign = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
    async with served_on(create_app(board, allow_actions=True)) as http:
        assert (await http.get("/api/count", headers=foreign)).status_code == 400
        refused = await http.post(
            f"/api/bulk/{action}", headers={**ACTION, **foreign}, json={"filter": {}}
        )
        assert refused.status_code == 400
        assert (await http.get("/api/count")).json()["count"] == 1
    assert (await board.get(job.id)).state is JobState.UNCLAIMED
    assert await board.job_count() == 1


async def test_the_job_page_lists_tasks_in_run_order_with_their_times(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, store = board_and_store
    job = await board.post("bad", "fails", {"key": "x"}, headers={"x-request-id": "<r-1>"})
    await finish(board, store, [job.id])
    async with client(create_app(board, store)) as http:
        detail = (await http.get(f"/api/jobs/{job.id}")).json()
        page = (await http.get(f"/jobs/{job.id}")).text
    atoms = detail["flows"][0]["atoms"]
    assert [a["name"] for a in atoms] == ["first", "boom"]
    assert [a["order"] for a in atoms] == sorted(a["order"] for a in atoms)
    assert detail["progress_since"] is not None
    for atom in atoms:  # each task's last run: when it started and ended, and how long
        assert atom["started"] and atom["ended"] and atom["duration"].endswith(" s")
    assert "times are each task's last run" in page and "<th>took</th>" in page
    assert '<td id="job-outcome"><span class="pill badge-REVERTED">REVERTED</span>' in page
    assert '<td class="mono" id="job-headers">x-request-id: &lt;r-1&gt;</td>' in page


async def test_the_schedules_panel_is_always_there_to_poll(
    board_and_store: tuple[JobBoard, Store],
) -> None:
    board, _ = board_and_store
    async with client(create_app(board)) as http:
        page = (await http.get("/")).text
    assert 'id="schedule-count">0<' in page and '<td colspan="7">no schedule</td>' in page
