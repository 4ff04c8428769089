"""The Starlette HTTP facade: app factory, auth, body limit and error shapes.

Route modules (``tasks``, ...) each expose ``routes``; this module wires them together.
Errors always come back as JSON: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``
for validation (422), ``{"detail": "..."}`` otherwise; never a stack trace.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydantic
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cogo.config import Config
from cogo.errors import UnknownRoute
from cogo.streams.policies import PolicyStore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
M = TypeVar("M", bound=pydantic.BaseModel)


@dataclass
class AppState:
    """What request handlers share: the bus connection, config, and optional components."""

    nc: NATS
    config: Config
    policies: PolicyStore
    data_dir: Path
    api_token: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    # origins allowed by CORS (COGO_CORS_ORIGINS, comma-separated); empty = CORS off
    cors_origins: list[str] = field(default_factory=list)
    # filled by the components `cogo up` runs in the same process
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def js(self) -> Any:
        return self.nc.jetstream()


class ValidationFailed(HTTPException):
    """Raised by handlers for a 422 with a field-level ``detail`` list."""

    def __init__(self, detail: list[dict[str, Any]], status_code: int = 422) -> None:
        super().__init__(status_code=status_code)
        self.errors = detail


def field_error(loc: list[str | int], msg: str, type: str = "value_error") -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type}


class BodyLimitMiddleware:
    """Reject bodies over the limit with 413 before the handler reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
            await _too_large(self.max_bytes)(scope, receive, send)


class _BodyTooLargeError(Exception):
    pass


_BodyTooLarge = _BodyTooLargeError()


def _too_large(limit: int) -> Response:
    return JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)


class TokenAuthMiddleware:
    """Require ``Authorization: Bearer <token>`` on ``/api/*`` when a token is configured."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token and scope["type"] == "http" and scope["path"].startswith("/api/"):
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"")
            scheme, _, credential = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(
                credential.strip(), self.token
            ):
                response = JSONResponse(
                    {"detail": "missing or invalid bearer token"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ValidationFailed):
        return JSONResponse({"detail": exc.errors}, status_code=exc.status_code)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def create_app(
    state: AppState,
    extra_routes: list[BaseRoute] | None = None,
    on_startup: list[Callable[[], Awaitable[None]]] | None = None,
) -> Starlette:
    """Build the facade for ``state``; route modules are collected here."""
    from cogo.http import health, openapi, tasks

    routes: list[BaseRoute] = [
        *tasks.routes, *health.routes, *openapi.routes, *(extra_routes or [])
    ]  # fmt: skip
    middleware = [
        Middleware(BodyLimitMiddleware, max_bytes=state.max_body_bytes),
        Middleware(TokenAuthMiddleware, token=state.api_token),
    ]
    if state.cors_origins:  # off unless configured: the API is not for arbitrary pages
        middleware.insert(0, Middleware(
            CORSMiddleware, allow_origins=state.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        ))  # fmt: skip
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.cogo = state
    return app


def state_of(request: Request) -> AppState:
    return request.app.state.cogo  # type: ignore[no-any-return]


async def json_body(request: Request) -> Any:
    """The request's JSON body, or a 400 that says what is wrong with it."""
    body = await request.body()
    if not body:
        raise HTTPException(400, "request body is empty; expected JSON")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, f"request body is not valid JSON: {exc}") from exc


def require_route(state: AppState, route: str, loc: list[str | int] | None = None) -> None:
    """422 at ``loc`` unless an actor consumes ``route`` (its policy exists)."""
    try:
        state.policies.get(route)
    except UnknownRoute as exc:
        raise ValidationFailed(
            [field_error(loc or ["body", "route"], str(exc), exc.code)]
        ) from None


def validate(model: type[M], data: Any) -> M:
    """Validate ``data`` with a pydantic model; 422 with each field's path on failure."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationFailed(
            [
                field_error(["body", *err["loc"]], err["msg"], err["type"])
                for err in exc.errors(include_url=False, include_context=False, include_input=False)
            ]
        ) from None
