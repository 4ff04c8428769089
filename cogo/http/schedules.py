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
import re
import time
from typing import Any

import nats.errors
from nats.js.errors import APIError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.errors import InvalidWorkflow, ScheduleNotFound, WorkflowNotFound
from cogo.http.app import ValidationFailed, field_error, json_body, state_of, validate
from cogo.http.openapi import documented
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


@documented(
    body=ScheduleSpec,
    responses={
        200: "replaced: the schedule, its cursor kept (ticks already fired stay fired)",
        201: "created: the schedule with its next tick",
        404: "no such workflow",
        422: "invalid cron expression, interval, catch-up policy, or parameters that do not plan",
        503: "the bus is unavailable",
    },
)
async def put_schedule(request: Request) -> JSONResponse:
    """Create or replace a schedule of workflow runs."""
    state = state_of(request)
    spec = validate(ScheduleSpec, await json_body(request))
    catalog = Catalog.for_data_dir(state.data_dir)
    definitions = await asyncio.to_thread(catalog.load)
    if spec.workflow_id not in definitions:
        missing = WorkflowNotFound(f"no workflow {spec.workflow_id!r}; known: "
                                   + ", ".join(sorted(definitions)))  # fmt: skip
        raise HTTPException(404, missing.message) from missing
    try:  # every tick plans the same way: refuse now what would fail at every tick
        plan_workflow(definitions[spec.workflow_id], spec.parameters, state.policies.get,
                      definitions)  # fmt: skip
    except InvalidWorkflow as exc:
        raise ValidationFailed(
            [field_error(["body", *e["loc"]], e["msg"], e["type"]) for e in exc.detail or []]
            or [field_error(["body"], exc.message, exc.code)]
        ) from None
    store = ScheduleStore(state.js)
    now = time.time()
    schedule, created = await _bus(store.put(spec, now))
    cursor, _ = await _bus(store.cursor(spec.id))
    return JSONResponse(_view(schedule, cursor.view(), now), status_code=201 if created else 200)


@documented(responses={503: "the bus is unavailable"})
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


@documented(responses={404: "no such schedule", 503: "the bus is unavailable"})
async def delete_schedule(request: Request) -> JSONResponse:
    """Delete a schedule; runs it already started go on."""
    schedule_id = request.path_params["schedule_id"]
    if not re.fullmatch(SCHEDULE_ID, schedule_id):
        raise ValidationFailed([field_error(["path", "id"], f"must match {SCHEDULE_ID}")])
    store = ScheduleStore(state_of(request).js)
    if not await _bus(store.delete(schedule_id)):
        missing = ScheduleNotFound(f"no schedule {schedule_id!r}")
        raise HTTPException(404, missing.message) from missing
    return JSONResponse({"id": schedule_id, "deleted": True})


async def _bus(call: Any) -> Any:
    """Await a KV call; 503 when the bus cannot answer."""
    try:
        return await call
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
            nats.errors.ConnectionClosedError, APIError) as exc:  # fmt: skip
        raise HTTPException(503, f"the bus is unavailable: {type(exc).__name__}") from None


routes = [
    Route("/api/schedules", put_schedule, methods=["POST"]),
    Route("/api/schedules", list_schedules, methods=["GET"]),
    Route("/api/schedules/{schedule_id}", delete_schedule, methods=["DELETE"]),
]
