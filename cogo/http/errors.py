"""Every error the facade answers with, in one place: status by error class, one body shape.

A handler raises a ``CogoError`` (``cogo.errors``); the app's exception handlers turn it
into ``{"detail": ..., "code": ...}`` with the status from ``STATUS``, looked up along the
class's MRO (so a subclass inherits its parent's status unless it has its own).
``detail`` is a message, or for ``request.invalid`` (422) the list of field errors
``[{"loc", "msg", "type"}]``. Starlette's own ``HTTPException`` (404 for an unknown path,
405 with its ``Allow`` header) gets the same shape with an ``http.*`` code. A 500 never
carries more than ``internal error``: the traceback goes to the log. A 503 (the bus or a
service is away for now, e.g. during a failover) carries ``Retry-After``.
"""

from __future__ import annotations

import http
import logging
from typing import Any

import pydantic
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from cogo import errors as e

log = logging.getLogger(__name__)

STATUS: dict[type[e.CogoError], int] = {
    e.InvalidJson: 400,
    e.JsonTooDeep: 400,
    e.JsonNumberOutOfRange: 400,
    e.Unauthorized: 401,
    e.NotFound: 404,
    e.MethodNotAllowed: 405,
    e.RequestTimeout: 408,
    e.BodyTooLarge: 413,
    e.RequestInvalid: 422,
    e.UnknownRoute: 422,
    e.InvalidAssignment: 422,
    e.InvalidPayload: 422,
    e.InvalidWorkflow: 422,
    e.ArtifactKeyInvalid: 400,
    e.ArtifactNotFound: 404,
    e.WorkflowNotFound: 404,
    e.RunNotFound: 404,
    e.SignalUnknown: 404,
    e.ScheduleNotFound: 404,
    e.InvalidSchedule: 422,
    e.TaskNotFound: 404,
    e.RolloutNotFound: 404,
    e.RunFinished: 409,
    e.TaskFinished: 409,
    e.RolloutConflict: 409,
    e.ReplayRunning: 409,
    e.SqlError: 400,
    e.ProjectionBusy: 503,
    e.BackpressureError: 503,
    e.Unavailable: 503,
}
INTERNAL = 500
UNAVAILABLE = 503
# what a 503 tells a client to wait before retrying (seconds)
RETRY_AFTER_S = 2


class FieldError(pydantic.BaseModel):
    """One wrong field: where (``loc``, from ``body``/``query``/``path``), why, and its type."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(pydantic.BaseModel):
    """The body of every error response."""

    detail: str | list[FieldError]
    code: str = pydantic.Field(description="stable error code (cogo.errors)")


def status_of(error: type[e.CogoError]) -> int:
    """The HTTP status of a CogoError class (500 for one the table does not know)."""
    for cls in error.__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return INTERNAL


def description_of(error: type[e.CogoError]) -> str:
    """One line for the OpenAPI document: the class docstring's first line."""
    doc = (error.__doc__ or error.__name__).strip().splitlines()[0]
    return f"{error.code}: {doc}"


def error_response(error: e.CogoError, headers: dict[str, str] | None = None) -> JSONResponse:
    status = status_of(type(error))
    if status == UNAVAILABLE:  # a retry hint: long enough for JetStream to elect a leader
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    detail: Any = error.detail if isinstance(error, e.RequestInvalid) else error.message
    if status >= INTERNAL:
        log.error("%s: %s", error.code, error.message)
    return JSONResponse({"detail": detail, "code": error.code}, status_code=status, headers=headers)


async def cogo_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, e.CogoError)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTPException (unknown path, wrong method, or raised by a handler)."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    try:
        phrase = http.HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "error"
    code = {404: e.NotFound.code, 405: e.MethodNotAllowed.code}.get(
        exc.status_code, "http." + phrase.lower().replace(" ", "_").replace("-", "_")
    )
    return JSONResponse({"detail": exc.detail, "code": code}, status_code=exc.status_code, headers=headers)


def allowed_methods(request: Request) -> str:
    """Every method some route serves this path with (Starlette names only the first route)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "\0"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error", "code": "internal.error"}, status_code=500)
