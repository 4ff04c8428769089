"""Workers: actors that execute one attempt of a task and report back to the dispatcher.

A worker subclass implements ``run(order, ctx) -> Outcome``; this module decodes the work
order, enforces the TTL and the per-attempt timeout, and publishes a ``WorkResult`` to
``orchestrator.result.0`` with ``Nats-Msg-Id = <task_id>:<attempt>:result``. That id fences
results: a paused "zombie" worker whose order was redelivered to another worker reports
the same attempt again, and the stream drops the second report (DESIGN §9, nats-server
#4786). Retry decisions are not made here: the dispatcher owns them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from cogo.actors.base import Actor, Delivery
from cogo.actors.canary import versioned_routes
from cogo.errors import AttemptTimeout, CogoError, TtlExpired, WorkerError
from cogo.streams.envelope import (
    MSG_ID,
    RESULT_SUBJECT,
    Usage,
    WorkOrder,
    WorkResult,
    decode_order,
    encoder,
)

log = logging.getLogger(__name__)


class Outcome(msgspec.Struct, frozen=True):
    """What a successful attempt produced."""

    result: Any = None
    usage: Usage = Usage()


class TaskContext:
    """What a handler may use while it runs one attempt."""

    def __init__(self, worker: Worker, delivery: Delivery, order: WorkOrder) -> None:
        self.worker = worker
        self.delivery = delivery
        self.order = order

    @property
    def js(self) -> Any:
        return self.worker.js

    @property
    def remaining_tokens(self) -> int:
        """Tokens this attempt may still spend under the task's ``max_tokens``."""
        return max(0, self.order.assignment.max_tokens - self.order.usage_so_far.tokens)

    @property
    def remaining_cost_usd(self) -> float:
        return max(0.0, self.order.assignment.max_cost_usd - self.order.usage_so_far.cost_usd)

    @property
    def deadline(self) -> float:
        """Unix seconds by which this attempt must be done (timeout or TTL, sooner)."""
        timeout_at = self.delivery.claimed_at + self.order.assignment.timeout_ms / 1000.0
        return min(timeout_at, self.order.deadline)


class Worker(Actor):
    """Base of actors that run task attempts (echo, codegen, build/test, ...)."""

    route: str = ""

    def default_routes(self) -> list[str]:
        return [self.route]

    async def start(self) -> None:
        # a versioned worker (--version v2) consumes <route>.<version>: the canary's subject
        self.routes = await versioned_routes(self)
        await super().start()

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        raise NotImplementedError

    async def handle(self, delivery: Delivery) -> None:
        order = decode_order(delivery.data)  # MalformedMessage -> dead letter
        started = time.time()
        outcome: Outcome | None = None
        error: CogoError | None = None
        usage = Usage()
        try:
            if started > order.deadline:
                raise TtlExpired(
                    f"task expired {started - order.deadline:.3f}s before a worker claimed it"
                )
            ctx = TaskContext(self, delivery, order)
            budget = max(0.0, ctx.deadline - started)
            try:
                async with asyncio.timeout(budget):
                    outcome = await self.run(order, ctx)
            except TimeoutError:
                if time.time() >= order.deadline:
                    raise TtlExpired("task reached its TTL while running") from None
                raise AttemptTimeout(
                    f"attempt {order.attempt} ran past timeout_ms={order.assignment.timeout_ms}"
                ) from None
        except CogoError as exc:
            error = exc
            usage = getattr(exc, "usage", None) or Usage()
        except Exception as exc:  # a bug or unexpected failure in the handler: retryable
            error = WorkerError(f"{type(exc).__name__}: {exc}")
        duration_ms = (time.time() - started) * 1000.0
        if outcome is not None:
            usage = outcome.usage
        usage = Usage(tokens=usage.tokens, cost_usd=usage.cost_usd, duration_ms=duration_ms)
        self.counters["succeeded" if error is None else "failed"] += 1
        report = WorkResult(
            order=order,
            ok=error is None,
            actor=self.name,
            claimed_at=delivery.claimed_at,
            queue_wait_ms=round(delivery.queue_wait_ms, 3),
            duration_ms=round(duration_ms, 3),
            delivery=delivery.delivered,
            result=outcome.result if outcome is not None else None,
            usage=usage,
            error_code=error.code if error else None,
            error=str(error) if error else None,
            retryable=error.retryable if error else True,
            version=self.version,
        )
        # through the actor's publisher: the same stream ack, for less CPU than js.publish
        (ack,) = await self.publish_all(
            [(RESULT_SUBJECT, encoder.encode(report),
              {MSG_ID: f"{order.task_id}:{order.attempt}:result"})]
        )  # fmt: skip
        if ack.duplicate:
            # another worker already reported this attempt (our claim had lapsed): fenced off
            self.counters["fenced"] += 1
            log.warning(
                "late result for %s attempt %d fenced off (already reported)",
                order.task_id,
                order.attempt,
            )
