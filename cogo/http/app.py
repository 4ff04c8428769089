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

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cogo.errors import (
    BodyTooLarge,
    CogoError,
    RequestTimeout,
    Unauthorized,
)
from cogo.http import durable, errors, health, openapi, stream, tasks
from cogo.http.state import BODY_TIMEOUT_S, AppState

log = logging.getLogger(__name__)

__all__ = ["BodyLimitMiddleware", "TokenAuthMiddleware", "create_app"]


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
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
                response = errors.error_response(
                    Unauthorized("missing or invalid bearer token"), {"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    state: AppState,
    extra_routes: list[BaseRoute] | None = None,
) -> Starlette:
    """Build the facade for ``state``; route modules are collected here."""
    routes: list[BaseRoute] = [
        *tasks.routes,
        *durable.routes,
        *stream.routes,
        *health.routes,
        *openapi.routes,
        *(extra_routes or []),
    ]
    middleware = [
        Middleware(BodyLimitMiddleware, max_bytes=state.max_body_bytes, timeout_s=state.body_timeout_s),
        Middleware(TokenAuthMiddleware, token=state.api_token),
    ]
    if state.cors_origins:  # off unless configured: the API is not for arbitrary pages
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=state.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            ),
        )
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
