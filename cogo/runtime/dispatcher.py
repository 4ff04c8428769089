"""The executor dispatcher: claim -> enforce(``__assignment``) -> publish -> append events.

It consumes these routes:

- ``orchestrator.execute.0``: tasks submitted by users (``TaskMessage``). Whatever its
  headers say, a message here is a submission: its ``__assignment`` is resolved against the
  route's ceilings like any other (a ``Cogo-Kind: retry`` order published here is a fresh
  task, never forwarded as it is);
- ``orchestrator.retry.0``: the retries it scheduled itself (``WorkOrder``), which only
  dispatchers may publish. A retry whose backoff is not over waits as a JetStream message
  schedule (``cogo.streams.schedule``) that the server fires at its due time, not in this
  consumer's ``ack_pending``: a day-long backoff holds no slot, so held retries never stall
  fresh work. A retry is counted only with a valid seal and is re-checked against the
  route's ceilings;
- ``results.<route>`` (stream ``RESULTS``): workers' reports (``WorkResult``), handed to
  ``cogo.runtime.verdicts``, where usage accumulates and retry / backoff / terminal status
  is decided: **the one place retries are decided**. A report counts only from its order's own route subject (which
  only that route's app may publish to under ``--auth``) and, when the dispatcher holds a
  seal key, only with the order exactly as the dispatcher sealed it (``cogo.streams.seal``);
  anything else is dropped and counted as ``forged``. It also consumes the shared subjects
  of older workers (``orchestrator.results.0``, and ``orchestrator.result.0`` on ``TASKS``),
  so results left there by an upgrade still count; and it trims ``RESULTS`` below its
  consumer's ack floor every few seconds.

The dispatcher keeps no task state of its own: each order carries its attempt, deadline and
the usage so far, so any number of dispatcher replicas can share the consumers. Every id it
publishes is deterministic (``<task>:<attempt>`` orders, ``<task>:terminal`` events), so
handling a message twice appends nothing twice.

Attempts of a route with a ``flow`` policy are not forwarded here but held for the route's
admitter (``cogo.runtime.flow.admission``), which forwards them as its limits allow; their slots
are released here, once their result's events are stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from cogo import tracing
from cogo.aio import cancel_and_wait
from cogo.config import Config
from cogo.errors import (
    BypassDenied,
    CogoError,
    MalformedMessage,
    TtlExpired,
    UnknownRoute,
)
from cogo.rollouts.canary import CanaryRouter, subject_of
from cogo.runtime.base import Actor, Defer, Delivery
from cogo.runtime.children import parent_route, pending_children, route_of_parent, tree_usage
from cogo.runtime.deadletter import DeadLetterWatcher
from cogo.runtime.flow.admission import FlowControl
from cogo.runtime.suspension import Suspensions
from cogo.runtime.verdicts import SCHEDULE_AFTER_S, Verdicts, retry_key
from cogo.streams.catalogue import (
    EXECUTE_ENQUEUED,
    ExecuteEnqueued,
)
from cogo.streams.commands import CANCEL_KIND, WAKE_KIND, decode_cancel, decode_wake
from cogo.streams.envelope import (
    EXECUTE_SUBJECT,
    KIND_HEADER,
    MSG_ID,
    PRINCIPAL_HEADER,
    PRINCIPAL_MAC_HEADER,
    RESULT_SUBJECT,
    RESULTS_SUBJECT,
    RETRY_SUBJECT,
    TaskMessage,
    WorkOrder,
    decode_assignment,
    decode_order,
    decode_result,
    decode_task,
    encoder,
    is_route,
    new_id,
    route_of_result,
)
from cogo.streams.events import event_message, iso, order_event
from cogo.streams.policies import PolicyStore, check_ceilings, resolve_assignment
from cogo.streams.publisher import Outgoing
from cogo.streams.schedule import publish_at
from cogo.streams.seal import Sealer, guard_id
from cogo.streams.topology import results_floor, trim_results

RESULT_ROUTES = (RESULTS_SUBJECT, RESULT_SUBJECT)
# how often a dispatcher purges the results it has handled from RESULTS (one purge each)
TRIM_EVERY_S = 5.0

log = logging.getLogger(__name__)


class ExecutorDispatcher(Actor):
    """Enforces each task's assignment, forwards attempts, decides retries, appends events."""

    kind = "dispatcher"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policies = PolicyStore(self.js)
        # under --auth: seals orders and verifies results and retries (cogo.streams.seal)
        self.sealer = Sealer.from_env()
        # rollouts: version and cohort per task, and bypass grants
        self.canary = CanaryRouter(self.js, self.config, self.sealer)
        self.verdicts = Verdicts(self)  # results and terminal events (cogo.runtime.verdicts)
        self.dead_letters = DeadLetterWatcher(self, self.verdicts.report_dead_letter)
        self.flow = FlowControl(self)  # admission of flow-controlled routes
        self.suspensions = Suspensions(self)  # durable agents (cogo.runtime.suspension)
        self._trimmer: asyncio.Task[None] | None = None

    def default_routes(self) -> list[str]:
        return [EXECUTE_SUBJECT, RESULTS_SUBJECT, RESULT_SUBJECT, RETRY_SUBJECT]

    def default_concurrency(self, config: Config) -> int:
        # no user code runs here: a handler waits for stream acks, which `always` queues
        # behind fsyncs, so the in-flight window is what keeps the disk busy
        return config.actors.dispatcher_concurrency

    async def on_start(self) -> None:
        await self.policies.start()
        await self.canary.start()
        await self.dead_letters.start()
        await self.flow.start()
        await self.suspensions.start()
        if RESULTS_SUBJECT in self.routes:
            self._trimmer = asyncio.create_task(self._trim_loop(), name="trim-results")

    async def on_stop(self) -> None:
        await cancel_and_wait([self._trimmer])
        await self.flow.stop()
        await self.dead_letters.stop()
        await self.canary.stop()
        await self.policies.stop()

    async def _trim_loop(self) -> None:
        # purge up to the floor seen one round earlier: a report the server gave up on
        # (max_deliver) sinks below the floor at the next ack, and its advisory's handler
        # must still find it stored (DeadLetterWatcher.dead_letter_seq)
        seen = purged = 0
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            try:
                if seen > purged:
                    await trim_results(self.js, seen)
                    purged = seen
                seen = await results_floor(self.js)
            except Exception as exc:  # server away for a moment: the next round trims it
                log.warning("%s: trimming RESULTS failed: %s", self.name, exc)

    async def handle(self, delivery: Delivery) -> None:
        if delivery.route in RESULT_ROUTES:
            result = decode_result(delivery.data)
            if not self._genuine(result.order, delivery):
                return  # acked and dropped: it must not count, nor free anybody's slot
            with _traced(result.order):
                if result.suspended is not None or result.cancelled:
                    await self.suspensions.on_result(result)
                else:
                    token = tree_usage.set(result.tree_usage)
                    orphans = pending_children.set(result.children)
                    parent = parent_route.set(route_of_parent(result.order))
                    try:
                        await self.verdicts.on_result(result, delivery)
                    finally:
                        tree_usage.reset(token)
                        pending_children.reset(orphans)
                        parent_route.reset(parent)
                    if result.durable:
                        await self.suspensions.forget(result.order.task_id)
            # after the result's events are stored, before it is acked: a redelivery frees
            # the slot again (harmless), and no next attempt starts before the last one ended
            await self.flow.release(result.order)
            return
        if delivery.route == RETRY_SUBJECT:  # its own queue: retries, wake-ups, cancels
            kind = delivery.headers.get(KIND_HEADER)
            if kind == WAKE_KIND:
                await self.suspensions.on_wake(decode_wake(delivery.data))
            elif kind == CANCEL_KIND:
                await self.suspensions.on_cancel(decode_cancel(delivery.data))
            else:
                order = decode_order(delivery.data)
                if self._genuine(order, delivery):
                    with _traced(order):
                        await self._on_retry(order)
            return
        # the public submit subject: a submission whatever its headers say (a retry or a
        # command published here is a fresh task, its assignment resolved like any other)
        await self._on_submit(delivery)

    def _genuine(self, order: WorkOrder, delivery: Delivery) -> bool:
        """Whether a result or retry speaks for its order: on its route's own subject, with
        the dispatcher's seal when there is a key (``cogo.streams.seal``)."""
        subject = delivery.msg.subject
        speaks_for = route_of_result(subject)
        if speaks_for is not None and speaks_for != order.route:
            reason = f"a report on {subject} for a task of {order.route}"
        elif self.sealer is not None and not self.sealer.verify(order):
            reason = f"an order on {subject} that the dispatcher did not seal as it is"
        else:
            return True
        self.counters["forged"] += 1
        log.warning("%s: dropped %s (task %s attempt %s)", self.name, reason, order.task_id[:200], order.attempt)
        return False

    def task_token(self, task_id: str | None) -> str | None:
        return self.sealer.token(task_id) if self.sealer is not None and task_id else None

    def _principal(self, delivery: Delivery, task_id: str) -> str | None:
        """Who submitted the task, as an authenticated front end vouches (the HTTP facade
        signs its principal with the seal key; without a key there is no boundary)."""
        principal = delivery.headers.get(PRINCIPAL_HEADER)
        if not principal:
            return None
        if self.sealer is None:
            return principal
        mac = delivery.headers.get(PRINCIPAL_MAC_HEADER, "")
        return principal if self.sealer.valid_principal(principal, task_id, mac) else None

    # -- submissions -------------------------------------------------------------------

    async def _on_submit(self, delivery: Delivery) -> None:
        try:
            task = decode_task(delivery.data)
        except MalformedMessage as exc:
            await self._report_malformed(delivery, exc)
            raise  # the actor base dead-letters and terminates it
        task_id = task.task_id or delivery.headers.get(MSG_ID) or new_id()
        parent = delivery.headers.get(tracing.TRACEPARENT)
        with tracing.task_scope(task_id=task_id, route=task.route, parent=parent, submitted_at=delivery.published_at):
            await self._dispatch(delivery, task, task_id, parent)

    async def _dispatch(self, delivery: Delivery, task: TaskMessage, task_id: str, parent: str | None) -> None:
        base = {
            "task_id": task_id,
            "correlation_id": task.correlation_id or task_id,
            "causation_id": task.causation_id,
            "route": task.route,
        }
        submitted_at = delivery.published_at
        try:
            policy = await self.policies.lookup(task.route)
            resolved = resolve_assignment(decode_assignment(task.payload), policy)
            deadline = submitted_at + resolved.ttl_ms / 1000.0
            if time.time() > deadline:
                raise TtlExpired(
                    f"task waited {delivery.queue_wait_ms:.0f} ms for the dispatcher, past its ttl_ms={resolved.ttl_ms}"
                )
        except CogoError as exc:
            await self.verdicts.fail(base, exc.code, str(exc), attempt=0, detail=exc.detail)
            return
        order = WorkOrder(
            task_id=task_id,
            route=task.route,
            attempt=1,
            payload=task.payload,
            assignment=resolved,
            submitted_at=submitted_at,
            deadline=deadline,
            correlation_id=task.correlation_id or task_id,
            causation_id=task.causation_id,
            traceparent=parent,
        )
        try:
            order = await self.canary.route(
                order, policy, actor=self.name, principal=self._principal(delivery, task_id)
            )
        except BypassDenied as exc:
            await self.verdicts.fail(base, exc.code, str(exc), attempt=0, detail=exc.detail)
            return
        if policy.flow.enabled:
            await self.flow.hold(order)  # its admitter forwards it (cogo.runtime.flow.admission)
            return
        await self._forward(order, submitted_at=submitted_at)

    async def _report_malformed(self, delivery: Delivery, exc: MalformedMessage) -> None:
        # keep whatever ids we can read so the submitter can find its failure
        task_id = f"malformed:{delivery.seq}"
        route = None
        try:
            raw = msgspec.json.decode(delivery.data)
            if isinstance(raw, dict):
                if isinstance(raw.get("task_id"), str) and raw["task_id"]:
                    task_id = raw["task_id"][:200]
                if isinstance(raw.get("route"), str) and is_route(raw["route"]):
                    route = raw["route"]  # the event's subject: never a wildcard
        except msgspec.DecodeError:
            pass
        base = {"task_id": task_id, "correlation_id": task_id, "route": route}
        await self.verdicts.fail(base, exc.code, str(exc), attempt=0, detail=exc.detail)

    async def _forward(self, order: WorkOrder, *, submitted_at: float) -> None:
        """Publish one attempt to the task's route and record ``execute_enqueued``."""
        # Order and event go out together, one round trip instead of two; the submission is
        # acked only once both are stored. If the order is refused, the handler fails, the
        # submission is redelivered and the event's fixed id keeps it from being appended twice.
        ack, _ = await self.publish_all(self.enqueued_messages(order, since=submitted_at))
        if ack.duplicate and order.attempt == 1:
            self.counters["duplicates"] += 1

    def enqueued_messages(self, order: WorkOrder, *, since: float) -> list[Outgoing]:
        """The attempt for its route and its ``execute_enqueued`` (queue wait from ``since``)."""
        if self.sealer is not None:
            order = self.sealer.seal(order)
        data = ExecuteEnqueued(
            submitted_at=iso(order.submitted_at),
            deadline=iso(order.deadline),
            assignment=order.assignment,
            held_ms=order.held_ms if order.flow_slot else None,
        )
        event = order_event(
            EXECUTE_ENQUEUED,
            order,
            event_id=f"{order.task_id}:enqueued:{order.attempt}",
            actor=self.name,
            queue_wait_ms=round(max(0.0, time.time() - since) * 1000.0, 3),
            data=data,
        )
        headers = {MSG_ID: guard_id(order.token, f"{order.task_id}:{order.attempt}")}
        if tracing.enabled():  # the attempt's parent: the task span
            headers[tracing.TRACEPARENT] = tracing.task_traceparent(order.task_id, order.traceparent)
        return [
            (subject_of(order), encoder.encode(order), headers),
            event_message(event, order.token),
        ]

    async def _on_retry(self, order: WorkOrder) -> None:
        now = time.time()
        if order.not_before - now > SCHEDULE_AFTER_S:
            # early (a dispatcher's clock apart): wait as a schedule, not in this consumer;
            # under an id of its own, or the first schedule's id would drop it as a repeat
            _, data, headers = self.verdicts.retry_message(order, now, again=True)
            await publish_at(
                self.js, key=retry_key(order), target=RETRY_SUBJECT, data=data, at=order.not_before, headers=headers
            )
            return
        if now < order.not_before:
            raise Defer(order.not_before - now)  # a moment early: hold it back
        try:  # ceilings may have been lowered since; a sealed retry carries its granted bypass
            check_ceilings(order.assignment, self.policies.get(order.route), order.bypass)
        except UnknownRoute:
            pass  # forgotten since: its retry goes out as before
        except CogoError as exc:
            await self.verdicts.terminal(self.verdicts.order_failure(order, exc), order if order.emitted else None)
            return
        if now > order.deadline:
            err = TtlExpired(f"task reached its ttl_ms={order.assignment.ttl_ms} before attempt {order.attempt}")
            await self.verdicts.terminal(self.verdicts.order_failure(order, err), order if order.emitted else None)
            return
        if self._flow_enabled(order.route):
            await self.flow.hold(order)
            return
        await self._forward(order, submitted_at=order.not_before)

    def _flow_enabled(self, route: str) -> bool:
        try:
            return self.policies.get(route).flow.enabled
        except UnknownRoute:  # forgotten since: its retry goes out as before
            return False


def _traced(order: WorkOrder) -> Any:
    """The dispatcher handling a message of ``order``'s task (``cogo.tracing``)."""
    return tracing.task_scope(
        task_id=order.task_id,
        route=order.route,
        parent=order.traceparent,
        submitted_at=order.submitted_at,
    )
