"""The actor runtime: the one claim / heartbeat / ack / backoff loop every actor shares.

An actor is a handler plus configuration. This base owns everything around the handler:

- one fetch loop per consumer per process, asking only for as many messages as there are
  free handler slots (nothing sits un-acked in a local queue; nats-server #2488), with an
  empty or partial fetch treated as "no work", never an error (nats.py #418);
- bounded concurrency, ``in_progress()`` heartbeats while a handler runs longer than a
  third of ``ack_wait``;
- ack on success, ``nak(delay)`` on an unexpected error (a plain nak spins; DESIGN §9),
  ``term`` plus a copy in ``DLQ`` for a message that can never be processed;
- graceful drain: on stop, no new fetches; in-flight handlers finish (up to a grace
  period) and are acked before the connection closes;
- per-actor counters.

Messages past ``max_deliver`` are dead-lettered by the dispatcher from the server's
MAX_DELIVERIES advisory (see ``cogo.actors.deadletter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from cogo.config import Config
from cogo.errors import CogoError, MessageError
from cogo.streams.envelope import MSG_ID
from cogo.streams.events import EventLog
from cogo.streams.topology import TASKS, durable_name

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0
NAK_BASE_DELAY_S = 1.0
NAK_MAX_DELAY_S = 30.0


class Defer(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a handler to hand the message back for redelivery after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"deferred {delay:.3f}s")
        self.delay = delay


class Delivery:
    """One message being handled, with its JetStream metadata."""

    __slots__ = ("msg", "route", "seq", "delivered", "published_at", "claimed_at", "_settled")

    def __init__(self, msg: Msg, route: str) -> None:
        meta = msg.metadata
        self.msg = msg
        self.route = route
        self.seq: int = meta.sequence.stream
        self.delivered: int = meta.num_delivered
        self.published_at: float = meta.timestamp.timestamp()
        self.claimed_at = time.time()
        self._settled = False

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def headers(self) -> dict[str, str]:
        return self.msg.headers or {}

    @property
    def queue_wait_ms(self) -> float:
        return max(0.0, (self.claimed_at - self.published_at) * 1000.0)


def actor_id(kind: str) -> str:
    """``kind@host:pid``: who did the work, for events and counters."""
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


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
        self.concurrency = concurrency or config.actors.concurrency
        self.batch = min(config.actors.batch, self.concurrency)
        self.version = version
        self.name = actor_id(self.kind)
        self.events = EventLog(self.js)
        self.counters: Counter[str] = Counter()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._heartbeat_s = max(0.2, config.bus.ack_wait_s / 3)

    def default_routes(self) -> list[str]:
        raise NotImplementedError

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
        await self.on_start()
        for route in self.routes:
            sub = await self.js.pull_subscribe_bind(
                durable=durable_name(route),
                stream=TASKS,
                pending_msgs_limit=self.concurrency * 4,
            )
            self._loops.append(asyncio.create_task(self._fetch_loop(route, sub), name=route))
        log.info("%s consuming %s (concurrency %d)", self.name, self.routes, self.concurrency)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop fetching, let in-flight handlers finish (up to ``grace``), then return."""
        self._stopping.set()
        # a fetch in progress returns within FETCH_TIMEOUT_S; never cancel it (nats.py #933)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*self._loops, return_exceptions=True), FETCH_TIMEOUT_S + 5
            )
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:  # unfinished: JetStream redelivers them after ack_wait
                task.cancel()
        await self.on_stop()

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        await stop.wait()
        await self.stop()

    async def _fetch_loop(self, route: str, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            free = 1
            # take every free slot at once so one fetch asks for a whole batch
            while free < self.batch and not self._slots.locked():
                await self._slots.acquire()
                free += 1
            try:
                msgs = await sub.fetch(free, timeout=FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []  # an empty batch is "no work", not an error
            except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                msgs = []
                self._release(free)
                return
            except Exception as exc:  # server gone for a moment: back off, keep the loop
                log.warning("%s fetch on %s failed: %s", self.name, route, exc)
                msgs = []
                await asyncio.sleep(0.5)
            self._release(free - len(msgs))
            for msg in msgs:
                task = asyncio.create_task(self._process(msg, route))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _process(self, msg: Msg, route: str) -> None:
        try:
            await self._process_one(msg, route)
        finally:
            self._slots.release()

    async def _process_one(self, msg: Msg, route: str) -> None:
        self.counters["received"] += 1
        try:
            delivery = Delivery(msg, route)
        except Exception:  # not a JetStream message: nothing to ack
            self.counters["invalid"] += 1
            return
        heartbeat = asyncio.create_task(self._heartbeat(msg))
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
            delay = min(NAK_MAX_DELAY_S, NAK_BASE_DELAY_S * 2 ** (delivery.delivered - 1))
            log.exception("%s: handler failed on %s seq %d", self.name, route, delivery.seq)
            if isinstance(exc, CogoError):
                log.warning("%s: %s", exc.code, exc)
            await _settle(msg.nak(delay=delay))
            return
        finally:
            heartbeat.cancel()
        self.counters["handled"] += 1
        await _settle(msg.ack())

    async def _heartbeat(self, msg: Msg) -> None:
        # the server restarts ack_wait on every in_progress(): a slow handler keeps its claim
        while True:
            await asyncio.sleep(self._heartbeat_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()
                self.counters["heartbeats"] += 1

    async def dead_letter(self, delivery: Delivery, code: str, reason: str) -> None:
        """Copy the message to ``dlq.<subject>`` with its reason, then terminate it."""
        await publish_dead_letter(
            self.js,
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
    subject: str,
    data: bytes,
    seq: int,
    deliveries: int,
    code: str,
    reason: str,
    actor: str,
) -> None:
    """Append a dead letter to ``DLQ`` (idempotent per original stream sequence)."""
    headers = {
        MSG_ID: f"dlq:{TASKS}:{seq}",
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
