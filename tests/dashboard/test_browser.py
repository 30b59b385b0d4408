"""The dashboard in a real headless Chromium: live counts, a failed job's page, actions."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aioconductor import Conductor, JobState, Outcome, open_board, open_store
from aioconductor.dashboard import create_app

from .. import apps
from ..apps import flows
from .conftest import serve

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

EVIL = '<img src=x onerror="window.pwned=1">'
SCREENSHOT = "/tmp/dashboard.png"


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Blocking WebDriver calls run in a thread, so the server in this loop can answer."""
    return await anyio.to_thread.run_sync(fn, *args)


def _wait(driver: Any, timeout: float) -> Any:
    """A wait that polls through a live update replacing the element it read (stale)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )


def wait_text(driver: Any, element_id: str, expected: str, timeout: float = 15) -> None:
    from selenium.webdriver.common.by import By

    _wait(driver, timeout).until(
        lambda d: d.find_element(By.ID, element_id).text.strip() == expected,
        message=f"#{element_id} never read {expected!r}",
    )


def wait_contains(driver: Any, element_id: str, expected: str, timeout: float = 15) -> None:
    from selenium.webdriver.common.by import By

    _wait(driver, timeout).until(
        lambda d: expected in d.find_element(By.ID, element_id).text,
        message=f"#{element_id} never showed {expected!r}",
    )


def bulk(driver: Any, action: str, scope: str) -> str:
    """Run the bulk ``action`` on ``scope`` (``selected`` or ``matching``) and accept its
    confirmation; the confirmation's question."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    Select(driver.find_element(By.ID, "bulk-scope")).select_by_value(scope)
    driver.find_element(By.CSS_SELECTOR, f'button[data-bulk="{action}"]').click()
    # "All matching" asks the board for the count first: the dialog comes later.
    alert = WebDriverWait(driver, 5, ignored_exceptions=(NoAlertPresentException,)).until(
        lambda d: d.switch_to.alert
    )
    question = str(alert.text)
    alert.accept()
    return question


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text.strip())


async def test_counts_change_live_as_jobs_complete_and_a_failure_shows(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    apps.GATE.clear()
    release = apps.GATE["dash"] = anyio.Event()
    async with (
        open_board(f"memory://{uuid.uuid4().hex}") as board,
        open_store("memory://") as store,
    ):
        held = [
            await board.post(f"order-{n}", "steps", {"key": n, "gate": "dash"}) for n in range(3)
        ]
        failing = await board.post("charge-card", "fails", {"key": "card-42"})
        evil = await board.post(EVIL, "noop", {"key": EVIL})
        await board.post("nightly-report", "noop", {"key": 0}, delay=3600)
        conductor = Conductor("web-1", board, store=store, flows=flows, max_concurrency=8)
        async with serve(create_app(board, store)) as url, anyio.create_task_group() as tg:
            await in_thread(browser.get, url + "/")
            assert await in_thread(text_of, browser, "count-UNCLAIMED") == "5"
            assert await in_thread(text_of, browser, "count-SCHEDULED") == "1"
            assert await in_thread(text_of, browser, "count-COMPLETE") == "0"
            # The job named like markup shows as text and runs nothing.
            assert EVIL in await in_thread(lambda: browser.find_element(By.ID, "jobs").text)
            assert await in_thread(browser.execute_script, "return window.pwned") is None

            tg.start_soon(conductor.run)
            # Without a reload: the page polls and redraws its counts and conductors.
            await in_thread(wait_text, browser, "count-CLAIMED", "3")
            await in_thread(wait_text, browser, "count-COMPLETE", "2")
            # The conductor's load: its live claims on the board.
            await in_thread(wait_contains, browser, "conductors", "3 / 8")
            await in_thread(browser.save_screenshot, "/tmp/dashboard-running.png")
            await in_thread(wait_text, browser, "conductor-count", "1 alive")
            assert "web-1" in await in_thread(
                lambda: browser.find_element(By.ID, "conductors").text
            )
            release.set()
            await in_thread(wait_text, browser, "count-COMPLETE", "5")
            await in_thread(wait_text, browser, "count-CLAIMED", "0")
            await in_thread(browser.save_screenshot, SCREENSHOT)

            await in_thread(browser.get, f"{url}/jobs/{failing.id}")
            tracebacks = await in_thread(
                lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, "pre.traceback")]
            )
            assert len(tracebacks) == 1 and "RuntimeError: boom card-42" in tracebacks[0]
            assert "Traceback (most recent call last)" in tracebacks[0]
            assert await in_thread(text_of, browser, "job-outcome") == "REVERTED"
            failure = await in_thread(text_of, browser, "job-failure")
            assert failure == "builtins.RuntimeError: boom card-42"
            assert "card-42" in await in_thread(text_of, browser, "job-args")
            await in_thread(browser.save_screenshot, "/tmp/dashboard-job.png")

            await in_thread(browser.get, f"{url}/jobs/{evil.id}")
            assert await in_thread(text_of, browser, "job-name") == EVIL
            assert await in_thread(browser.execute_script, "return window.pwned") is None
            conductor.stop()
        states = [(await board.get(job.id)).state for job in held]
    assert states == [JobState.COMPLETE] * 3


