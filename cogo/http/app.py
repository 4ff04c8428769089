"""The Starlette HTTP facade: app factory, auth, request limits and error shapes.

Route modules (``tasks``, ...) each expose ``routes``; this module wires them together.
Errors always come back as ``{"detail": ..., "code": ...}`` (``cogo.http.errors``, the one
place that maps a ``CogoError`` to a status): ``detail`` is the list of field errors
``[{"loc": [...], "msg": ..., "type": ...}]`` for validation (422), a message otherwise;
never a stack trace.

Limits every request meets before a handler sees it: a body of at most ``max_body_bytes``
(413), read within ``BODY_TIMEOUT_S`` (408), JSON nested at most ``MAX_DEPTH`` deep with
integers in 64 bits (400, ``cogo.http.jsonbody``); the request head is timed by the
server (``cogo.http.server``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
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
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cogo.config import Config
from cogo.errors import (
    BodyTooLarge,
    CogoError,
    RequestInvalid,
    RequestTimeout,
    Unauthorized,
    UnknownRoute,
)
from cogo.http import errors
from cogo.http.endpoint import field_error
from cogo.http.endpoint import validate as _validate
from cogo.http.jsonbody import MAX_DEPTH, parse_json
from cogo.streams.policies import PolicyStore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
# the whole body must arrive within this, from the handler's first read (slow-body clients)
BODY_TIMEOUT_S = 30.0
M = TypeVar("M", bound=pydantic.BaseModel)

__all__ = [
    "AppState", "ValidationFailed", "create_app", "field_error", "json_body", "require_route",
    "state_of", "validate", "MAX_BODY_BYTES", "BODY_TIMEOUT_S", "MAX_DEPTH",
]  # fmt: skip


@dataclass
class AppState:
    """What request handlers share: the bus connection, config, and optional components."""

    nc: NATS
    config: Config
    policies: PolicyStore
    data_dir: Path
    api_token: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout_s: float = BODY_TIMEOUT_S
    # origins allowed by CORS (COGO_CORS_ORIGINS, comma-separated); empty = CORS off
    cors_origins: list[str] = field(default_factory=list)
    # filled by the components `cogo up` runs in the same process
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def js(self) -> Any:
        return self.nc.jetstream()


class ValidationFailed(RequestInvalid):
    """Raised by handlers for a 422 with a field-level ``detail`` list (code ``request.invalid``
    unless a more precise one is given, e.g. ``route.unknown``)."""

    def __init__(
        self, detail: list[dict[str, Any]], status_code: int = 422, *, code: str | None = None
    ) -> None:
        del status_code  # always 422: the status comes from cogo.http.errors
        super().__init__(detail[0]["msg"] if detail else "invalid request", detail=detail)
        if code is not None:
            self.code = code


class BodyLimitMiddleware:
    """Bodies over the limit get 413 (by Content-Length, or as they stream in); a body that
    does not arrive within the time limit gets 408 and the connection is closed."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        seen = 0
        deadline: float | None = None
        complete = False

        async def limited() -> Message:
            nonlocal seen, deadline, complete
            if complete:  # after the body, receive() waits for the disconnect: no limit
                return await receive()
            deadline = deadline or time.monotonic() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise _BodyTimeout from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
            await self._too_large(scope, receive, send)
        except _BodyTimeoutError:
            error = RequestTimeout(f"the request body did not arrive within {self.timeout_s:g}s")
            # the rest of the body may still trickle in: do not keep the connection
            await errors.error_response(error, {"Connection": "close"})(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLarge(f"request body larger than {self.max_bytes} bytes")
        await errors.error_response(error, {"Connection": "close"})(scope, receive, send)


class _BodyTooLargeError(Exception):
    pass


class _BodyTimeoutError(Exception):
    pass


_BodyTooLarge = _BodyTooLargeError()
_BodyTimeout = _BodyTimeoutError()


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
                response = errors.error_response(
                    Unauthorized("missing or invalid bearer token"), {"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    state: AppState,
    extra_routes: list[BaseRoute] | None = None,
    on_startup: list[Callable[[], Awaitable[None]]] | None = None,
) -> Starlette:
    """Build the facade for ``state``; route modules are collected here."""
    from cogo.http import health, openapi, stream, tasks

    routes: list[BaseRoute] = [
        *tasks.routes, *stream.routes, *health.routes, *openapi.routes, *(extra_routes or [])
    ]  # fmt: skip
    middleware = [
        Middleware(
            BodyLimitMiddleware, max_bytes=state.max_body_bytes, timeout_s=state.body_timeout_s
        ),
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
        exception_handlers={
            CogoError: errors.cogo_error,
            HTTPException: errors.http_error,
            Exception: errors.server_error,
        },
    )
    app.state.cogo = state
    return app


def state_of(request: Request) -> AppState:
    return request.app.state.cogo  # type: ignore[no-any-return]


async def json_body(request: Request) -> Any:
    """The request's JSON body, within the depth and number limits (400s that say why)."""
    return parse_json(await request.body())


def require_route(state: AppState, route: str, loc: list[str | int] | None = None) -> None:
    """422 at ``loc`` unless an actor consumes ``route`` (its policy exists)."""
    try:
        state.policies.get(route)
    except UnknownRoute as exc:
        raise ValidationFailed(
            [field_error(loc or ["body", "route"], str(exc), exc.code)], code=exc.code
        ) from None


def validate(model: type[M], data: Any) -> M:
    """Validate ``data`` with a pydantic model; 422 with each field's path on failure."""
    return _validate(model, data)  # type: ignore[no-any-return]
