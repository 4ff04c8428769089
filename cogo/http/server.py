"""The facade's HTTP server: uvicorn on h11, with a deadline for the request head.

uvicorn times out idle keep-alive connections, but not a client that has started a
request: one byte of headers every few seconds held a connection (and its memory) forever,
since any byte cancels the keep-alive timer. ``TimedH11Protocol`` gives the request line and
headers ``HEAD_TIMEOUT_S`` from the connection's start (or from the previous response) and
then closes the connection. The body has its own limit (``cogo.http.app.BodyLimitMiddleware``:
``BODY_TIMEOUT_S`` for all of it, then 408), and h11 caps the head at ``MAX_HEAD_BYTES``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5.0
MAX_HEAD_BYTES = 16 * 1024


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on each request head."""

    head_timeout_s = HEAD_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the head is in: the handler has it now
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # the next request on this connection gets its own

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the facade: loopback, h11 with head/keep-alive timeouts."""
    return uvicorn.Config(
        app,
        host="127.0.0.1",
        http=TimedH11Protocol,
        timeout_keep_alive=int(KEEP_ALIVE_S),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        log_level="warning",
        lifespan="off",
        **options,
    )
