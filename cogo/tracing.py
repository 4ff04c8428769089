"""OpenTelemetry traces of tasks, attempts, steps, LLM calls and workflow runs.

Off unless the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set
(and ``OTEL_SDK_DISABLED`` is not ``true``): then spans go out over OTLP/HTTP, configured by
the other ``OTEL_*`` variables as the SDK reads them (headers, timeout, ``OTEL_SERVICE_NAME``,
``OTEL_BSP_*``). Off, every function here returns at once and the SDK is never imported.

A W3C ``traceparent`` travels in NATS headers: the submitter's (``Client.submit``, ``POST
/api/tasks``, a workflow node) on the submission; the dispatcher keeps it on the
``WorkOrder`` (retries and flow-control holds re-publish the order, not the headers) and
puts the *task span's* on the attempt it sends to the route; the worker's attempt span is
its child, and steps, LLM calls and child tasks are children of the attempt.

The task span covers the task from submission to its terminal event, across attempts and
processes, so no process can hold it open. Its ids are derived from the task id instead
(span id: 8 bytes of SHA-256 of the task id; trace id: the submitter's, or 16 bytes of it
when nothing was traced upstream): any dispatcher can parent an attempt to it at once and
report it, start time the submission, when the task ends. A workflow run and its nodes get
ids the same way from the run id.

Exporting runs on the SDK's batch processor thread: an endpoint that is slow or down never
delays a task; spans that could not be exported are dropped and counted (``stats()``).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_state = 0  # 0: not decided yet, 1: off, 2: on
_lock = threading.Lock()
_tracer: Any = None
_stats = {"exported": 0, "dropped": 0}
# ids the next span must take (trace, span): the task's and the workflow's derived ids
_forced: contextvars.ContextVar[tuple[int | None, int | None]] = contextvars.ContextVar(
    "cogo_trace_ids", default=(None, None)
)
# the task whose messages the dispatcher is handling: (task_id, route, parent, submitted_at)
_task: contextvars.ContextVar[tuple[str, str, str | None, float] | None] = contextvars.ContextVar(
    "cogo_trace_task", default=None
)


class _Off:
    """The span of a process that does not trace: a context manager that does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()


def enabled() -> bool:
    """Whether this process exports traces (decided once, from the environment)."""
    if _state == 0:
        _decide()
    return _state == 2


def stats() -> dict[str, int]:
    """Spans exported and dropped (endpoint down or slow, queue full) by this process."""
    return dict(_stats)


