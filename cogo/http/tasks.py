"""``POST /api/tasks`` submits a task to the executor dispatcher; ``GET /api/tasks/{id}``
tells where it is (``cogo.projections.tasks``)."""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors
import pydantic
from nats.js.errors import APIError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.errors import BackpressureError, InvalidAssignment, ProjectionBusy, TaskNotFound
from cogo.http.app import (
    AppState,
    ValidationFailed,
    field_error,
    json_body,
    require_route,
    state_of,
    validate,
)
from cogo.http.openapi import documented
from cogo.streams.capacity import Capacity
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID, decode_assignment, encoder, new_id


class TaskRequest(pydantic.BaseModel):
    """The body of ``POST /api/tasks`` (DESIGN §3)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    route: str = pydantic.Field(
        min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+$"
    )
    payload: dict[str, Any] = pydantic.Field(default_factory=dict)
    task_id: str | None = pydantic.Field(
        default=None, min_length=1, max_length=200, pattern=r"^[!-~]+$"
    )
    correlation_id: str | None = pydantic.Field(default=None, max_length=200)


@documented(
    body=TaskRequest,
    responses={
        202: "accepted: {task_id, duplicate, stream_seq}",
        503: "the bus refuses new work (full or unavailable)",
    },
)
async def submit_task(request: Request) -> JSONResponse:
    """Submit a task to the executor dispatcher (orchestrator.execute.0)."""
    state = state_of(request)
    body = validate(TaskRequest, await json_body(request))
    require_route(state, body.route)
    try:
        decode_assignment(body.payload)
    except InvalidAssignment as exc:
        loc = (exc.detail or "").split(" - at `$.")[-1].rstrip("`")
        path = (
            ["body", *[p for p in loc.replace("$.", "").split(".") if p]]
            if loc
            else ["body", "payload", "__assignment"]
        )
        raise ValidationFailed([field_error(path, exc.message, exc.code)]) from None
    try:
        await _capacity(state).check()
    except BackpressureError as exc:
        raise HTTPException(503, f"[{exc.code}] {exc}") from None
    task_id = body.task_id or new_id()
    message = {"task_id": task_id, "route": body.route, "payload": body.payload}
    if body.correlation_id:
        message["correlation_id"] = body.correlation_id
    try:
        ack = await state.js.publish(
            EXECUTE_SUBJECT, encoder.encode(message), headers={MSG_ID: task_id}, timeout=5
        )
    except APIError as exc:  # e.g. the TASKS stream is full: refuse, never accept-and-drop
        raise HTTPException(503, f"the bus refused the task: {exc.description}") from None
    except (
        nats.errors.TimeoutError,
        nats.errors.NoRespondersError,
        nats.errors.ConnectionClosedError,
    ) as exc:
        raise HTTPException(503, f"the bus is unavailable: {type(exc).__name__}") from None
    return JSONResponse(
        {"task_id": task_id, "duplicate": bool(ack.duplicate), "stream_seq": ack.seq},
        status_code=202,
    )


@documented(
    responses={
        200: "the task: {task_id, route, status, attempt, result, error_code, error, usage, "
        "events}",
        404: "no events for that task id",
        503: "the projection is busy (a replay) or unreachable",
    }
)
async def get_task(request: Request) -> JSONResponse:
    """A task's status, attempt, result or error, usage and events."""
    state = state_of(request)
    task_id = request.path_params["task_id"]
    projector = state.components.get("projector")
    try:
        if projector is not None:
            status = await projector.task_status(task_id)
        else:  # the projector runs in another process: ask it over NATS
            status = await _remote_status(state, task_id)
    except TaskNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ProjectionBusy as exc:
        raise HTTPException(503, str(exc)) from None
    return JSONResponse(msgspec.to_builtins(status))


async def _remote_status(state: AppState, task_id: str) -> Any:
    from cogo.projections.tasks import STATUS_SUBJECT, TaskStatus

    try:
        reply = await state.nc.request(
            STATUS_SUBJECT, encoder.encode({"task_id": task_id}), timeout=5
        )
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        raise HTTPException(503, "no projector answers task status requests") from None
    answer = msgspec.json.decode(reply.data)
    if "error" in answer:
        if answer["error"].get("code") == TaskNotFound.code:
            raise TaskNotFound(answer["error"].get("message", "task not found"))
        raise HTTPException(503, answer["error"].get("message", "status unavailable"))
    return msgspec.convert(answer, TaskStatus)


def _capacity(state: AppState) -> Capacity:
    capacity = state.components.get("capacity")
    if capacity is None:
        capacity = state.components["capacity"] = Capacity(state.js)
    return capacity  # type: ignore[no-any-return]


routes = [
    Route("/api/tasks", submit_task, methods=["POST"]),
    Route("/api/tasks/{task_id}", get_task, methods=["GET"]),
]
