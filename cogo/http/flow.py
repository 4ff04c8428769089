"""``GET /api/flow``: per route and key, what runs, what waits and the current rate.

Read from what each route's admitter writes about itself (``state.<route>`` in the ``flow``
KV bucket, ``cogo.runtime.flow.admission``), about once a second while it changes. A route whose
policy sets flow limits is listed even before its admitter wrote anything (``admitter`` is
then ``null``); ``?route=`` picks one route.
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
from nats.js.errors import KeyNotFoundError, NotFoundError
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.config import FlowPolicy
from cogo.errors import BusUnavailable, UnknownRoute
from cogo.http.endpoint import Success, endpoint
from cogo.http.schemas import ROUTE_ENUM, ROUTE_PATTERN, Query
from cogo.http.state import AppState, require_route, state_of
from cogo.streams.events import iso
from cogo.streams.flow import RouteSnapshot, decode_snapshot, snapshot_key
from cogo.streams.topology import FLOW_BUCKET


class FlowQuery(Query):
    """``/api/flow?route=``."""

    route: str | None = Field(None, min_length=3, max_length=200, pattern=ROUTE_PATTERN, json_schema_extra=ROUTE_ENUM)


class FlowLimits(BaseModel):
    """The route's flow policy (``null``: no such limit)."""

    concurrency: int | None
    concurrency_per_key: int | None
    rate_per_key_s: float | None
    burst: int | None


class FlowKey(BaseModel):
    """One key (``""``: tasks without ``__assignment.key``) of a route."""

    key: str
    running: int = Field(description="attempts of this key holding a slot")
    waiting: int = Field(description="attempts of this key held back")
    waiting_by_priority: dict[str, int]
    rate_per_s: float = Field(description="attempts started per second, last 10 s")
    tokens: float | None = Field(description="what its token bucket holds (with a rate limit)")
    held_by: str | None = Field(description="the limit its waiting attempts wait for")


class FlowRoute(BaseModel):
    """One flow-controlled route."""

    route: str
    limits: FlowLimits
    admitter: str | None = Field(description="the dispatcher admitting this route")
    updated_at: str | None
    running: int
    waiting: int
    rate_per_s: float
    keys: list[FlowKey] = Field(description="the busiest keys (running + waiting), at most 100")
    keys_omitted: int


class FlowStatus(BaseModel):
    """``GET /api/flow`` answered 200."""

    generated_at: str
    routes: list[FlowRoute]


def _limits(flow: FlowPolicy) -> FlowLimits:
    return FlowLimits(
        concurrency=flow.concurrency,
        concurrency_per_key=flow.concurrency_per_key,
        rate_per_key_s=flow.rate_per_key_s,
        burst=flow.bucket if flow.rate_per_key_s is not None else None,
    )


def _view(route: str, flow: FlowPolicy, snapshot: RouteSnapshot | None) -> FlowRoute:
    if snapshot is None:
        return FlowRoute(
            route=route,
            limits=_limits(flow),
            admitter=None,
            updated_at=None,
            running=0,
            waiting=0,
            rate_per_s=0.0,
            keys=[],
            keys_omitted=0,
        )
    keys = [
        FlowKey(
            key=k.key,
            running=k.running,
            waiting=k.waiting,
            waiting_by_priority=k.waiting_by_priority,
            rate_per_s=k.rate_per_s,
            tokens=k.tokens,
            held_by=k.held_by,
        )
        for k in snapshot.keys
    ]
    return FlowRoute(
        route=route,
        limits=FlowLimits(**snapshot.limits),
        admitter=snapshot.admitter,
        updated_at=iso(snapshot.updated_at),
        running=snapshot.running,
        waiting=snapshot.waiting,
        rate_per_s=snapshot.rate_per_s,
        keys=keys,
        keys_omitted=snapshot.keys_omitted,
    )


async def read_flow(state: AppState, routes: list[str]) -> list[FlowRoute]:
    """The flow view of each of ``routes`` that has limits, or an admitter's snapshot."""
    kv = await state.js.key_value(FLOW_BUCKET)

    async def one(route: str) -> FlowRoute | None:
        try:
            flow = state.policies.get(route).flow
        except UnknownRoute:
            flow = FlowPolicy()
        try:
            entry = await kv.get(snapshot_key(route))
            snapshot = decode_snapshot(entry.value) if entry.value else None
        except (KeyNotFoundError, NotFoundError):
            snapshot = None
        if snapshot is None and not flow.enabled:
            return None
        return _view(route, flow, snapshot)

    found = await asyncio.gather(*(one(route) for route in routes))
    return [view for view in found if view is not None]


@endpoint(
    query=FlowQuery,
    ok={200: Success("flow per route and key", model=FlowStatus)},
    errors=(UnknownRoute, BusUnavailable),
)
async def flow_status(request: Request, query: FlowQuery) -> JSONResponse:
    """Per flow-controlled route and key: attempts running, waiting, and the start rate."""
    state = state_of(request)
    if query.route is not None:
        require_route(state, query.route, ["query", "route"])
    routes = [query.route] if query.route is not None else state.policies.routes()
    try:
        views = await read_flow(state, routes)
    except (nats.errors.Error, TimeoutError) as exc:
        raise BusUnavailable(f"the flow bucket did not answer: {type(exc).__name__}") from None
    status = FlowStatus(generated_at=iso(time.time()), routes=views)
    return JSONResponse(status.model_dump())


routes = [Route("/api/flow", flow_status, methods=["GET"])]
