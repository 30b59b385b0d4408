"""OpenTelemetry spans from a conductor's events: claim -> run -> task, with outcomes."""

from __future__ import annotations

import sys
import uuid
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aioconductor import Conductor, DependencyMissing, open_board, run_flow
from aioconductor.events import Notifier
from aioconductor.tracing import ConductorTracer

from . import apps
from .apps import flows


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> ConductorTracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return ConductorTracer(tracer_provider=provider)


async def run_jobs(tracer: ConductorTracer, posts: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    async with open_board(f"memory://{uuid.uuid4().hex}") as board:
        conductor = Conductor("tracer", board, flows=flows, max_concurrency=2)
        tracer.attach(conductor)
        jobs = [await board.post(f"job-{n}", flow, args) for n, (flow, args) in enumerate(posts)]
        with anyio.fail_after(10):
            async with conductor, anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                done = [await board.wait_for(job.id) for job in jobs]
                conductor.stop()
        tracer.detach(conductor)
        assert not conductor.notifier.has_listeners("job_claimed")
    return done


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def test_a_job_is_a_claim_span_over_a_run_span_over_task_spans(
    tracer: ConductorTracer, exporter: InMemorySpanExporter
) -> None:
    apps.EXECUTIONS.clear()
    [job] = await run_jobs(tracer, [("steps", {"key": 1})])
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"claim steps", "run steps", "task first", "task second", "task third"}
    claim, run = spans["claim steps"], spans["run steps"]
    assert claim.parent is None and claim.kind is trace.SpanKind.CONSUMER
    assert claim.attributes is not None and run.parent is not None
    assert claim.attributes["aioconductor.job.id"] == job.id
    assert claim.attributes["aioconductor.job.outcome"] == "SUCCESS"
    assert claim.attributes["aioconductor.job.attempt"] == 1
    assert claim.status.status_code is trace.StatusCode.UNSET
    assert run.parent.span_id == claim.context.span_id
    for name in ("task first", "task second", "task third"):
        task = spans[name]
        assert task.parent is not None and task.parent.span_id == run.context.span_id
        assert task.context.trace_id == claim.context.trace_id
    # Tasks run in order: each span starts after the one before ends.
    assert spans["task first"].end_time <= spans["task second"].start_time  # type: ignore[operator]


async def test_a_failed_task_and_its_reverted_flow_are_errors(
    tracer: ConductorTracer, exporter: InMemorySpanExporter
) -> None:
    await run_jobs(tracer, [("fails", {"key": "x"})])
    spans = by_name(exporter.get_finished_spans())
    assert spans["task boom"].status.status_code is trace.StatusCode.ERROR
    assert spans["task first"].status.status_code is trace.StatusCode.UNSET
    assert spans["revert first"].attributes["aioconductor.atom.state"] == "REVERTED"  # type: ignore[index]
    assert spans["run fails"].status.status_code is trace.StatusCode.ERROR
    claim = spans["claim fails"]
    assert claim.status.status_code is trace.StatusCode.ERROR
    assert claim.attributes["aioconductor.job.outcome"] == "REVERTED"  # type: ignore[index]


async def test_a_trashed_job_is_a_claim_span_with_its_reason(
    tracer: ConductorTracer, exporter: InMemorySpanExporter
) -> None:
    await run_jobs(tracer, [("no-such-flow", {})])
    [claim] = exporter.get_finished_spans()
    assert claim.name == "claim no-such-flow"
    assert claim.status.status_code is trace.StatusCode.ERROR
    assert "no-such-flow" in (claim.status.description or "")


async def test_run_flow_without_a_conductor_nests_under_the_current_span(
    tracer: ConductorTracer, exporter: InMemorySpanExporter
) -> None:
    notifier = Notifier()
    tracer.instrument(notifier)
    with tracer.tracer.start_as_current_span("request") as request:
        result = await run_flow(flows.get("noop")(), inputs={"key": 7}, notifier=notifier)
    assert result["echo"] == 7
    spans = by_name(exporter.get_finished_spans())
    assert spans["run noop"].parent.span_id == request.get_span_context().span_id  # type: ignore[union-attr]
    assert spans["task echo"].parent.span_id == spans["run noop"].context.span_id  # type: ignore[union-attr]


def test_without_opentelemetry_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(DependencyMissing, match=r"aioconductor-taskflow\[otel\]"):
        ConductorTracer()


async def test_a_lost_claim_ends_its_spans_as_errors(
    tracer: ConductorTracer, exporter: InMemorySpanExporter
) -> None:
    apps.GATE.clear()
    apps.GATE["lost"] = anyio.Event()  # never set: the job holds until its claim is lost
    async with open_board(f"memory://{uuid.uuid4().hex}") as board:
        conductor = Conductor("loser", board, flows=flows, lease=0.3)
        tracer.attach(conductor)
        job = await board.post("held", "steps", {"key": 1, "gate": "lost"})
        with anyio.fail_after(10):
            async with conductor, anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                while not conductor.running:
                    await anyio.sleep(0.01)
                await board.trash(job.id, reason="an operator took it")
                while conductor.stats.lease_lost == 0:
                    await anyio.sleep(0.01)
                conductor.stop()
    spans = by_name(exporter.get_finished_spans())
    claim, run = spans["claim steps"], spans["run steps"]
    assert claim.status.status_code is trace.StatusCode.ERROR
    assert claim.attributes["aioconductor.job.end"] == "lease_lost"  # type: ignore[index]
    assert run.attributes["aioconductor.flow.state"] == "SUSPENDED"  # type: ignore[index]
    # The task that was running when the claim went is ended too, not left open.
    assert spans["task second"].end_time is not None


async def test_a_trace_goes_from_the_producer_to_the_tasks_through_the_headers(
    tracer: ConductorTracer, exporter: InMemorySpanExporter
) -> None:
    from aioconductor.tracing import trace_headers

    producer = tracer.tracer
    async with open_board(f"memory://{uuid.uuid4().hex}") as board:
        with producer.start_as_current_span("handle request") as request:
            headers = trace_headers()
            job = await board.post("traced", "noop", {"key": 1}, headers=headers)
        assert job.headers == headers and "traceparent" in headers
        conductor = Conductor("tracer", board, flows=flows)
        tracer.attach(conductor)
        with anyio.fail_after(10):
            async with conductor, anyio.create_task_group() as tg:
                tg.start_soon(conductor.run)
                await board.wait_for(job.id)
                conductor.stop()
        tracer.detach(conductor)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    trace_id = request.get_span_context().trace_id
    claim = spans["claim noop"]
    assert claim.context is not None and claim.context.trace_id == trace_id
    assert claim.parent is not None and claim.parent.span_id == request.get_span_context().span_id
    task = next(span for name, span in spans.items() if name.startswith("task "))
    assert task.context is not None and task.context.trace_id == trace_id
