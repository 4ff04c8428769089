"""Suspended tasks, the dispatcher's side: suspend, wake, resume, cancel.

A worker whose handler waits for something not yet journaled reports a *suspended* run
(``WorkResult.suspended``: what it waits for). The dispatcher then records the task in the KV
bucket ``suspensions`` (one key per task: ``Record``), appends ``execute_suspended`` and,
when a timer, a signal's timeout or the task's TTL is due, leaves a JetStream message
schedule (``cogo.streams.schedule``) that publishes a wake-up at that time. The task's
message was acked and its flow slot released: nothing holds it in any process.

Wake-ups are commands on the dispatcher's queue (``cogo.streams.commands``) with
``Cogo-Kind: wake``: signals from ``Client.signal`` / HTTP / CLI, ``<child>:wake`` from a
child's terminal event (``cogo.runtime.children``, published with it), the schedule's for timers.
Handling one appends its journal entry (``task_signaled`` / ``call_completed``, fixed ids
guarded by the task's token) on the task's route's subject (its record's route, else the
one the command names; when neither is known the entry waits in the record until the run
suspends) and then, by compare-and-set on the record, either resumes
the task (its attempt re-published to its route as ``<task>:<attempt>:resume:<n>``, plus
``execute_resumed``) or, while the task still runs, notes the arrival so that the run's
suspension, if it comes, resumes at once. Every step is idempotent and the command is acked
last, so a dispatcher killed anywhere in between redoes it and appends nothing twice (a
wake-up delivered again that finds the record it already changed sends what the change
causes once more); two dispatchers racing are serialized by the record's revision.

Resumed runs are forwarded directly to their route (not through flow-control admission).

Cancellation (``Cogo-Kind: cancel``): the record becomes ``cancelled`` (later wake-ups and
suspensions of the task are dropped), running handlers hear ``cogo.tasks.cancel``, every
child the task started that has not ended is cancelled by the same command, then
``execute_cancelled`` is appended under the task's terminal id (so a finished task's
outcome stands, and the attempt still running is fenced off when it reports).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from cogo.errors import (
    TaskCancelled,
    TtlExpired,
)
from cogo.rollouts.canary import subject_of
from cogo.runtime import records
from cogo.runtime.children import started_children
from cogo.runtime.records import Record, record_key
from cogo.sdk.steps import durable_subject
from cogo.streams.budget import over_budget
from cogo.streams.catalogue import (
    CALL_COMPLETED,
    EXECUTE_CANCELLED,
    EXECUTE_RESUMED,
    EXECUTE_SUSPENDED,
    TASK_SIGNALED,
    ExecuteCancelled,
    ExecuteResumed,
    ExecuteSuspended,
    TaskSignaled,
)
from cogo.streams.commands import (
    CANCEL_SUBJECT,
    COMMAND_SUBJECT,
    WAKE_KIND,
    CancelRequest,
    Wake,
    cancel_message,
)
from cogo.streams.envelope import (
    KIND_HEADER,
    MSG_ID,
    Usage,
    WorkOrder,
    WorkResult,
    encoder,
)
from cogo.streams.events import (
    Event,
    encode_event,
    event_message,
    make_event,
    order_event,
)
from cogo.streams.schedule import publish_at
from cogo.streams.seal import guard_id
from cogo.streams.topology import SUSPENSION_BUCKET

if TYPE_CHECKING:
    from cogo.runtime.dispatcher import ExecutorDispatcher

CAS_ATTEMPTS = 20
log = logging.getLogger(__name__)


class Suspensions:
    """The dispatcher's suspended tasks (see the module docstring)."""

    def __init__(self, dispatcher: ExecutorDispatcher) -> None:
        self.d = dispatcher
        self._kv: Any = None

    async def start(self) -> None:
        self._kv = await self.d.js.key_value(SUSPENSION_BUCKET)

    # -- the record ----------------------------------------------------------------------

    async def _get(self, key: str) -> tuple[Record | None, int]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return None, entry.revision or 0
        return records.record_decoder.decode(entry.value), entry.revision

    async def _put(self, key: str, record: Record, revision: int) -> bool:
        """Compare-and-set; False when another handler changed the record first.

        A record with no run in it (wake-ups noted while the task ran, or after it ended:
        its children's ends once it was cancelled) lives ``[runtime] arrival_ttl_s`` unless
        a run suspends into it first; nothing else would ever remove it."""
        ttl = self.d.config.runtime.arrival_ttl_s if record.order is None and record.state == "running" else None
        try:
            if revision == 0:
                await self._kv.create(key, encoder.encode(record), msg_ttl=ttl)
            elif ttl is None:
                await self._kv.update(key, encoder.encode(record), last=revision)
            else:  # KeyValue.update takes no TTL: the same compare-and-set, by hand
                expect = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
                subject = f"$KV.{SUSPENSION_BUCKET}.{key}"
                await self.d.js.publish(subject, encoder.encode(record), headers=expect, msg_ttl=ttl)
        except KeyWrongLastSequenceError:
            return False
        except Exception as exc:  # "wrong last sequence" arrives as a plain API error too
            if "wrong last sequence" in str(exc).lower() or "10071" in str(exc):
                return False
            raise
        return True

    async def forget(self, task_id: str) -> None:
        """The task ended: drop its record (nothing will wake it any more) and, if it ever
        suspended, its schedule (replaced by one due now, which wakes nothing)."""
        key = record_key(task_id)
        record, _ = await self._get(key)
        if record is None:
            return
        with contextlib.suppress(KeyNotFoundError):
            await self._kv.purge(key)
        if record.order is not None:
            await self._disarm(task_id)

    async def _disarm(self, task_id: str) -> None:
        # a purge of its subject would need the right to purge TASKS; a replacement does not
        wake = Wake(task_id=task_id, kind="timer")
        await publish_at(
            self.d.js,
            key=record_key(task_id),
            target=COMMAND_SUBJECT,
            data=encoder.encode(wake),
            at=time.time(),
            headers={KIND_HEADER: WAKE_KIND},
        )

    # -- a run suspended or was cancelled ------------------------------------------------

    async def on_result(self, r: WorkResult) -> None:
        order = r.order
        if r.cancelled:
            # the cancel command appended the terminal event; its children go too
            await self._cancel_children(order.task_id, r.children or [], order.route)
            return
        assert r.suspended is not None
        total = order.usage_so_far + r.usage
        below = r.tree_usage or Usage()
        a = order.assignment
        budget = over_budget(total + below, a, "in the task's tree")
        if budget is not None:
            await self._end(order, budget, usage=total, children=r.children)
            return
        # kept without its tokens and seal (the record is readable by every app, which
        # checks it for a cancel): a resumed run's order is sealed anew (``_effects``)
        parked = msgspec.structs.replace(
            order,
            usage_so_far=total,
            flow_slot=None,
            held_ms=0.0,
            emitted=order.emitted or r.emitted,
            token=None,
            out_token=None,
            seal=None,
        )
        key = record_key(order.task_id)
        for _ in range(CAS_ATTEMPTS):
            record, revision = await self._get(key)
            if record is not None and (
                record.state == "cancelled"
                or record.run > order.resumes
                or (record.run == order.resumes and record.state == "suspended")
            ):
                if record.state != "cancelled":  # a redelivered report: redo what it caused
                    await self._effects(record)
                return
            for wake in record.pending if record is not None else []:
                await self._journal_wake(wake, order.route)  # idempotent (fixed ids)
            now = time.time()
            if now > order.deadline:
                await self._end(
                    parked,
                    TtlExpired(f"task reached its ttl_ms={a.ttl_ms} while it waited"),
                    usage=total,
                    children=r.children,
                )
                return
            suspended = Record(state="suspended", run=order.resumes, order=parked, waiting=list(r.suspended))
            woken = records.woken(suspended, record.arrived if record is not None else [], now)
            if woken is not None:
                new = records.resumed(suspended, woken)
                if await self._put(key, new, revision):
                    await self._suspended_event(suspended)
                    await self._effects(new)
                    return
                continue
            if await self._put(key, suspended, revision):
                await self._effects(suspended)
                return
        raise RuntimeError(f"suspension of {order.task_id}: the record kept changing")

    # -- wake-ups ------------------------------------------------------------------------

    async def _journal_wake(self, wake: Wake, route: str) -> None:
        """A signal's or a child's end's journal entry, on the task's ``route``'s subject."""
        if wake.kind == "signal":
            entry = make_event(
                TASK_SIGNALED,
                event_id=f"{wake.task_id}:signal:{wake.name}",
                task_id=wake.task_id,
                correlation_id=wake.correlation_id or wake.task_id,
                route=route,
                actor=self.d.name,
                data=TaskSignaled(name=wake.name, data=wake.data),
            )
            await self._journal(entry)
        elif wake.kind == "call" and wake.done is not None:
            entry = make_event(
                CALL_COMPLETED,
                event_id=f"{wake.task_id}:call:{wake.name}:done",
                task_id=wake.task_id,
                correlation_id=wake.correlation_id or wake.task_id,
                route=route,
                actor=self.d.name,
                data=wake.done,
            )
            await self._journal(entry)

    async def on_wake(self, wake: Wake) -> None:
        arrival = records.arrival(wake.kind, wake.name)
        key = record_key(wake.task_id)
        journaled = False
        for _ in range(CAS_ATTEMPTS):
            record, revision = await self._get(key)
            # the task's route: its record's (the dispatcher's own), else what the sender
            # said (the client looked it up; a child carries its parent's)
            route = record.order.route if record and record.order else wake.route
            entry = wake.kind != "timer"
            if entry and route and not journaled:
                await self._journal_wake(wake, route)
                journaled = True
            # not known yet (the task runs): kept in its record, journaled when it suspends
            keep = [wake] if entry and not journaled else []
            if record is None:
                if wake.kind == "timer":
                    return  # the task runs (or ended): it watches the clock itself
                new = Record(state="running", arrived=[arrival], pending=keep)
                if await self._put(key, new, revision):
                    return
                continue
            if record.state == "cancelled":
                if record.woken_by == records.EXPIRED and record.order is not None:
                    await self._expired(record.order, record)  # its handler may have died
                return
            if record.state == "running":
                if record.order is not None and records.resumed_by(record, wake):
                    # this wake-up resumed the run and is delivered again: its handler may
                    # have died between the record's update and the resumed run's publish
                    await self._effects(record)  # fixed ids: what went out is dropped
                    return
                if wake.kind == "timer" or arrival in record.arrived:
                    return
                new = msgspec.structs.replace(
                    record, arrived=[*record.arrived, arrival], pending=[*record.pending, *keep]
                )
                if await self._put(key, new, revision):
                    return
                continue
            assert record.order is not None
            now = time.time()
            if now > record.order.deadline:
                await self._expire(record, key, revision)
                return
            woken = records.woken(record, [arrival], now)
            if woken is None:
                if wake.kind == "timer":  # early by a clock: arm it again
                    await self._schedule(record)
                return
            new = records.resumed(record, woken)
            if await self._put(key, new, revision):
                await self._effects(new)
                return
        raise RuntimeError(f"wake-up of {wake.task_id}: the record kept changing")

    async def _expire(self, record: Record, key: str, revision: int) -> None:
        assert record.order is not None
        # cancelled, so that no wake-up resumes it any more; marked, so that a redelivered
        # wake-up ends it if this handler dies before the terminal event is stored
        ended = msgspec.structs.replace(record, state="cancelled", woken_by=records.EXPIRED)
        if not await self._put(key, ended, revision):
            return  # changed meanwhile: the next wake-up decides
        await self._expired(record.order, record)

    async def _expired(self, order: WorkOrder, record: Record) -> None:
        error = TtlExpired(f"task reached its ttl_ms={order.assignment.ttl_ms} while it waited")
        children = [w.name for w in record.waiting if w.kind == "call"]
        await self._end(order, error, usage=order.usage_so_far, children=children)

    async def _end(self, order: WorkOrder, error: Any, *, usage: Usage, children: list[str] | None) -> None:
        """A suspended (or suspending) task fails: its children are cancelled first."""
        await self._cancel_children(order.task_id, children or [], order.route)
        event = self.d.verdicts.order_failure(
            msgspec.structs.replace(order, attempt=order.attempt + 1, usage_so_far=usage), error
        )
        await self.d.publish_all(self.d.verdicts.terminal_messages(event, order if order.emitted else None))
        await self.forget(order.task_id)

    async def _journal(self, event: Event) -> None:
        assert event.task_id is not None and event.route is not None
        # under an id guarded by the task's token: an app cannot publish it first
        msg_id = guard_id(self.d.task_token(event.task_id), event.event_id)
        await self.d.publish_all(
            [(durable_subject(event.type, event.route, event.task_id), encode_event(event), {MSG_ID: msg_id})]
        )

    async def _suspended_event(self, record: Record) -> None:
        assert record.order is not None
        order = record.order
        event = order_event(
            EXECUTE_SUSPENDED,
            order,
            event_id=f"{order.task_id}:suspended:{order.attempt}:{record.run}",
            actor=self.d.name,
            usage=order.usage_so_far,
            data=ExecuteSuspended(waiting_for=record.waiting, resumes=record.run),
        )
        await self.d.publish_all([event_message(event)])

    async def _schedule(self, record: Record) -> None:
        assert record.order is not None
        order = record.order
        wake = Wake(task_id=order.task_id, kind="timer")
        await publish_at(
            self.d.js,
            key=record_key(order.task_id),
            target=COMMAND_SUBJECT,
            data=encoder.encode(wake),
            at=records.due(record.waiting, order.deadline),
            headers={KIND_HEADER: WAKE_KIND},
        )

    async def _effects(self, record: Record) -> None:
        """What a record's state causes (idempotent: a redelivered command redoes it)."""
        order = record.order
        if order is None:
            return
        if record.state == "suspended":
            await self._schedule(record)
            await self._suspended_event(record)
        elif record.state == "running":
            event = order_event(
                EXECUTE_RESUMED,
                order,
                event_id=f"{order.task_id}:resumed:{order.attempt}:{order.resumes}",
                actor=self.d.name,
                data=ExecuteResumed(resumes=order.resumes, woken_by=record.woken_by or ""),
            )
            if self.d.sealer is not None:  # the resumed run's order, sealed as it now is
                order = self.d.sealer.seal(order)
            msg_id = guard_id(order.token, f"{order.task_id}:{order.attempt}:resume:{order.resumes}")
            await self.d.publish_all(
                [
                    (subject_of(order), encoder.encode(order), {MSG_ID: msg_id}),
                    event_message(event, order.token),
                ]
            )
            self.d.counters["resumed"] += 1

    # -- cancellation --------------------------------------------------------------------

    async def on_cancel(self, request: CancelRequest) -> None:
        key = record_key(request.task_id)
        order: WorkOrder | None = None
        children: list[str] = []
        for _ in range(CAS_ATTEMPTS):
            record, revision = await self._get(key)
            if record is not None and record.order is not None:
                order = record.order
            if record is not None and record.state == "cancelled":
                break
            if record is not None and record.state == "suspended":
                children = [w.name for w in record.waiting if w.kind == "call"]
            new = Record(state="cancelled", run=record.run if record else -1, order=order)
            if await self._put(key, new, revision):
                if record is not None and record.state == "suspended":
                    await self._disarm(request.task_id)
                break
        # a running handler hears it; one that misses it is fenced by the terminal event
        await self.d.nc.publish(CANCEL_SUBJECT, request.task_id.encode())
        since = order.submitted_at - 60.0 if order is not None else request.since
        route = order.route if order is not None else request.route
        started = await started_children(self.d.nc, self.d.js, request.task_id, route, since)
        await self._cancel_children(request.task_id, sorted(set(children) | set(started)), route, since, started)
        base: dict[str, Any] = {
            "task_id": request.task_id,
            "correlation_id": order.correlation_id if order else request.task_id,
            "causation_id": order.causation_id if order else None,
            "route": route,
        }
        if base["causation_id"] is None and "/" in request.task_id:
            # a child cancelled before it ever suspended: its parent must still hear of it
            base["causation_id"] = request.parent_id or request.task_id.rsplit("/", 1)[0]
        event = make_event(
            EXECUTE_CANCELLED,
            event_id=f"{request.task_id}:terminal",
            attempt=order.attempt if order else None,
            usage=order.usage_so_far if order else None,
            error_code=TaskCancelled.code,
            error=f"cancelled: {request.reason}" if request.reason else "cancelled",
            actor=self.d.name,
            data=ExecuteCancelled(reason=request.reason, parent_id=request.parent_id),
            **base,
        )
        (ack, *_) = await self.d.publish_all(
            self.d.verdicts.terminal_messages(event, order if order is not None and order.emitted else None)
        )
        self.d.counters["cancelled" if not ack.duplicate else "duplicate_terminal"] += 1

    async def _cancel_children(
        self,
        task_id: str,
        children: list[str],
        route: str | None,
        since: float | None = None,
        routes: dict[str, str] | None = None,
    ) -> None:
        """Cancel ``children`` (``routes``: each one's route, where its journal says)."""
        routes = routes or {}
        if children:
            await self.d.publish_all(
                [
                    cancel_message(
                        c, f"parent {task_id} was cancelled", parent_id=task_id, since=since, route=routes.get(c)
                    )
                    for c in children
                ]
            )
