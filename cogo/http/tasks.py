"""``POST /api/tasks`` submits a task to the executor dispatcher; ``GET /api/tasks/{id}``
tells where it is (``cogo.projections.tasks``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
import nats.errors
import pydantic
from nats.js.errors import APIError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo import tracing
from cogo.errors import (
    BackpressureError,
    BusUnavailable,
    InvalidAssignment,
    ProjectionBusy,
    TaskNotFound,
    Unavailable,
    UnknownRoute,
)
from cogo.http.endpoint import Success, endpoint
from cogo.http.schemas import ROUTE_ENUM, Body, TaskAccepted, TaskPath, payload_schema
from cogo.http.state import AppState, ValidationFailed, field_error, require_route, state_of
from cogo.streams.capacity import Capacity
from cogo.streams.envelope import (
    EXECUTE_SUBJECT,
    MSG_ID,
    PRINCIPAL_HEADER,
    PRINCIPAL_MAC_HEADER,
    decode_assignment,
    encoder,
    new_id,
)

HTTP_PRINCIPAL = "http"  # who a task submitted with the API token is, to bypass grants

T = TypeVar("T")


class TaskRequest(Body):
    """The body of ``POST /api/tasks`` (docs/design.md §3)."""

    route: str = pydantic.Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+$",
        json_schema_extra=ROUTE_ENUM,
    )
    payload: dict[str, Any] = pydantic.Field(default_factory=dict, json_schema_extra=payload_schema())
    task_id: str | None = pydantic.Field(default=None, min_length=1, max_length=200, pattern=r"^[!-~]+$")
    correlation_id: str | None = pydantic.Field(default=None, max_length=200)


@endpoint(
    body=TaskRequest,
    ok={202: Success("accepted", model=TaskAccepted)},
    errors=(UnknownRoute, InvalidAssignment, BackpressureError, BusUnavailable),
)
async def submit_task(request: Request, body: TaskRequest) -> JSONResponse:
    """Submit a task to the executor dispatcher (orchestrator.execute.0)."""
    state = state_of(request)
    require_route(state, body.route)
    try:
        decode_assignment(body.payload)
    except InvalidAssignment as exc:
        loc = (exc.detail or "").split(" - at `$.")[-1].rstrip("`")
        path: list[str | int] = (
            ["body", *[p for p in loc.replace("$.", "").split(".") if p]]
            if loc
            else ["body", "payload", "__assignment"]
        )
        raise ValidationFailed([field_error(path, exc.message, exc.code)], code=exc.code) from None
    # BackpressureError (503) when the bus is full
    await on_bus(_capacity(state).check())
    task_id = body.task_id or new_id()
    message = {"task_id": task_id, "route": body.route, "payload": body.payload}
    if body.correlation_id:
        message["correlation_id"] = body.correlation_id
    # the submitter, as the dispatcher's bypass grants know it (``[policy]
    # bypass_principals``): whoever holds the API token; signed under --auth
    headers = {MSG_ID: task_id, PRINCIPAL_HEADER: HTTP_PRINCIPAL}
    if state.sealer is not None:
        headers[PRINCIPAL_MAC_HEADER] = state.sealer.principal_mac(HTTP_PRINCIPAL, task_id)
    ack = await on_bus(
        state.js.publish(
            EXECUTE_SUBJECT,
            encoder.encode(message),
            timeout=5,
            headers=tracing.submitted(
                headers,
                task_id=task_id,
                route=body.route,
                name="POST /api/tasks",
                parent=request.headers.get(tracing.TRACEPARENT),
            ),
        )
    )
    _accepted(state).add(task_id, body.route)
    return JSONResponse(
        {"task_id": task_id, "duplicate": bool(ack.duplicate), "stream_seq": ack.seq},
        status_code=202,
    )


async def on_bus(call: Awaitable[T]) -> T:
    """Await a request to the bus; BusUnavailable (503, with ``Retry-After``) if the bus
    cannot answer it now: a timeout, no responders, a closed or reconnecting connection, a
    JetStream that refuses the write (e.g. the stream is full: refused, never accepted and
    dropped) or is electing a leader.

    A connection that is reset while the request waits (a server failing over) cancels the
    request's future, which reaches here as a ``CancelledError`` though nobody cancelled this
    task: that is the bus too (it was a 500 ``internal.error`` 95 times in one failover)."""
    try:
        return await call
    except APIError as exc:
        raise BusUnavailable(f"the bus refused the request: {exc.description}") from None
    except (nats.errors.Error, TimeoutError) as exc:
        raise BusUnavailable(f"the bus is unavailable: {type(exc).__name__}") from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this request itself is being cancelled (client gone, shutdown)
        raise BusUnavailable("the bus connection was reset while the request waited") from None


@endpoint(
    path=TaskPath,
    ok={
        200: "the task: {task_id, route, status, attempt, result, error_code, error, usage, "
        "events, parent_id, children, waiting_for}"
    },
    errors=(TaskNotFound, ProjectionBusy, Unavailable),
)
async def get_task(request: Request, path: TaskPath) -> JSONResponse:
    """A task's status, attempt, result or error, usage and events."""
    status = await task_status(state_of(request), path.task_id)
    return JSONResponse(msgspec.to_builtins(status))


async def task_status(state: AppState, task_id: str) -> Any:
    """Where ``task_id`` is (a ``TaskStatus``); TaskNotFound if nothing is known of it."""
    projector = state.projector
    try:
        if projector is not None:
            return await projector.task_status(task_id)
        # the projector runs in another process: ask it over NATS
        return await _remote_status(state, task_id)
    except TaskNotFound:
        # accepted here a moment ago, not yet dispatched or projected: it is queued
        status = _accepted(state).queued(task_id)
        if status is None:
            raise
        return status


class Accepted:
    """Task ids this facade accepted lately, so a GET right after the 202 finds the task
    (``queued``) before the dispatcher's first event reaches the projection."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._routes: dict[str, str] = {}

    def add(self, task_id: str, route: str) -> None:
        self._routes.pop(task_id, None)
        self._routes[task_id] = route
        while len(self._routes) > self.size:
            del self._routes[next(iter(self._routes))]

    def queued(self, task_id: str) -> Any:
        from cogo.projections.tasks import TaskStatus

        route = self._routes.get(task_id)
        return None if route is None else TaskStatus(task_id, route, "queued", 0)


def _accepted(state: AppState) -> Accepted:
    if state.accepted is None:
        state.accepted = Accepted()
    return state.accepted


async def _remote_status(state: AppState, task_id: str) -> Any:
    from cogo.projections.tasks import STATUS_SUBJECT, TaskStatus

    try:
        reply = await state.nc.request(STATUS_SUBJECT, encoder.encode({"task_id": task_id}), timeout=5)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        raise Unavailable("no projector answers task status requests") from None
    answer = msgspec.json.decode(reply.data)
    if "task_id" not in answer:  # {"error": {code, message}}
        if answer["error"].get("code") == TaskNotFound.code:
            raise TaskNotFound(answer["error"].get("message", "task not found"))
        raise Unavailable(answer["error"].get("message", "status unavailable"))
    return msgspec.convert(answer, TaskStatus)


def _capacity(state: AppState) -> Capacity:
    if state.capacity is None:
        state.capacity = Capacity(state.js)
    return state.capacity


routes = [
    Route("/api/tasks", submit_task, methods=["POST"]),
    Route("/api/tasks/{task_id}", get_task, methods=["GET"]),
]
