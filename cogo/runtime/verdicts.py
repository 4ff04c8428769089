"""What a worker's report means for its task, and the events that end tasks.

The dispatcher hands every result it accepts (``cogo.runtime.dispatcher``) to
``Verdicts.on_result``: **the one place retries are decided**. Usage accumulates across
attempts (and, for a durable agent, across its tree of children); over its budget, the task
fails; a success is ``execute_done``; a retryable failure is retried after the route's
backoff while attempts and the TTL allow it, else the task fails with the reason it could
not go on. A retry whose backoff is not over goes out as a message schedule the server
fires at its due time (``cogo.streams.schedule``), so nothing holds it meanwhile.

The terminal events are built here too, for the dispatcher, the admitter and the
suspensions: ``execute_failed`` / ``execute_done`` under the fixed id ``<task>:terminal``
(handling a report twice appends nothing twice), with the end marker of the output the task
may have written, and the wake-up of a durable parent waiting for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import TYPE_CHECKING, Any

import msgspec

from cogo import tracing
from cogo.errors import (
    AttemptsExhausted,
    CogoError,
    MalformedMessage,
    TtlExpired,
)
from cogo.runtime.children import wake_messages
from cogo.streams.budget import over_budget
from cogo.streams.catalogue import (
    EXECUTE_CANCELLED,
    EXECUTE_DONE,
    EXECUTE_FAILED,
    EXECUTE_RETRY,
    ExecuteDone,
)
from cogo.streams.envelope import (
    EXECUTE_SUBJECT,
    KIND_HEADER,
    MSG_ID,
    RESULT_SUBJECT,
    RESULTS_SUBJECT,
    RETRY_SUBJECT,
    Usage,
    WorkOrder,
    WorkResult,
    decode_order,
    decode_result,
    decode_task,
    encoder,
    new_id,
    route_of_result,
)
from cogo.streams.events import Event, event_message, iso, make_event
from cogo.streams.outputs import end_marker
from cogo.streams.publisher import Outgoing
from cogo.streams.schedule import schedule_message
from cogo.streams.seal import MAC_HEADER, guard_id, output_mac

if TYPE_CHECKING:
    from cogo.runtime.base import Delivery
    from cogo.runtime.dispatcher import ExecutorDispatcher

RETRY_KIND = "retry"
# a retry due sooner than this goes straight to the retry subject; a later one waits as a
# message schedule, and one that arrives early by more than this is scheduled again
SCHEDULE_AFTER_S = 0.25


class Verdicts:
    """One dispatcher's decisions on results, and the terminal events it appends."""

    def __init__(self, dispatcher: ExecutorDispatcher) -> None:
        self.d = dispatcher

    async def on_result(self, r: WorkResult, delivery: Delivery) -> None:
        order = r.order
        a = order.assignment
        total = order.usage_so_far + r.usage
        base = base_of(order)
        # a durable agent's budget bounds its tree: its ended children's spending counts
        tree = total + r.tree_usage if r.tree_usage is not None else total
        # a redelivered attempt's first delivery may have emitted before its worker died
        emitted = order.emitted or r.emitted or r.delivery > 1
        closes = order if emitted else None
        measured = {
            "actor": r.actor,
            "attempt": order.attempt,
            # a hold by flow control is part of the wait (before the worker's own queue)
            "queue_wait_ms": round(r.queue_wait_ms + order.held_ms, 3) if order.held_ms else r.queue_wait_ms,
            "duration_ms": r.duration_ms,
            "usage": total,
            "version": r.version or order.version,
            "cohort": order.cohort,
        }
        timing = {"claimed_at": iso(r.claimed_at), "submitted_at": iso(order.submitted_at)}
        budget = over_budget(tree, a, f"across {order.attempt} attempt(s)")
        if budget is not None:
            await self.fail(base, budget.code, str(budget), data=timing, closes=closes, **measured)
            return
        if r.ok:
            await self.terminal(
                make_event(
                    EXECUTE_DONE,
                    event_id=f"{order.task_id}:terminal",
                    data=ExecuteDone(**timing, result=r.result),
                    **base,
                    **measured,
                ),
                closes,
            )
            return
        code, error = r.error_code or "worker.error", r.error or "attempt failed"
        if not r.retryable:
            await self.fail(base, code, error, data=timing, detail=r.detail, closes=closes, **measured)
            return
        if order.attempt >= a.max_attempts:
            await self.fail(
                base,
                AttemptsExhausted.code,
                f"all {a.max_attempts} attempt(s) failed; last: [{code}] {error}",
                data={**timing, "last_error_code": code},
                closes=closes,
                **measured,
            )
            return
        backoff_ms = a.backoff.delay_ms(order.attempt)
        next_at = time.time() + backoff_ms / 1000.0
        if next_at > order.deadline:
            await self.fail(
                base,
                TtlExpired.code,
                f"no time left for attempt {order.attempt + 1} within ttl_ms={a.ttl_ms}; last: [{code}] {error}",
                data={**timing, "last_error_code": code},
                closes=closes,
                **measured,
            )
            return
        retry = msgspec.structs.replace(
            order,
            attempt=order.attempt + 1,
            usage_so_far=total,
            not_before=next_at,
            emitted=emitted,
            flow_slot=None,
            held_ms=0.0,  # this attempt's slot is released; its own is to come
        )
        event = make_event(
            EXECUTE_RETRY,
            event_id=f"{order.task_id}:retry:{order.attempt}",
            backoff_ms=backoff_ms,
            next_attempt_at=iso(next_at),
            error_code=code,
            error=error,
            data=timing,
            **base,
            **measured,
        )
        if self.d.sealer is not None:
            retry = self.d.sealer.seal(retry)
        # the retry (a schedule when its backoff is not over) and its event, acked together
        await self.d.publish_all([self.retry_message(retry, time.time()), event_message(event, order.token)])

    def retry_message(self, retry: WorkOrder, now: float, *, again: bool = False) -> Outgoing:
        """The retry on the dispatchers' own subject: straight away when due, else as a
        message schedule the server fires at ``not_before`` (nothing held meanwhile)."""
        suffix = "retry:again" if again else "retry"
        msg_id = guard_id(retry.token, f"{retry.task_id}:{retry.attempt}:{suffix}")
        data = encoder.encode(retry)
        headers = {MSG_ID: msg_id, KIND_HEADER: RETRY_KIND}
        if retry.not_before - now <= SCHEDULE_AFTER_S:
            return RETRY_SUBJECT, data, headers
        # one schedule per attempt; a re-handled result re-publishes the same id (dropped)
        return schedule_message(
            key=retry_key(retry), target=RETRY_SUBJECT, data=data, at=retry.not_before, headers=headers
        )

    # -- terminal events ---------------------------------------------------------------

    async def fail(
        self,
        base: dict[str, Any],
        code: str,
        error: str,
        *,
        closes: WorkOrder | None = None,
        **fields: Any,
    ) -> None:
        """Append the task's terminal ``execute_failed`` (see ``_failure``); with ``closes``,
        the end marker of that task's output too."""
        await self.terminal(self.failure(base, code, error, **fields), closes)

    def failure(
        self,
        base: dict[str, Any],
        code: str,
        error: str,
        *,
        attempt: int,
        detail: Any = None,
        data: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Event:
        extra = dict(data or {})
        if detail is not None:
            extra["detail"] = detail
        fields.setdefault("actor", self.d.name)
        return make_event(
            EXECUTE_FAILED,
            event_id=f"{base['task_id']}:terminal",
            attempt=attempt,
            error_code=code,
            error=error,
            data=extra or None,
            **base,
            **fields,
        )

    def order_failure(self, order: WorkOrder, error: CogoError, *, data: dict[str, Any] | None = None) -> Event:
        """The terminal ``execute_failed`` of a task whose next attempt never started."""
        return self.failure(
            base_of(order),
            error.code,
            str(error),
            attempt=order.attempt - 1,
            usage=order.usage_so_far,
            version=order.version,
            cohort=order.cohort,
            data=data,
        )

    def terminal_messages(self, event: Event, closes: WorkOrder | None = None) -> list[Outgoing]:
        """The terminal event and, with ``closes``, the end marker of that task's output (it
        may have emitted), to go out in one batch (``cogo.streams.outputs``)."""
        token = self.d.task_token(event.task_id)
        # a child of a durable agent wakes its parent (cogo.runtime.suspension)
        wakes = wake_messages(event, token)
        if closes is None:
            return [event_message(event, token), *wakes]
        status = {EXECUTE_DONE: "succeeded", EXECUTE_CANCELLED: "cancelled"}.get(event.type, "failed")
        subject, data, headers = end_marker(
            closes, status, attempt=event.attempt or 0, error_code=event.error_code, error=event.error
        )
        if self.d.sealer is not None:  # readers show only what carries the task's output MAC
            out_token = self.d.sealer.outputs.out_token(closes.task_id)
            headers = {MSG_ID: guard_id(token, headers[MSG_ID]), MAC_HEADER: output_mac(out_token, data)}
        return [event_message(event, token), (subject, data, headers), *wakes]

    async def terminal(self, event: Event, closes: WorkOrder | None = None) -> None:
        """Append the terminal event (and the end marker of the output it ``closes``)."""
        ack, *_ = await self.d.publish_all(self.terminal_messages(event, closes))
        appended = not ack.duplicate
        if appended:
            tracing.task_ended(event.task_id, event.error_code, event.error)
        self.d.counters[event.type if appended else "duplicate_terminal"] += 1

    async def report_dead_letter(self, subject: str, data: bytes, code: str, reason: str, deliveries: int) -> None:
        """Turn a dead-lettered TASKS or RESULTS message into ``execute_failed``
        (``dead_letter``)."""
        base: dict[str, Any] | None = None
        attempt = 0
        usage: Usage | None = None
        order: WorkOrder | None = None
        running: WorkOrder | None = None  # an attempt that holds a flow slot
        with contextlib.suppress(MalformedMessage):
            if subject in (RESULTS_SUBJECT, RESULT_SUBJECT) or route_of_result(subject):
                order = running = decode_result(data).order
                base, attempt, usage = base_of(order), order.attempt, order.usage_so_far
            elif subject in (EXECUTE_SUBJECT, RETRY_SUBJECT):
                try:
                    order = decode_order(data)
                    base, attempt, usage = base_of(order), order.attempt, order.usage_so_far
                except MalformedMessage:
                    task = decode_task(data)
                    tid = task.task_id or f"dead:{new_id()}"
                    base = {
                        "task_id": tid,
                        "correlation_id": task.correlation_id or tid,
                        "causation_id": task.causation_id,
                        "route": task.route,
                    }
            else:
                order = running = decode_order(data)
                base, attempt, usage = base_of(order), order.attempt, order.usage_so_far
        if order is not None and self.d.sealer is not None and not self.d.sealer.verify(order):
            # not an order the dispatcher made: it must not end the task it names
            base, order, running, attempt, usage = None, None, None, 0, None
        if base is None:
            tid = f"dead:{new_id()}"
            base = {"task_id": tid, "correlation_id": tid, "route": None}
        await self.fail(
            base,
            code,
            f"{reason} (subject {subject}, {deliveries} deliveries)",
            attempt=attempt,
            usage=usage,
            # its workers may have emitted (and died doing it): the output is closed too
            closes=order,
        )
        if running is not None:
            await self.d.flow.release(running)


def retry_key(order: WorkOrder) -> str:
    """The schedule of one retry: ``retry.<hash of the task id>.<attempt>``."""
    return f"retry.{hashlib.sha256(order.task_id.encode()).hexdigest()[:32]}.{order.attempt}"


def base_of(order: WorkOrder) -> dict[str, Any]:
    """The ids every event of ``order``'s task carries."""
    return {
        "task_id": order.task_id,
        "correlation_id": order.correlation_id,
        "causation_id": order.causation_id,
        "route": order.route,
    }
