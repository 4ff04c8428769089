"""Admission control: refuse new work while the event log cannot take its events.

``EVENTS`` discards nothing when full (``discard: new``): appends fail instead. A task
accepted then could never record its fate, so submissions are refused up front (HTTP 503,
``bus.backpressure``) while the log's free space is under a margin: refused, never
accepted-and-dropped.
"""

from __future__ import annotations

import time

from nats.js.client import JetStreamContext

from cogo.errors import BackpressureError
from cogo.streams.topology import EVENTS, TASKS

MIN_FREE_BYTES = 64 * 1024
MIN_FREE_FRACTION = 0.01
CACHE_S = 0.25


class Capacity:
    """Checks the free space of ``EVENTS`` and ``TASKS`` (cached for a moment)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._checked_at = 0.0
        self._problem: str | None = None

    async def check(self) -> None:
        """Raise BackpressureError if a stream is (nearly) full."""
        now = time.monotonic()
        if now - self._checked_at > CACHE_S:
            self._problem = await self._measure()
            self._checked_at = now
        if self._problem:
            raise BackpressureError(self._problem)

    async def _measure(self) -> str | None:
        for name in (EVENTS, TASKS):
            info = await self._js.stream_info(name)
            limit = info.config.max_bytes or -1
            if limit <= 0:
                continue
            free = limit - info.state.bytes
            if free < max(MIN_FREE_BYTES, limit * MIN_FREE_FRACTION):
                return (
                    f"stream {name} is full ({info.state.bytes} of {limit} bytes); "
                    "new work is refused until space frees up (raise its max_bytes or max_age)"
                )
        return None
