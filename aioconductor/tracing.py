"""OpenTelemetry traces of claims, engine runs and tasks
(``pip install 'aioconductor-taskflow[otel]'``).

The tracer listens to a conductor's events and turns them into spans; it needs only
``opentelemetry-api`` (your app installs and configures the SDK and an exporter)::

    from aioconductor.tracing import ConductorTracer

    ConductorTracer().attach(conductor)

Each claimed job gives one trace tree::

    claim <flow>                 JOB_CLAIMED -> consumed / retried / released / abandoned /
                                 trashed / lease lost
    └── run <flow>               RUNNING_START -> RUNNING_END (one per engine run)
        ├── task <atom>          ATOM_STATE RUNNING -> SUCCESS / FAILURE / IGNORE
        └── revert <atom>        ATOM_STATE REVERTING -> REVERTED / FAILURE

An engine run without a conductor (``run_flow`` with a notifier passed to :meth:`instrument`)
gives the ``run`` span as a child of whatever span is current when the run starts.

A trace goes from the producer to the tasks when the producer posts the job with the current
trace context in its headers (``board.post(..., headers=trace_headers())``): the ``claim`` span
is then a child of the producer's span, in whatever process and machine it ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from aioconductor.errors import DependencyMissing
from aioconductor.events import Event
from aioconductor.events import Notifier
from aioconductor.persistence.models import AtomState
from aioconductor.persistence.models import FlowState

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from opentelemetry.trace import TracerProvider

    from aioconductor.conductor import Conductor

__all__ = ["ConductorTracer", "trace_headers"]

_PREFIX = "aioconductor"
#: The key of an open span: a job id, a logbook id, or an atom's (book, flow, atom, kind).
_K = TypeVar("_K")
#: Atom states that end a task span, and those that end a revert span.
_TASK_ENDS = {AtomState.SUCCESS, AtomState.FAILURE, AtomState.IGNORE, AtomState.PENDING}
_REVERT_ENDS = {AtomState.REVERTED, AtomState.FAILURE, AtomState.IGNORE, AtomState.PENDING}
#: The events that end a claim's span.
_CLAIM_ENDS = frozenset(
    {
        Event.JOB_CONSUMED,
        Event.JOB_ABANDONED,
        Event.JOB_RELEASED,
        Event.JOB_RETRIED,
        Event.JOB_TRASHED,
        Event.LEASE_LOST,
    }
)


def _otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise DependencyMissing(
            "traces need opentelemetry-api: pip install 'aioconductor-taskflow[otel]'"
        ) from exc
    return trace


def trace_headers() -> dict[str, str]:
    """The current trace context as job headers (W3C ``traceparent``/``tracestate`` with the
    default propagator), for ``board.post(..., headers=trace_headers())``.

    Raises:
        DependencyMissing: opentelemetry-api is not installed.
    """
    _otel()
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class ConductorTracer:
    """Turns conductor and engine events into OpenTelemetry spans.

    Args:
        tracer_provider: where spans go; the global provider (set by your OpenTelemetry setup)
            when None.

    Raises:
        DependencyMissing: opentelemetry-api is not installed.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._trace = _otel()
        self.tracer = self._trace.get_tracer(_PREFIX, tracer_provider=tracer_provider)
        self._notifiers: list[Notifier] = []
        #: Open spans: claims by job id, runs by book id, atoms by (book id, flow, atom, kind).
        self._claims: dict[str, Span] = {}
        self._runs: dict[str, Span] = {}
        self._atoms: dict[tuple[str, str, str, str], Span] = {}

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, conductor: Conductor) -> None:
        """Trace ``conductor``'s claims, engine runs and tasks."""
        self.instrument(conductor.notifier)

    def detach(self, conductor: Conductor) -> None:
        """Stop tracing ``conductor``; spans still open are ended."""
        self.uninstrument(conductor.notifier)

    def instrument(self, notifier: Notifier) -> None:
        """Trace the events of ``notifier`` (a conductor's, or one given to an engine)."""
        if notifier not in self._notifiers:
            notifier.register(None, self._on_event)
            self._notifiers.append(notifier)

    def uninstrument(self, notifier: Notifier) -> None:
        """Stop tracing ``notifier``'s events; once nothing is traced, open spans are ended."""
        if notifier in self._notifiers:
            notifier.deregister(None, self._on_event)
            self._notifiers.remove(notifier)
        if not self._notifiers:
            for span in (*self._atoms.values(), *self._runs.values(), *self._claims.values()):
                span.end()
            self._atoms.clear()
            self._runs.clear()
            self._claims.clear()

    # -- events --------------------------------------------------------------------------------

    def _on_event(self, event: str, details: Mapping[str, Any]) -> None:
        if event == Event.JOB_CLAIMED:
            self._claimed(details)
        elif event in _CLAIM_ENDS:
            self._claim_ended(event, details)
        elif event == Event.RUNNING_START:
            self._run_started(details)
        elif event == Event.RUNNING_END:
            self._run_ended(details)
        elif event == Event.FLOW_STATE:
            span = self._runs.get(details.get("book_id") or "")
            if span is not None:
                span.add_event("flow_state", {"state": str(details.get("state"))})
        elif event == Event.ATOM_STATE:
            self._atom_changed(details)

    def _start(
        self, spans: dict[_K, Span], key: _K, name: str, context: Any, **options: Any
    ) -> None:
        """Start span ``name`` as ``spans[key]``, in ``context`` (a new trace when None).

        A span still open under ``key`` is ended first: its claim, run or task started again
        before this process heard how it ended.
        """
        stale = spans.pop(key, None)
        if stale is not None:
            stale.end()
        spans[key] = self.tracer.start_span(name, context=context, **options)

    def _within(self, parent: Span | None) -> Any:
        """The context of a span started under ``parent`` (a new trace when None)."""
        return None if parent is None else self._trace.set_span_in_context(parent)

    def _claimed(self, details: Mapping[str, Any]) -> None:
        job_id = str(details["job_id"])
        from opentelemetry import propagate

        # The producer's context when it posted with trace_headers(); a new trace otherwise.
        headers = details.get("headers") or {}
        context = propagate.extract(headers) if headers else None
        self._start(
            self._claims,
            job_id,
            f"claim {details['flow']}",
            context,
            kind=self._trace.SpanKind.CONSUMER,
            attributes={
                f"{_PREFIX}.job.id": job_id,
                f"{_PREFIX}.job.name": str(details["job_name"]),
                f"{_PREFIX}.flow": str(details["flow"]),
                f"{_PREFIX}.owner": str(details["owner"]),
                f"{_PREFIX}.conductor": str(details["conductor"]),
                f"{_PREFIX}.claim.token": int(details["token"]),
                f"{_PREFIX}.job.attempt": int(details["attempt"]),
            },
        )

    def _claim_ended(self, event: str, details: Mapping[str, Any]) -> None:
        span = self._claims.pop(str(details["job_id"]), None)
        if span is None:
            return
        status = self._trace.StatusCode
        span.set_attribute(f"{_PREFIX}.job.end", event)
        if event == Event.JOB_CONSUMED:
            outcome = str(details.get("outcome"))
            span.set_attribute(f"{_PREFIX}.job.outcome", outcome)
            if outcome != "SUCCESS":
                span.set_status(status.ERROR, f"the flow ended {outcome}")
        elif event in (Event.JOB_TRASHED, Event.LEASE_LOST):
            span.set_status(status.ERROR, str(details.get("reason", event)))
        elif "reason" in details:
            span.set_attribute(f"{_PREFIX}.abandon.reason", str(details["reason"]))
        span.end()

    def _run_started(self, details: Mapping[str, Any]) -> None:
        book_id = str(details.get("book_id") or "")
        self._start(
            self._runs,
            book_id,
            f"run {details['flow']}",
            self._within(self._claims.get(book_id)),
            attributes={f"{_PREFIX}.flow": str(details["flow"]), f"{_PREFIX}.book.id": book_id},
        )

    def _run_ended(self, details: Mapping[str, Any]) -> None:
        book_id = str(details.get("book_id") or "")
        span = self._runs.pop(book_id, None)
        if span is None:
            return
        for key in [key for key in self._atoms if key[0] == book_id]:
            self._atoms.pop(key).end()
        state = details.get("state")
        span.set_attribute(f"{_PREFIX}.flow.state", str(state))
        if state is None:
            span.set_status(self._trace.StatusCode.ERROR, "the engine raised")
        elif state in (FlowState.FAILURE, FlowState.REVERTED):
            span.set_status(self._trace.StatusCode.ERROR, f"the flow ended {state}")
        span.end()

    def _atom_changed(self, details: Mapping[str, Any]) -> None:
        book_id = str(details.get("book_id") or "")
        flow, atom, state = str(details["flow"]), str(details["atom"]), details["state"]
        if state in (AtomState.RUNNING, AtomState.REVERTING):
            kind = "task" if state == AtomState.RUNNING else "revert"
            self._start(
                self._atoms,
                (book_id, flow, atom, kind),
                f"{kind} {atom}",
                self._within(self._runs.get(book_id)),
                attributes={f"{_PREFIX}.atom": atom, f"{_PREFIX}.flow": flow},
            )
            return
        for kind, ends in (("task", _TASK_ENDS), ("revert", _REVERT_ENDS)):
            span = self._atoms.get((book_id, flow, atom, kind))
            if span is None or state not in ends:
                continue
            del self._atoms[(book_id, flow, atom, kind)]
            span.set_attribute(f"{_PREFIX}.atom.state", str(state))
            if state == AtomState.FAILURE:
                span.set_status(self._trace.StatusCode.ERROR, f"{kind} {atom} failed")
            span.end()
