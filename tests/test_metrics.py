"""The Prometheus exporter: a conductor on the memory board, scraped over HTTP."""

from __future__ import annotations

import sys
import urllib.request
import uuid

import anyio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aioconductor import Conductor, DependencyMissing, open_board
from aioconductor.metrics import ConductorMetrics

from .apps import flows


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_scrape_counts_what_the_conductor_did() -> None:
    registry = CollectorRegistry()
    metrics = ConductorMetrics(registry=registry)
    server, _ = metrics.start_http_server(0)
    port = server.server_port
    try:
        async with open_board(f"memory://{uuid.uuid4().hex}") as board:
            conductor = Conductor("m1", board, flows=flows, max_concurrency=4)
            metrics.attach(conductor)
            metrics.attach(conductor)  # twice changes nothing
            async with anyio.create_task_group() as watch:
                await watch.start(metrics.watch_board, board)
                jobs = [await board.post(f"ok-{n}", "noop", {"key": n}) for n in range(3)]
                jobs.append(await board.post("bad", "fails", {"key": "x"}))
                jobs.append(await board.post("unknown", "no-such-flow", {}))
                jobs.append(await board.post("last-try", "noop", {"key": 9}, max_attempts=1))
                with anyio.fail_after(10):
                    async with conductor, anyio.create_task_group() as tg:
                        tg.start_soon(conductor.run)
                        for job in jobs:
                            await board.wait_for(job.id)
                        before_stop = await anyio.to_thread.run_sync(scrape, port)
                        conductor.stop()
                watch.cancel_scope.cancel()
    finally:
        server.shutdown()
        server.server_close()

    def value(name: str, **labels: str) -> float:
        return before_stop[(name, tuple(sorted(labels.items())))]

    assert value("aioconductor_jobs_posted_total") == 6
    assert value("aioconductor_jobs_claimed_total", conductor="m1") == 6
    assert value("aioconductor_jobs_consumed_total", conductor="m1", outcome="SUCCESS") == 4
    assert value("aioconductor_jobs_consumed_total", conductor="m1", outcome="REVERTED") == 1
    assert value("aioconductor_jobs_consumed_total", conductor="m1", outcome="FAILURE") == 0
    assert value("aioconductor_jobs_trashed_total", conductor="m1") == 1
    assert value("aioconductor_jobs_abandoned_total", conductor="m1") == 0
    assert value("aioconductor_jobs_purged_total", conductor="m1") == 0
    assert value("aioconductor_lease_losses_total", conductor="m1") == 0
    assert value("aioconductor_claim_conflicts_total", conductor="m1") == 0
    assert value("aioconductor_jobs_in_flight", conductor="m1") == 0
    assert value("aioconductor_free_slots", conductor="m1") == 4
    assert value("aioconductor_job_queue_wait_seconds_count", flow="noop") == 4
    assert value("aioconductor_job_queue_wait_seconds_count", flow="fails") == 1
    assert value("aioconductor_job_run_seconds_count", flow="noop", outcome="SUCCESS") == 4
    assert value("aioconductor_job_run_seconds_count", flow="fails", outcome="REVERTED") == 1
    assert 0 < value("aioconductor_job_run_seconds_sum", flow="noop", outcome="SUCCESS") < 10


async def test_gauges_show_jobs_in_flight_and_detach_stops_exporting() -> None:
    registry = CollectorRegistry()
    metrics = ConductorMetrics(registry=registry)
    server, _ = metrics.start_http_server(0)
    port = server.server_port
    release = anyio.Event()
    try:
        async with open_board(f"memory://{uuid.uuid4().hex}") as board:
            conductor = Conductor("m2", board, flows=flows, max_concurrency=3)
            metrics.attach(conductor)
            from . import apps

            apps.GATE["m2"] = release
            jobs = [
                await board.post(f"held-{n}", "steps", {"key": n, "gate": "m2"}) for n in (1, 2)
            ]
            with anyio.fail_after(10):
                async with conductor, anyio.create_task_group() as tg:
                    tg.start_soon(conductor.run)
                    async with anyio.create_task_group() as watch:
                        await watch.start(
                            lambda *, task_status: metrics.watch_board(
                                board, interval=0.05, task_status=task_status
                            )
                        )
                        while len(conductor.running) < 2:
                            await anyio.sleep(0.01)
                        await anyio.sleep(0.1)  # one sample of the board's jobs by state
                        held = await anyio.to_thread.run_sync(scrape, port)
                        watch.cancel_scope.cancel()
                    release.set()
                    for job in jobs:
                        await board.wait_for(job.id)
                    conductor.stop()
            metrics.detach(conductor)
            after = await anyio.to_thread.run_sync(scrape, port)
    finally:
        server.shutdown()
        server.server_close()
    assert held[("aioconductor_jobs_in_flight", (("conductor", "m2"),))] == 2
    assert held[("aioconductor_free_slots", (("conductor", "m2"),))] == 1
    assert held[("aioconductor_board_jobs", (("state", "CLAIMED"),))] == 2
    assert held[("aioconductor_board_jobs", (("state", "COMPLETE"),))] == 0
    assert ("aioconductor_jobs_in_flight", (("conductor", "m2"),)) not in after
    assert not conductor.notifier.has_listeners("job_consumed")


def test_the_asgi_app_serves_the_same_text() -> None:
    import httpx

    registry = CollectorRegistry()
    metrics = ConductorMetrics(registry=registry, namespace="myapp")

    async def get() -> str:
        transport = httpx.ASGITransport(app=metrics.asgi_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get("/")).text

    text = anyio.run(get)
    assert (
        "myapp_jobs_posted_total 0.0" in text and "# TYPE myapp_job_run_seconds histogram" in text
    )


def test_without_prometheus_client_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(DependencyMissing, match=r"aioconductor-taskflow\[metrics\]"):
        ConductorMetrics(registry=None)
