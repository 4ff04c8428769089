"""The actor runtime: the one claim / heartbeat / ack / backoff loop every actor shares.

An actor is a handler plus configuration. This base owns everything around the handler:

- one fetch loop per consumer per process, asking only for as many messages as there are
  free handler slots (nothing sits un-acked in a local queue; nats-server #2488), each
  message handed to its handler the moment it arrives (``cogo.runtime.puller``); an empty
  or partial pull is "no work", never an error (nats.py #418);
- bounded concurrency (``concurrency`` handlers per route), ``in_progress()`` heartbeats
  while a handler runs longer than a third of ``ack_wait``;
- ack on success, ``nak(delay)`` on an unexpected error (a plain nak spins; docs/design.md §9),
  ``term`` plus a copy in ``DLQ`` for a message that can never be processed;
- graceful drain: on stop, no new fetches; in-flight handlers finish (up to a grace
  period) and are acked before the connection closes;
- per-actor counters.

Messages past ``max_deliver`` are dead-lettered by the dispatcher from the server's
MAX_DELIVERIES advisory (see ``cogo.runtime.deadletter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from cogo import tracing
from cogo.aio import cancel_and_wait
from cogo.config import Config, exponential_delay
from cogo.errors import CogoError, MessageError
from cogo.runtime.puller import Puller
from cogo.streams.connection import actor_id
from cogo.streams.envelope import MSG_ID
from cogo.streams.events import EventLog
from cogo.streams.publisher import Outgoing, Publisher, StreamAck
from cogo.streams.pull import ack_tokens
from cogo.streams.topology import TASKS, durable_name, stream_of

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0
NAK_BASE_DELAY_S = 1.0
NAK_MAX_DELAY_S = 30.0
PUBLISH_TIMEOUT_S = 10.0
BATCH_GATHER_S = 0.005


class Defer(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a handler to hand the message back for redelivery after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"deferred {delay:.3f}s")
        self.delay = delay


class _Slots:
    """Free handler slots of one route: a counter, since a delivery that arrives after its
    pull request was given up on is still handled (and may overdraw it for a moment)."""

    __slots__ = ("free", "_freed")

    def __init__(self, size: int) -> None:
        self.free = size
        self._freed = asyncio.Event()

    def take(self) -> None:
        self.free -= 1

    def give(self) -> None:
        self.free += 1
        if self.free > 0:
            self._freed.set()

    def wake(self) -> None:
        self._freed.set()

    async def wait(self) -> None:
        """Until a slot is free (or ``wake``)."""
        if self.free <= 0:
            self._freed.clear()
            await self._freed.wait()

    async def gather(self, wanted: int, within: float) -> None:
        """Until ``wanted`` slots are free, or ``within`` seconds passed."""
        deadline = time.monotonic() + within
        while self.free < wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # not wait_for: see Puller.pull
                    await self._freed.wait()


class _Claim:
    """A message being handled and when its next ``in_progress()`` is due."""

    __slots__ = ("msg", "due")

    def __init__(self, msg: Msg, due: float) -> None:
        self.msg = msg
        self.due = due


class Delivery:
    """One message being handled, with its JetStream metadata."""

    __slots__ = ("msg", "route", "seq", "delivered", "published_at", "claimed_at")

    def __init__(self, msg: Msg, route: str) -> None:
        # straight from the ack subject (cogo.streams.pull): msg.metadata builds four
        # objects and a datetime
        delivered, seq, _, timestamp_ns, _ = ack_tokens(msg.reply)
        self.msg = msg
        self.route = route
        self.seq = seq
        self.delivered = delivered
        self.published_at = timestamp_ns / 1e9
        self.claimed_at = time.time()

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def headers(self) -> dict[str, str]:
        return self.msg.headers or {}

    @property
    def queue_wait_ms(self) -> float:
        return max(0.0, (self.claimed_at - self.published_at) * 1000.0)


class Actor:
    """Base of every actor: subclasses set ``kind`` and ``routes`` and implement ``handle``."""

    kind: str = "actor"

    def __init__(
        self,
        nc: NATS,
        config: Config,
        *,
        routes: Sequence[str] | None = None,
        concurrency: int | None = None,
        version: str | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.config = config
        self.routes = list(routes) if routes is not None else list(self.default_routes())
        self.concurrency = concurrency or self.default_concurrency(config)
        self.batch = min(config.actors.batch, self.concurrency)
        self.version = version
        self.name = actor_id(self.kind)
        self.publisher = Publisher(nc)
        self.events = EventLog(self.js, self.publisher)
        self.counters: Counter[str] = Counter()
        self._slots: list[_Slots] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._heartbeat_s = max(0.2, config.bus.ack_wait_s / 3)
        self._claims: dict[int, _Claim] = {}
        self._heartbeats: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def default_routes(self) -> list[str]:
        raise NotImplementedError

    def default_concurrency(self, config: Config) -> int:
        """Handlers per route when ``cogo run --concurrency`` / the agent does not say."""
        return config.actors.concurrency

    # -- the handler -------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        """Process one message; return to ack it, raise to nak / dead-letter it."""
        raise NotImplementedError

    async def on_start(self) -> None:
        """Hook run once before fetching starts."""

    async def on_stop(self) -> None:
        """Hook run once after the last handler finished."""

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()  # a getpid() syscall per call: ask once
        # tracing decided (and the OpenTelemetry SDK imported, if on) off the event loop,
        # before the first message rather than inside it
        await asyncio.to_thread(tracing.enabled)
        await self.publisher.start()
        await self.on_start()
        self._heartbeats = asyncio.create_task(self._heartbeat_loop(), name="heartbeats")
        for route in self.routes:
            consumer = (stream_of(route), durable_name(route))
            self._loops.append(asyncio.create_task(self._fetch_loop(route, consumer), name=route))
        log.info("%s consuming %s (concurrency %d)", self.name, self.routes, self.concurrency)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop fetching, let in-flight handlers finish (up to ``grace``), then return."""
        self._stopping.set()
        for slots in self._slots:
            slots.wake()
        # a pull in progress ends within FETCH_TIMEOUT_S; never abandon it (nats.py #933)
        if self._loops:
            _, late = await asyncio.wait(self._loops, timeout=FETCH_TIMEOUT_S + 5)
            await cancel_and_wait(late)
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:  # unfinished: JetStream redelivers them after ack_wait
                task.cancel()
        await cancel_and_wait([self._heartbeats])
        await self.on_stop()
        await self.publisher.stop()

    async def _fetch_loop(
        self,
        route: str,
        consumer: tuple[str, str] | JetStreamContext.PullSubscription,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Pull ``route``'s messages while slots are free; each starts a handler on arrival.

        ``stop`` ends this one loop (its last pull expires first, so no request is left
        behind to capture messages); ``stop()`` of the actor ends them all."""
        if not isinstance(consumer, tuple):  # a subclass bound it with pull_subscribe_bind
            consumer = (consumer._stream, consumer._consumer)
        slots = _Slots(self.concurrency)
        self._slots.append(slots)
        puller = Puller(self.nc, *consumer, lambda msg: self._spawn(msg, route, slots))
        await puller.start()
        stopped = stop or self._stopping
        try:
            while not self._stopping.is_set() and not stopped.is_set():
                await slots.wait()
                if self._stopping.is_set() or stopped.is_set():
                    break
                if slots.free <= 0:  # overdrawn by a late delivery: wait for its handler
                    continue
                if slots.free < self.concurrency:
                    # busy: let a few more slots free up so one request asks for a batch.
                    # Fewer pull round trips, and work arrives in bursts, which keeps the
                    # events it causes in bursts too (one projector transaction each).
                    await slots.gather(max(1, self.batch // 2), BATCH_GATHER_S)
                try:
                    await puller.pull(min(slots.free, self.batch), FETCH_TIMEOUT_S)
                except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                    return
                except Exception as exc:  # server gone for a moment: back off, keep the loop
                    log.warning("%s fetch on %s failed: %s", self.name, route, exc)
                    await asyncio.sleep(0.5)
                    continue
                status = puller.status
                if status is not None and not status.startswith("408"):
                    # refused (no such consumer, leadership change, ...): do not spin on it
                    log.warning("%s fetch on %s: %s", self.name, route, status)
                    await asyncio.sleep(0.5)
        finally:
            await puller.stop()
            self._slots.remove(slots)

    def _spawn(self, msg: Msg, route: str, slots: _Slots) -> None:
        slots.take()
        assert self._loop is not None
        task = self._loop.create_task(self._process(msg, route, slots))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _process(self, msg: Msg, route: str, slots: _Slots) -> None:
        try:
            await self._process_one(msg, route)
        finally:
            slots.give()

    async def _process_one(self, msg: Msg, route: str) -> None:
        self.counters["received"] += 1
        try:
            delivery = Delivery(msg, route)
        except Exception:  # not a JetStream message: nothing to ack
            self.counters["invalid"] += 1
            return
        key = id(msg)
        self._claims[key] = _Claim(msg, time.monotonic() + self._heartbeat_s)
        try:
            await self.handle(delivery)
        except Defer as defer:
            self.counters["deferred"] += 1
            await _settle(msg.nak(delay=defer.delay))
            return
        except MessageError as exc:
            self.counters["dead_lettered"] += 1
            await self.dead_letter(delivery, exc.code, str(exc))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters["errors"] += 1
            delay = exponential_delay(NAK_BASE_DELAY_S, delivery.delivered, cap=NAK_MAX_DELAY_S)
            log.exception("%s: handler failed on %s seq %d", self.name, route, delivery.seq)
            if isinstance(exc, CogoError):
                log.warning("%s: %s", exc.code, exc)
            await _settle(msg.nak(delay=delay))
            return
        finally:
            del self._claims[key]
        self.counters["handled"] += 1
        await _settle(msg.ack())

    async def _heartbeat_loop(self) -> None:
        # the server restarts ack_wait on every in_progress(): a slow handler keeps its claim.
        # One loop for every message in flight, not a timer task per message: most handlers
        # finish long before their first heartbeat is due.
        tick = self._heartbeat_s / 4
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for claim in [c for c in self._claims.values() if c.due <= now]:
                claim.due = now + self._heartbeat_s
                with contextlib.suppress(Exception):
                    await claim.msg.in_progress()
                    self.counters["heartbeats"] += 1

    async def publish_all(self, messages: Sequence[Outgoing], timeout: float = PUBLISH_TIMEOUT_S) -> list[StreamAck]:
        """Publish ``(subject, data, headers)`` messages at once and wait for every stream
        ack: one round trip for all of them instead of one each.

        Raises if any is refused or unacknowledged in time; the caller then fails its message,
        which is redelivered, and each ``Nats-Msg-Id`` makes the retry store nothing twice.
        """
        return await self.publisher.publish_all(messages, timeout)

    async def dead_letter(self, delivery: Delivery, code: str, reason: str) -> None:
        """Copy the message to ``dlq.<subject>`` with its reason, then terminate it."""
        await publish_dead_letter(
            self.js,
            stream=stream_of(delivery.route),
            subject=delivery.msg.subject,
            data=delivery.data,
            seq=delivery.seq,
            deliveries=delivery.delivered,
            code=code,
            reason=reason,
            actor=self.name,
        )
        await _settle(delivery.msg.term())
        await self.on_dead_letter(delivery, code, reason)

    async def on_dead_letter(self, delivery: Delivery, code: str, reason: str) -> None:
        """Hook: report a dead-lettered message (the dispatcher turns it into an event)."""

    def stats(self) -> dict[str, Any]:
        return {
            "actor": self.name,
            "kind": self.kind,
            "routes": self.routes,
            "version": self.version,
            "in_flight": self.in_flight,
            "concurrency": self.concurrency,
            **self.counters,
        }


async def publish_dead_letter(
    js: JetStreamContext,
    *,
    stream: str = TASKS,
    subject: str,
    data: bytes,
    seq: int,
    deliveries: int,
    code: str,
    reason: str,
    actor: str,
) -> None:
    """Append a dead letter to ``DLQ`` (idempotent per original stream and sequence)."""
    headers = {
        MSG_ID: f"dlq:{stream}:{seq}",
        "Cogo-Error-Code": code,
        "Cogo-Reason": reason[:1000].replace("\r", " ").replace("\n", " "),
        "Cogo-Original-Subject": subject,
        "Cogo-Stream-Seq": str(seq),
        "Cogo-Deliveries": str(deliveries),
        "Cogo-Actor": actor,
    }
    await js.publish(f"dlq.{subject}", data, headers=headers, timeout=10)


async def _settle(coro: Any) -> None:
    # a lost ack is harmless: the message is redelivered and fenced by its ids
    try:
        await coro
    except nats.errors.Error as exc:
        log.warning("ack/nak failed: %s", exc)
