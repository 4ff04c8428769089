"""Durable tasks over HTTP: ``POST /api/tasks/{task_id}/signals/{name}`` (``{data}``) wakes a
``ctx.wait_signal(name)``; ``POST /api/tasks/{task_id}/cancel`` (``{reason}``) cancels a task
and its descendants. Both answer 202 once the command is stored, 404 for an unknown task and
409 for one that already ended (a cancel of a cancelled task is 202 again: idempotent)."""

from __future__ import annotations

from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.errors import BusUnavailable, TaskFinished, TaskNotFound, Unavailable
from cogo.http.endpoint import endpoint
from cogo.http.schemas import Body
from cogo.http.state import AppState, state_of
from cogo.http.tasks import on_bus, task_status
from cogo.streams.commands import cancel_message, signal_message, since_of


class SignalPath(pydantic.BaseModel):
    """``/api/tasks/{task_id}/signals/{name}``."""

    task_id: str = pydantic.Field(min_length=1, max_length=200)
    name: str = pydantic.Field(min_length=1, max_length=100, pattern=r"^[!-~]+$")


class CancelPath(pydantic.BaseModel):
    """``/api/tasks/{task_id}/cancel``."""

    task_id: str = pydantic.Field(min_length=1, max_length=200)


class SignalRequest(Body):
    """The body of a signal: any JSON value as ``data``."""

    data: Any = None


class CancelRequestBody(Body):
    """The body of a cancel (optional): why."""

    reason: str | None = pydantic.Field(default=None, max_length=1000)


async def _live(state: AppState, task_id: str, what: str, *, cancelled_ok: bool = False) -> Any:
    status = await task_status(state, task_id)  # TaskNotFound: 404
    if status.finished and not (cancelled_ok and status.status == "cancelled"):
        raise TaskFinished(f"task {task_id!r} already ended ({status.status}): no {what}")
    return status


async def _send(state: AppState, message: tuple[str, bytes, dict[str, str]]) -> None:
    subject, data, headers = message
    await on_bus(state.js.publish(subject, data, headers=headers, timeout=5))


@endpoint(
    path=SignalPath,
    body=SignalRequest,
    body_required=False,
    ok={202: "the signal is stored: {task_id, name}"},
    errors=(TaskNotFound, TaskFinished, BusUnavailable, Unavailable),
)
async def signal_task(request: Request, path: SignalPath, body: SignalRequest | None = None) -> JSONResponse:
    """Send signal ``name`` to a task; kept until the task ends, the first of a name counts."""
    state = state_of(request)
    status = await _live(state, path.task_id, "signal")
    data = body.data if body is not None else None
    await _send(state, signal_message(path.task_id, path.name, data, route=status.route))
    return JSONResponse({"task_id": path.task_id, "name": path.name}, status_code=202)


@endpoint(
    path=CancelPath,
    body=CancelRequestBody,
    body_required=False,
    ok={202: "the cancel is stored: {task_id}"},
    errors=(TaskNotFound, TaskFinished, BusUnavailable, Unavailable),
)
async def cancel_task(request: Request, path: CancelPath, body: CancelRequestBody | None = None) -> JSONResponse:
    """Cancel a task and its descendants (idempotent)."""
    state = state_of(request)
    status = await _live(state, path.task_id, "cancel", cancelled_ok=True)
    if status.status != "cancelled":
        reason = body.reason if body is not None else None
        since = since_of(status.submitted_at)
        await _send(state, cancel_message(path.task_id, reason, route=status.route, since=since))
    return JSONResponse({"task_id": path.task_id}, status_code=202)


routes = [
    Route("/api/tasks/{task_id}/signals/{name}", signal_task, methods=["POST"]),
    Route("/api/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
]