def span(
    name: str,
    *,
    parent: str | None = None,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """A context manager around work: a span, child of ``parent`` (a ``traceparent``) or of
    the current span. Yields the span (``None`` when tracing is off)."""
    if _state != 2 and (_state or not enabled()):
        return _OFF
    return _span(name, parent, kind, attributes)


@contextlib.contextmanager
def _span(name: str, parent: str | None, kind: str, attributes: Mapping[str, Any] | None) -> Iterator[Any]:
    with _tracer.start_as_current_span(
        name,
        context=_context(parent),
        kind=_kind(kind),
        attributes=_clean(attributes),
        record_exception=True,
        set_status_on_exception=True,
    ) as current:
        yield current


def inject(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with the current span's ``traceparent`` added (if any); returns them."""
    if _state == 2 or (not _state and enabled()):
        tp = traceparent()
        if tp is not None:
            headers[TRACEPARENT] = tp
    return headers


def submitted(
    headers: dict[str, str],
    *,
    task_id: str,
    route: str,
    parent: str | None = None,
    name: str = "submit",
) -> dict[str, str]:
    """The headers of a task's submission, with the ``traceparent`` of a producer span
    ``submit <route>`` (child of ``parent``, else of the current span); returns them."""
    if _state != 2 and (_state or not enabled()):
        return headers
    attrs = {
        "cogo.task_id": task_id,
        "cogo.route": route,
        "messaging.system": "nats",
        "messaging.operation.type": "send",
    }
    with _span(f"{name} {route}", parent, "producer", attrs):
        tp = traceparent()
    if tp is not None:
        headers[TRACEPARENT] = tp
    return headers


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``; None when there is none or tracing is off."""
    if _state != 2 and (_state or not enabled()):
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), for events; None when not tracing."""
    if _state != 2:
        return None
    task = _task.get()
    if task is not None:  # the dispatcher, handling a task's message
        return task_traceparent(task[0], task[2])[3:35]
    tp = traceparent()
    return tp[3:35] if tp is not None else None


def error(current: Any, code: str, message: str = "") -> None:
    """Mark ``current`` (a span from ``span``) failed with a Cogo error code."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("error.type", code)
    current.set_status(Status(StatusCode.ERROR, f"[{code}] {message}"[:500]))


def set_attributes(current: Any, attributes: Mapping[str, Any]) -> None:
    if current is not None:
        current.set_attributes(_clean(attributes))


def record(
    name: str,
    *,
    start: float,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str = "",
) -> None:
    """A span that already happened (``start`` in unix seconds, ended now), child of the
    current span: an LLM call, reported with what its reply said."""
    if _state != 2 and (_state or not enabled()):
        return
    s = _tracer.start_span(name, kind=_kind(kind), attributes=_clean(attributes), start_time=int(start * 1e9))
    if error_code is not None:
        error(s, error_code, error_message)
    s.end()


# -- derived ids: tasks and workflow runs ---------------------------------------------------


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def derived_traceparent(key: str, parent: str | None) -> str:
    """The ``traceparent`` of the span whose ids derive from ``key`` (a task or run id):
    in ``parent``'s trace, or in a trace of its own when there is no parent."""
    digest = _digest(key)
    trace_id = parent[3:35] if _valid(parent) else digest[8:24].hex()  # type: ignore[index]
    return f"00-{trace_id}-{digest[:8].hex()}-01"


def task_traceparent(task_id: str, parent: str | None) -> str:
    """The task span's ``traceparent`` (its attempts' parent)."""
    return derived_traceparent(task_id, parent)


def task_scope(*, task_id: str, route: str, parent: str | None, submitted_at: float) -> Any:
    """The dispatcher handling one message of a task: events it builds carry the task's
    trace id, and ``task_ended`` can report the task span. No span of its own: the
    dispatcher's share of a task is a few hundred microseconds, not worth a span's cost."""
    if _state != 2 and (_state or not enabled()):
        return _OFF
    return _task_scope(task_id, route, parent, submitted_at)


@contextlib.contextmanager
def _task_scope(task_id: str, route: str, parent: str | None, submitted_at: float) -> Iterator[None]:
    token = _task.set((task_id, route, parent if _valid(parent) else None, submitted_at))
    try:
        yield
    finally:
        _task.reset(token)


def task_ended(task_id: str | None, error_code: str | None, message: str | None) -> None:
    """The task of the current ``task_scope`` ended: report its span, from its submission."""
    task = _task.get() if _state == 2 else None
    if task is None or task[0] != task_id:
        return
    task_id, route, parent, submitted_at = task
    attrs = {"cogo.task_id": task_id, "cogo.route": route}
    emit_derived(
        f"task {route}",
        task_id,
        parent,
        start=submitted_at,
        attributes=attrs,
        error_code=error_code,
        error_message=message or "",
    )


def emit_derived(
    name: str,
    key: str,
    parent: str | None,
    *,
    start: float,
    attributes: Mapping[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str = "",
) -> None:
    """Report the span with ids derived from ``key`` (see ``derived_traceparent``)."""
    if _state != 2 and (_state or not enabled()):
        return
    digest = _digest(key)
    root = None if _valid(parent) else int.from_bytes(digest[8:24])
    token = _forced.set((root, int.from_bytes(digest[:8])))
    try:
        s = _tracer.start_span(
            name,
            context=_context(parent if _valid(parent) else None),
            attributes=_clean(attributes),
            start_time=int(start * 1e9),
        )
    finally:
        _forced.reset(token)
    if error_code is not None:
        error(s, error_code, error_message)
    s.end()


# -- the SDK, imported only when tracing is on ----------------------------------------------


def _decide() -> None:
    global _state, _tracer
    with _lock:
        if _state:
            return
        wanted = any(os.environ.get(v) for v in ENDPOINT_VARS)
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            wanted = False
        if not wanted:
            _state = 1
            return
        try:
            _tracer = _setup()
        except ImportError as exc:
            log.warning("OTEL_EXPORTER_OTLP_* is set but %s: pip install 'cogo[otel]'", exc)
            _state = 1
            return
        _state = 2


def _setup() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class Ids(RandomIdGenerator):
        """Random ids, except the derived ones a task or run span must take."""

        def generate_trace_id(self) -> int:
            forced = _forced.get()[0]
            return forced if forced is not None else super().generate_trace_id()

        def generate_span_id(self) -> int:
            forced = _forced.get()[1]
            return forced if forced is not None else super().generate_span_id()

    class Counting(SpanExporter):
        """The OTLP exporter, counting what it could not deliver (dropped, never retried
        past its timeout: tasks do not wait for it)."""

        def __init__(self, inner: SpanExporter) -> None:
            self.inner = inner
            self._warned = 0.0

        def export(self, spans: Any) -> SpanExportResult:
            try:
                result = self.inner.export(spans)
            except Exception as exc:  # never let the exporter thread die
                log.debug("span export raised: %s", exc)
                result = SpanExportResult.FAILURE
            if result == SpanExportResult.SUCCESS:
                _stats["exported"] += len(spans)
            else:
                _stats["dropped"] += len(spans)
                if time.monotonic() - self._warned > 60:
                    self._warned = time.monotonic()
                    log.warning("OTLP endpoint unreachable: %d span(s) dropped so far", _stats["dropped"])
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(self.inner.force_flush(timeout_millis))

    name = os.environ.get("OTEL_SERVICE_NAME") or "cogo"
    provider = TracerProvider(
        resource=Resource.create({"service.name": name, "process.pid": os.getpid()}),
        id_generator=Ids(),
    )
    provider.add_span_processor(BatchSpanProcessor(Counting(OTLPSpanExporter())))
    return provider.get_tracer("cogo")


def _context(parent: str | None) -> Any:
    if not _valid(parent):
        return None
    from opentelemetry import trace

    assert parent is not None
    ctx = trace.SpanContext(
        trace_id=int(parent[3:35], 16),
        span_id=int(parent[36:52], 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(parent[53:55], 16)),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(ctx))


def _valid(tp: str | None) -> bool:
    """A version-00 ``traceparent`` with non-zero ids (anything else starts a new trace)."""
    if not isinstance(tp, str) or len(tp) != 55 or not tp.startswith("00-"):
        return False
    try:
        return int(tp[3:35], 16) != 0 and int(tp[36:52], 16) != 0 and tp[35] == tp[52] == "-"
    except ValueError:
        return False


_KINDS = {"internal": 0, "server": 1, "client": 2, "producer": 3, "consumer": 4}


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind(_KINDS.get(kind, 0))


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Attributes without ``None`` values (OTel rejects them)."""
    return {k: v for k, v in (attributes or {}).items() if v is not None}


# -- workflow runs: a span per run and per node, ids derived from the run --------------------


def run_traceparent(run_id: str) -> str:
    """The workflow run span's ``traceparent`` (a trace of its own)."""
    return derived_traceparent(f"run:{run_id}", None)


def workflow_task(headers: dict[str, str], task: Mapping[str, Any]) -> dict[str, str]:
    """The headers of a task a run submits: its parent is the node span (the node attempt
    its ``causation_id`` names), else the run span; returns them."""
    if _state != 2 and (_state or not enabled()):
        return headers
    run_tp = run_traceparent(str(task.get("correlation_id")))
    cause = task.get("causation_id")
    headers[TRACEPARENT] = derived_traceparent(str(cause), run_tp) if cause and ":started:" in cause else run_tp
    return headers


def workflow_event(event: Any, *, workflow_id: str | None, run_started: float | None) -> None:
    """A run appended ``event``: a node's or the run's outcome ends its span."""
    if _state != 2 and (_state or not enabled()):
        return
    run_id = event.correlation_id
    kind = event.type
    now = time.time()
    if kind in ("node_succeeded", "node_failed"):
        node = (event.data or {}).get("node_id")
        started = now - (event.duration_ms or 0.0) / 1000.0
        emit_derived(
            f"node {node}",
            f"{run_id}:{node}:started:{event.attempt}",
            run_traceparent(run_id),
            start=started,
            attributes={"cogo.run_id": run_id, "cogo.node_id": node, "cogo.attempt": event.attempt},
            error_code=event.error_code,
            error_message=event.error or "",
        )
    elif kind in ("workflow_succeeded", "workflow_failed", "workflow_cancelled"):
        emit_derived(
            f"workflow {workflow_id}",
            f"run:{run_id}",
            None,
            start=run_started or now,
            attributes={"cogo.run_id": run_id, "cogo.workflow_id": workflow_id},
            error_code=event.error_code,
            error_message=event.error or "",
        )
