"""Metrics and projection admin over HTTP.

``GET /api/metrics/bus/latency[?window=15m&route=...&bucket=1m]``: per route, attempts and
p50/p90/p99 of queue wait and duration, failures, retries (from the DuckDB projection).
``GET /metrics``: Prometheus text (event counters, projector lag, consumer in-flight).
``GET /api/projections/status``: the projector's checkpoints and lag.
``POST /api/projections/replay``: rebuild the projection from the streams; the response
streams progress as NDJSON lines and ends with the result (or an error) line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from cogo.errors import CogoError, ProjectionBusy, ReplayRunning, Unavailable
from cogo.http.endpoint import Success, endpoint
from cogo.http.schemas import Body, Query
from cogo.http.state import AppState, ValidationFailed, field_error, state_of
from cogo.projections import queries
from cogo.projections.projector import Projector
from cogo.projections.replay import ReplayProgress
from cogo.streams.topology import task_consumers

DEFAULT_WINDOW = "15m"
# a duration of at most 366 days, in the units parse_duration reads (the pattern is the
# schema's, so anything it admits is served)
DURATION = (
    r"^(?:[1-9][0-9]{0,6}s|[1-9][0-9]{0,4}m|(?:[1-9][0-9]{0,2}|[1-7][0-9]{3}|8[0-6][0-9]{2}"
    r"|87[0-7][0-9]|878[0-4])h|(?:[1-9][0-9]?|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d)$"
)
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROGRESS_EVERY_S = 0.1
_background: set[asyncio.Task[Any]] = set()  # replays outlive a client that went away
T = TypeVar("T")


async def read(projector: Projector, fn: Callable[[Any], T]) -> T:
    """``projector.store.read(fn)``; a busy store (replay swap) raises ProjectionBusy (503)."""
    return await projector.store.read(fn)


def projector_of(request: Request) -> Projector:
    projector = state_of(request).projector
    if projector is None:
        raise Unavailable("the projector does not run in this process")
    return projector


class LatencyQuery(Query):
    """The query of ``GET /api/metrics/bus/latency``."""

    window: str = pydantic.Field(
        DEFAULT_WINDOW,
        pattern=f"^(?:all|{DURATION[1:-1]})$",
        description="30s, 15m, 6h, 7d (at most 366d), or all",
    )
    route: str | None = pydantic.Field(None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    bucket: str | None = pydantic.Field(
        None, pattern=DURATION, description="a series of this step (at most 10,000 buckets)"
    )


@endpoint(
    query=LatencyQuery,
    ok={200: "per route: attempts, p50/p90/p99 of queue wait and duration, failures, retries"},
    errors=(ProjectionBusy, Unavailable),
)
async def bus_latency(request: Request, query: LatencyQuery) -> JSONResponse:
    """Queue wait and duration percentiles per route (and per time bucket) from the projection."""
    errors: list[dict[str, Any]] = []
    window = query.window
    window_s: int | None = None
    if window != "all":
        try:
            window_s = queries.parse_duration(window)
        except ValueError as exc:
            errors.append(field_error(["query", "window"], f"{exc} (or 'all')"))
    route = query.route
    bucket_s: int | None = None
    if query.bucket is not None:
        try:
            bucket_s = queries.parse_duration(query.bucket)
        except ValueError as exc:
            errors.append(field_error(["query", "bucket"], str(exc)))
        else:
            span = window_s or queries.MAX_WINDOW_S
            if span / bucket_s > queries.MAX_BUCKETS:
                errors.append(
                    field_error(
                        ["query", "bucket"],
                        f"too small for the window: at most {queries.MAX_BUCKETS} buckets",
                    )
                )
    if errors:
        raise ValidationFailed(errors)
    projector = projector_of(request)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    since = now - dt.timedelta(seconds=window_s) if window_s else None
    body = await read(
        projector,
        lambda cur: queries.bus_latency(cur, since=since, route=route, bucket_s=bucket_s),
    )
    return JSONResponse(
        {
            "window": window,
            "since": since.isoformat() + "Z" if since else None,
            "until": now.isoformat() + "Z",
            "projector_lag": projector.stats()["lag"],
            **body,
        }
    )


@endpoint(ok={200: Success("Prometheus text exposition", media_type="text/plain")})
async def prometheus(request: Request) -> Response:
    """Event counters, attempt latency summaries, projector lag, consumer in-flight."""
    state = state_of(request)
    out = queries.PrometheusText()
    projector: Projector | None = state.projector
    if projector is not None:
        with contextlib.suppress(Exception):
            await projector.store.read(lambda cur: queries.projection_metrics(cur, out))
        streams = projector.stats()["streams"]
        for name, key, kind, what in (
            ("cogo_projector_lag_messages", "lag", "gauge", "Stream messages not yet projected."),
            ("cogo_projector_applied_seq", "applied_seq", "gauge", "Last stream sequence projected."),
            ("cogo_projector_stream_last_seq", "last_seq", "gauge", "Last sequence in the stream."),
            ("cogo_projector_rows_total", "rows", "counter", "Rows written by this projector process."),
            ("cogo_projector_batches_total", "batches", "counter", "Transactions committed by this process."),
            (
                "cogo_projector_aged_out_total",
                "aged_out",
                "counter",
                "Messages removed by retention before projection.",
            ),
        ):
            out.family(name, kind, what, (({"stream": s}, v[key]) for s, v in streams.items()))
    await _consumer_metrics(state, out)
    return PlainTextResponse(out.text(), media_type=PROMETHEUS_TYPE)


async def _consumer_metrics(state: AppState, out: queries.PrometheusText) -> None:
    """In flight (delivered, not acked) and waiting messages of every route's consumer."""
    try:
        infos = await task_consumers(state.js)
    except Exception:  # the bus is away for a moment: the rest of the page still answers
        infos = []
    known = [(i.config.filter_subject or i.name, i) for i in infos]
    out.family(
        "cogo_route_in_flight",
        "gauge",
        "Messages claimed by actors and not yet acked, per route.",
        (({"route": r}, i.num_ack_pending) for r, i in known),
    )
    out.family(
        "cogo_route_pending",
        "gauge",
        "Messages waiting for an actor, per route.",
        (({"route": r}, i.num_pending) for r, i in known),
    )
    out.family(
        "cogo_route_redelivered",
        "gauge",
        "Messages being redelivered, per route.",
        (({"route": r}, i.num_redelivered) for r, i in known),
    )


