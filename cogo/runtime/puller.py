"""Pulling from one durable consumer: each message handed over the moment it arrives.

nats-py's ``fetch()`` costs a task, a uuid and a timer per message (``Subscription.next_msg``),
and a lingering fetch keeps every message it got until its whole batch is in or it expires,
so a message that arrives first waits for the last. Profiling the actors showed that
bookkeeping as a large share of their time per message. Here a pull request is published by
hand to an inbox whose callback passes each message on at once (the projector's
``StreamFeed`` does the same for batches).

One request is outstanding at a time, so no pull request is ever left behind to capture
messages nobody reads (nats.py #933, #986; docs/design.md §9). The request lingers: messages
already in the stream come at once, later ones as they arrive, until the batch is full
or the request expires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cogo.streams.pull import next_subject, pull_request

STATUS = "Status"
IDLE_HEARTBEAT = "100"
# how long past its own expiry a request may stay unanswered before we stop waiting for it
REQUEST_GRACE_S = 5.0


class Puller:
    """Pull requests for one durable consumer; delivered messages go to ``on_message``."""

    def __init__(self, nc: NATS, stream: str, consumer: str, on_message: Callable[[Msg], None]) -> None:
        self.nc = nc
        self.subject = next_subject(stream, consumer)
        self.on_message = on_message
        self.status: str | None = None  # the status that ended the last request, if any
        self._sub: Subscription | None = None
        self._inbox = ""
        self._wanted = 0
        self._delivered = 0
        self._over = asyncio.Event()

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        # never a slow consumer: at most one request's batch is ever in flight here
        self._sub = await self.nc.subscribe(
            self._inbox, cb=self._on_delivery, pending_msgs_limit=0, pending_bytes_limit=0
        )

    async def stop(self) -> None:
        """Stop receiving; anything delivered later is redelivered after ``ack_wait``."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def pull(self, batch: int, expires: float) -> int:
        """Ask for up to ``batch`` messages; return the number delivered once the request
        is over (full, expired, refused by the server, or unanswered)."""
        self._wanted, self._delivered, self.status = batch, 0, None
        self._over.clear()
        request = pull_request(batch, expires=expires)
        await self.nc.publish(self.subject, request, reply=self._inbox)
        with contextlib.suppress(TimeoutError):
            # unanswered (e.g. a reconnect dropped it): whatever still comes for it is
            # handled like any delivery, never left unread
            # (asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the wait ends, and the caller would never stop)
            async with asyncio.timeout(expires + REQUEST_GRACE_S):
                await self._over.wait()
        return self._delivered

    async def _on_delivery(self, msg: Msg) -> None:
        headers = msg.headers
        if not msg.data and headers and STATUS in headers:
            if headers[STATUS] != IDLE_HEARTBEAT:
                # 408 expired, 409 refused (max waiting, consumer deleted, ...): request over
                self.status = f"{headers[STATUS]} {headers.get('Description', '')}".strip()
                self._over.set()
            return
        self._delivered += 1
        self.on_message(msg)
        if self._delivered >= self._wanted:
            self._over.set()
