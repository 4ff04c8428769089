"""Schedule routes: runs of a workflow on a cron expression or an interval.

``POST   /api/schedules``        ``{id, workflowId, parameters, cron | interval_s, catchup,
                                 max_catchup}`` -> 201 (new) or 200 (replaced); 422 for a bad
                                 cron expression or parameters that do not plan, 404 for an
                                 unknown workflow
``GET    /api/schedules``        every schedule with its cursor and next tick
``DELETE /api/schedules/{id}``   -> 200; 404 if there is none

Schedules live in the ``schedules`` KV bucket (``cogo.workflows.schedules``); the
orchestrator holding the scheduler lease fires them (``cogo.workflows.scheduler``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.errors
from nats.js.errors import APIError
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.errors import (
    BusUnavailable,
    InvalidWorkflow,
    ScheduleNotFound,
    WorkflowNotFound,
)
from cogo.http.endpoint import endpoint
from cogo.http.schemas import Query
from cogo.http.state import ValidationFailed, field_error, state_of
from cogo.workflows.definition import Catalog
from cogo.workflows.planner import plan_workflow
from cogo.workflows.schedules import (
    SCHEDULE_ID,
    Schedule,
    ScheduleSpec,
    ScheduleStore,
    iso,
    next_tick,
)


def _view(schedule: Schedule, cursor: dict[str, Any], now: float) -> dict[str, Any]:
    after = max(now, schedule.created_at)
    return {**schedule.view(), "nextTick": iso(next_tick(schedule, after)), **cursor}


@endpoint(
    body=ScheduleSpec,
    ok={
        200: "replaced: the schedule, its cursor kept (ticks already fired stay fired)",
        201: "created: the schedule with its next tick",
    },
    errors=(WorkflowNotFound, InvalidWorkflow, BusUnavailable),
)
async def put_schedule(request: Request, body: ScheduleSpec) -> JSONResponse:
    """Create or replace a schedule of workflow runs (422: invalid cron expression, interval,
    catch-up policy, or parameters that do not plan)."""
    state = state_of(request)
    spec = body
    catalog = Catalog.for_data_dir(state.data_dir)
    definitions = await asyncio.to_thread(catalog.load)
    if spec.workflow_id not in definitions:
        raise WorkflowNotFound(f"no workflow {spec.workflow_id!r}; known: " + ", ".join(sorted(definitions)))
    try:  # every tick plans the same way: refuse now what would fail at every tick
        plan_workflow(definitions[spec.workflow_id], spec.parameters, state.policies.get, definitions)
    except InvalidWorkflow as exc:
        raise ValidationFailed(
            [field_error(["body", *e["loc"]], e["msg"], e["type"]) for e in exc.detail or []]
            or [field_error(["body"], exc.message, exc.code)],
            code=exc.code,
        ) from None
    store = ScheduleStore(state.js)
    now = time.time()
    schedule, created = await _bus(store.put(spec, now))
    cursor, _ = await _bus(store.cursor(spec.id))
    return JSONResponse(_view(schedule, cursor.view(), now), status_code=201 if created else 200)


@endpoint(ok={200: "{schedules, count}: each with its cursor and next tick"}, errors=(BusUnavailable,))
async def list_schedules(request: Request) -> JSONResponse:
    """Every schedule, with its cursor (last tick, counts, last error) and next tick."""
    store = ScheduleStore(state_of(request).js)
    now = time.time()
    rows = []
    for schedule_id in await _bus(store.ids()):
        schedule = await _bus(store.get(schedule_id))
        if schedule is None:
            continue
        cursor, _ = await _bus(store.cursor(schedule_id))
        rows.append(_view(schedule, cursor.view(), now))
    return JSONResponse({"schedules": rows, "count": len(rows)})


class SchedulePath(Query):
    """``/api/schedules/{schedule_id}``."""

    schedule_id: str = Field(pattern=SCHEDULE_ID)


@endpoint(path=SchedulePath, ok={200: "deleted"}, errors=(ScheduleNotFound, BusUnavailable))
async def delete_schedule(request: Request, path: SchedulePath) -> JSONResponse:
    """Delete a schedule; runs it already started go on."""
    store = ScheduleStore(state_of(request).js)
    if not await _bus(store.delete(path.schedule_id)):
        raise ScheduleNotFound(f"no schedule {path.schedule_id!r}")
    return JSONResponse({"id": path.schedule_id, "deleted": True})


async def _bus(call: Any) -> Any:
    """Await a KV call; 503 when the bus cannot answer."""
    try:
        return await call
    except (
        nats.errors.TimeoutError,
        nats.errors.NoRespondersError,
        nats.errors.ConnectionClosedError,
        APIError,
    ) as exc:
        raise BusUnavailable(f"the bus is unavailable: {type(exc).__name__}") from None


routes = [
    Route("/api/schedules", put_schedule, methods=["POST"]),
    Route("/api/schedules", list_schedules, methods=["GET"]),
    Route("/api/schedules/{schedule_id}", delete_schedule, methods=["DELETE"]),
]