@endpoint(ok={200: "the projector's checkpoints and lag per stream"}, errors=(Unavailable,))
async def projection_status(request: Request) -> JSONResponse:
    """The projector's checkpoints and lag."""
    return JSONResponse(projector_of(request).stats())


class ReplayRequest(Body):
    """The body of ``POST /api/projections/replay``: optional, and takes no options yet."""


@endpoint(
    body=ReplayRequest,
    body_required=False,
    ok={200: Success("progress lines, then the result (or an error) line", media_type="application/x-ndjson")},
    errors=(ReplayRunning, Unavailable),
)
async def replay(request: Request, body: ReplayRequest) -> Response:
    """Rebuild the projection from the streams, streaming progress as NDJSON."""
    projector = projector_of(request)
    if projector.rebuilding:
        raise ReplayRunning("a replay is already running")
    lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    last = 0.0

    def progress(p: ReplayProgress) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S or p.applied >= p.total:
            last = now
            lines.put_nowait({"stream": p.stream, "applied": p.applied, "total": p.total, "rate": round(p.rate, 1)})

    task = asyncio.create_task(projector.rebuild(progress), name="replay")
    _background.add(task)
    task.add_done_callback(_background.discard)

    async def ndjson() -> AsyncIterator[bytes]:
        while not task.done():
            getter = asyncio.ensure_future(lines.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield _line({"progress": getter.result()})
            else:
                getter.cancel()  # Queue.get gives nothing up when cancelled
        while not lines.empty():
            yield _line({"progress": lines.get_nowait()})
        error = None if task.cancelled() else task.exception()
        if task.cancelled():
            yield _line({"error": "replay was cancelled", "code": "projection.error"})
        elif error is None:
            yield _line({"done": True, **task.result().as_dict()})
        elif isinstance(error, CogoError):
            yield _line({"error": str(error), "code": error.code})
        else:
            yield _line({"error": f"replay failed: {error}", "code": "projection.error"})

    return StreamingResponse(ndjson(), media_type="application/x-ndjson")


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode() + b"\n"


routes = [
    Route("/api/metrics/bus/latency", bus_latency, methods=["GET"]),
    Route("/metrics", prometheus, methods=["GET"]),
    Route("/api/projections/status", projection_status, methods=["GET"]),
    Route("/api/projections/replay", replay, methods=["POST"]),
]