async def test_trash_and_repost_from_a_jobs_page(browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    async with open_board(f"memory://{uuid.uuid4().hex}") as board:
        job = await board.post("stuck", "noop", {"key": 1})
        async with serve(create_app(board, allow_actions=True)) as url:
            await in_thread(browser.get, f"{url}/jobs/{job.id}")

            def click_trash() -> None:
                browser.find_element(By.CSS_SELECTOR, 'button[data-action="trash"]').click()
                WebDriverWait(browser, 5).until(lambda d: d.switch_to.alert).accept()

            await in_thread(click_trash)
            await in_thread(wait_text, browser, "job-state", "TRASHED")
            assert await in_thread(text_of, browser, "trash-reason") == "trashed from the dashboard"

            def click_repost() -> None:
                browser.find_element(By.CSS_SELECTOR, 'button[data-action="repost"]').click()
                WebDriverWait(browser, 5).until(lambda d: job.id not in d.current_url)

            await in_thread(click_repost)
            await in_thread(wait_text, browser, "job-state", "UNCLAIMED")
            new_id = (await in_thread(lambda: browser.current_url)).rsplit("/", 1)[1]
        assert (await board.get(job.id)).state is JobState.TRASHED
        reposted = await board.get(new_id)
    assert reposted.name == "stuck" and reposted.args == {"key": 1}


async def test_cancel_from_a_jobs_page_and_limits_drawn_live(browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    async with open_board(f"memory://{uuid.uuid4().hex}") as board:
        waiting = await board.post("waiting", "noop", {"key": 1}, limit_key="payments")
        running = await board.post("running", "noop", {"key": 2})
        await board.claim(running.id, "conductor-1", lease=600)
        async with serve(create_app(board, allow_actions=True)) as url:
            await in_thread(browser.get, f"{url}/")
            assert await in_thread(text_of, browser, "limit-count") == "0 set"
            await board.set_limit("payments", 2)
            # Without a reload: the panel polls like the counts.
            await in_thread(wait_text, browser, "limit-count", "1 set")
            await in_thread(wait_contains, browser, "limits", "payments")
            await in_thread(wait_contains, browser, "limits", "0 / 2")

            def click_cancel() -> None:
                browser.find_element(By.CSS_SELECTOR, 'button[data-action="cancel"]').click()
                WebDriverWait(browser, 5).until(lambda d: d.switch_to.alert).accept()

            await in_thread(browser.get, f"{url}/jobs/{waiting.id}")
            await in_thread(click_cancel)
            await in_thread(wait_text, browser, "job-state", "COMPLETE")
            assert await in_thread(text_of, browser, "job-outcome") == "CANCELLED"
            reason = await in_thread(text_of, browser, "cancel-reason")
            assert reason == "cancelled from the dashboard"

            await in_thread(browser.get, f"{url}/jobs/{running.id}")
            await in_thread(click_cancel)
            await in_thread(wait_text, browser, "job-outcome", "cancel requested")
            assert await in_thread(text_of, browser, "job-state") == "CLAIMED"
            disabled = await in_thread(
                lambda: browser.find_element(
                    By.CSS_SELECTOR, 'button[data-action="cancel"]'
                ).get_attribute("disabled")
            )
            assert disabled is not None

            third = await board.post("third", "noop", {"key": 3})
            await in_thread(browser.get, f"{url}/")
            await in_thread(wait_contains, browser, "jobs", "cancel requested")
            await board.cancel(third.id, reason="by the board")
            # Drawn by the page's poll, not the server: the outcome cell as the template has it.
            await in_thread(wait_contains, browser, "jobs", "CANCELLED by the board")
            await in_thread(browser.save_screenshot, "/tmp/dashboard-cancel.png")
        assert (await board.get(waiting.id)).outcome is Outcome.CANCELLED
        assert (await board.get(running.id)).cancel_requested


async def test_filter_page_and_bulk_cancel_with_its_confirmation(browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    async with open_board(f"memory://{uuid.uuid4().hex}") as board:
        orders = await board.post_many("noop", [{"key": n} for n in range(60)], name="order")
        others = await board.post_many("noop", [{"key": n} for n in range(5)], name="invoice")
        done = await board.post("order-paid", "steps", {"key": "p"})
        claim = await board.claim(done.id, "conductor-1", lease=600)
        await board.consume(claim, outcome=Outcome.REVERTED)
        async with serve(create_app(board, allow_actions=True)) as url:
            await in_thread(browser.get, url + "/")
            # The charts are drawn, and a finished job wears its outcome's colour.
            assert await in_thread(text_of, browser, "throughput-total") == "1"
            bars = await in_thread(
                lambda: browser.find_elements(By.CSS_SELECTOR, "#throughput rect.ending-REVERTED")
            )
            assert len(bars) == 1
            badge = await in_thread(
                lambda: browser.find_element(
                    By.CSS_SELECTOR, "#jobs .pill.badge-REVERTED"
                ).value_of_css_property("background-color")
            )
            assert badge == "rgba(217, 119, 6, 1)"  # amber

            def filter_by(state: str, text: str) -> None:
                Select(browser.find_element(By.ID, "filter-state")).select_by_value(state)
                browser.find_element(By.ID, "filter-text").send_keys(text)
                browser.find_element(By.ID, "filter-apply").click()
                WebDriverWait(browser, 5).until(lambda d: "text=order" in d.current_url)

            await in_thread(filter_by, "UNCLAIMED", "order")
            assert "state=UNCLAIMED" in await in_thread(lambda: browser.current_url)
            await in_thread(wait_text, browser, "matching", "60")
            rows = await in_thread(
                lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job-id]")
            )
            assert len(rows) == 50

            def older() -> None:
                browser.find_element(By.ID, "page-older").click()
                WebDriverWait(browser, 5).until(lambda d: "before=" in d.current_url)

            await in_thread(older)
            ids = await in_thread(
                lambda: [
                    r.get_attribute("data-job-id")
                    for r in browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job-id]")
                ]
            )
            oldest = sorted(orders, key=lambda j: j.seq)[:10]
            assert ids == [j.id for j in reversed(oldest)]
            assert (
                await in_thread(lambda: browser.find_element(By.ID, "page-older").is_displayed())
                is False
            )

            # This page's ten, selected with the page's box: the confirmation counts them.
            await in_thread(lambda: browser.find_element(By.ID, "select-page").click())
            await in_thread(wait_text, browser, "bulk-selected", "the selected jobs (10)")
            question = await in_thread(bulk, browser, "cancel", "selected")
            assert question.startswith("Cancel the 10 selected jobs?")
            await in_thread(wait_contains, browser, "bulk-result", "10 cancelled")
            # Drawn by the poll: the page's jobs are gone from the filter (no longer waiting).
            await in_thread(wait_text, browser, "matching", "50")

            # Then all that match: the count comes from the board, asked before confirming.
            question = await in_thread(bulk, browser, "cancel", "matching")
            assert question.startswith("Cancel all 50 jobs matching the filter?")
            await in_thread(wait_contains, browser, "bulk-result", "50 cancelled")
            await in_thread(wait_text, browser, "matching", "0")
            await in_thread(browser.save_screenshot, "/tmp/dashboard-bulk.png")
        ended = [await board.get(job.id) for job in orders]
        untouched = [await board.get(job.id) for job in others]
    assert all(job.outcome is Outcome.CANCELLED for job in ended)
    assert all(job.state is JobState.UNCLAIMED for job in untouched)


async def test_page_forward_and_back_then_bulk_repost_a_filtered_set(browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    async with open_board(f"memory://{uuid.uuid4().hex}") as board:
        orders = await board.post_many(
            "noop", [{"key": n} for n in range(55)], name="order", headers={"x-trace": "t-1"}
        )
        invoices = await board.post_many("noop", [{"key": n} for n in range(3)], name="invoice")
        for job in [*orders, *invoices]:
            await board.trash(job.id, reason="the payment provider was down")
        async with serve(create_app(board, allow_actions=True)) as url:
            await in_thread(browser.get, url + "/")

            def filter_trashed_orders() -> None:
                Select(browser.find_element(By.ID, "filter-state")).select_by_value("TRASHED")
                browser.find_element(By.ID, "filter-text").send_keys("order")
                browser.find_element(By.ID, "filter-apply").click()
                WebDriverWait(browser, 5).until(lambda d: "text=order" in d.current_url)

            def row_ids() -> list[str]:
                rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job-id]")
                return [str(row.get_attribute("data-job-id")) for row in rows]

            def go(link: str, url_part: str, present: bool) -> None:
                browser.find_element(By.ID, link).click()
                WebDriverWait(browser, 5).until(lambda d: (url_part in d.current_url) is present)

            await in_thread(filter_trashed_orders)
            await in_thread(wait_text, browser, "matching", "55")
            first = await in_thread(row_ids)
            newest_first = [j.id for j in sorted(orders, key=lambda j: j.seq, reverse=True)]
            assert first == newest_first[:50]
            await in_thread(go, "page-older", "before=", True)  # forward...
            assert await in_thread(row_ids) == newest_first[50:]
            await in_thread(go, "page-newer", "before=", False)  # ...and back
            assert await in_thread(row_ids) == first

            question = await in_thread(bulk, browser, "repost", "matching")
            assert question.startswith("Re-post all 55 jobs matching the filter?")
            await in_thread(wait_contains, browser, "bulk-result", "55 reposted")
        fresh = [job async for job in board.iterjobs(state=JobState.UNCLAIMED)]
    assert len(fresh) == 55 and {job.name for job in fresh} == {"order"}
    assert all(job.headers == {"x-trace": "t-1"} for job in fresh)
    assert sorted(job.args["key"] for job in fresh) == list(range(55))
