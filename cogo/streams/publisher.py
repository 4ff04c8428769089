"""JetStream publishes on the hot path: many in flight, each acknowledged by the stream.

An actor publishes one to three messages per message it handles and must not ack its
input before the stream has stored them. nats-py's ``js.publish`` is a request with its
own timer, and ``publish_async`` draws random bytes (a ``getrandom`` syscall), waits on a
semaphore through ``wait_for`` and parses every ack with ``json.loads`` into a dataclass:
together about a quarter of a dispatcher's CPU when profiled. Here acks come back to one
inbox per connection, each publish is named by a counter, an ack is decoded by msgspec,
and one sweeper task fails acks that never came, instead of a timer per publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cogo.aio import cancel_and_wait
from cogo.streams.envelope import MSG_ID

DEFAULT_TIMEOUT_S = 10.0
# A publish the stream never answers was most likely sent to a leader that just stepped down
# (a host lost or back): its successor answers a resend at once. A message whose
# Nats-Msg-Id makes a resend harmless (the stream deduplicates it) is resent after this long,
# until its whole timeout runs out; waiting the whole 10 s for the first answer added ~10 s
# to every failover for the tasks in flight.
ATTEMPT_TIMEOUT_S = 2.0
RESEND_PAUSE_S = 0.25
LEADERLESS = (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError)
SWEEP_EVERY_S = 0.5
NO_RESPONDERS = "503"

# (subject, data, headers)
Outgoing = tuple[str, bytes, dict[str, str] | None]


class StreamAck(msgspec.Struct, frozen=True):
    """The stream's answer to one publish (the fields of nats-py's ``PubAck``)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None


class _Answer(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None
    error: dict[str, Any] | None = None


_decoder = msgspec.json.Decoder(_Answer)


class Publisher:
    """Publishes to JetStream; ``publish_all`` returns once every message is stored."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # token -> (future, deadline on the monotonic clock)
        self._waiting: dict[str, tuple[asyncio.Future[StreamAck], float]] = {}
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._sub is not None:
                return
            prefix = f"{self.nc.new_inbox()}."
            self._sub = await self.nc.subscribe(
                f"{prefix}*", cb=self._on_answer, pending_msgs_limit=0, pending_bytes_limit=0
            )
            self._prefix = prefix
            # asyncio.get_running_loop() is a getpid() syscall per call here: ask once
            self._loop = asyncio.get_running_loop()
            self._sweeper = asyncio.create_task(self._sweep(), name="publisher-sweep")

    async def stop(self) -> None:
        await cancel_and_wait([self._sweeper])
        self._sweeper = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        self._loop = None
        for future, _ in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def publish(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> asyncio.Future[StreamAck]:
        """Send one message; the future resolves to the stream's ack (or its refusal)."""
        if self._loop is None:
            await self.start()
            assert self._loop is not None
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[StreamAck] = self._loop.create_future()
        self._waiting[token] = (future, time.monotonic() + timeout)
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token, headers=headers)
        except BaseException:
            del self._waiting[token]
            raise
        return future

    async def publish_all(self, messages: Sequence[Outgoing], timeout: float = DEFAULT_TIMEOUT_S) -> list[StreamAck]:
        """Send every message at once, then wait for all their acks: one round trip.

        Raises the first refusal (``nats.js.errors.APIError``), or ``nats.errors.TimeoutError``
        if an ack did not come within ``timeout``; meanwhile messages that can be resent
        safely (``_resendable``) are, every ``ATTEMPT_TIMEOUT_S`` without an answer.
        """
        if not all(_resendable(h) for _, _, h in messages):
            return await self._publish_all_once(messages, timeout)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return await self._publish_all_once(messages, min(ATTEMPT_TIMEOUT_S, left))
            except LEADERLESS:
                if deadline - time.monotonic() <= RESEND_PAUSE_S:
                    raise
            await asyncio.sleep(RESEND_PAUSE_S)

    async def _publish_all_once(self, messages: Sequence[Outgoing], timeout: float) -> list[StreamAck]:
        futures = [await self.publish(s, d, h, timeout) for s, d, h in messages]
        if len(futures) == 1:
            return [await futures[0]]
        answers = await asyncio.gather(*futures, return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers  # type: ignore[return-value]

    async def _on_answer(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if entry is None or entry[0].done():
            return  # late: its publisher already gave up
        future = entry[0]
        if not msg.data:
            status = (msg.headers or {}).get("Status")
            if status == NO_RESPONDERS:
                future.set_exception(nats.js.errors.NoStreamResponseError())
            else:
                future.set_exception(nats.errors.Error(f"unexpected answer: status {status}"))
            return
        try:
            answer = _decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(nats.errors.Error(f"unreadable publish ack: {exc}"))
            return
        if answer.error is not None:
            future.set_exception(_refusal(answer.error))
        else:
            future.set_result(StreamAck(answer.stream, answer.seq, answer.duplicate, answer.domain))

    async def _sweep(self) -> None:
        # one task fails every overdue ack, instead of a timer per publish
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            now = time.monotonic()
            overdue = [t for t, (_, deadline) in self._waiting.items() if deadline <= now]
            for token in overdue:
                future, _ = self._waiting.pop(token)
                if not future.done():
                    future.set_exception(nats.errors.TimeoutError())


def _resendable(headers: dict[str, str] | None) -> bool:
    """Whether sending the message twice stores it once: it has a Nats-Msg-Id, and no
    expectation (Nats-Expected-*) that the first copy, if it landed, would now fail."""
    if not headers or MSG_ID not in headers:
        return False
    return not any(name.startswith("Nats-Expected") for name in headers)


def _refusal(error: dict[str, Any]) -> Exception:
    """The APIError subclass for a refusal (``APIError.from_error`` raises it, never returns
    it: called in the answer callback, it would leave the publish waiting for its timeout)."""
    try:
        nats.js.errors.APIError.from_error(error)
    except nats.js.errors.APIError as exc:
        return exc
    return nats.js.errors.APIError(**error)  # pragma: no cover - from_error always raises
