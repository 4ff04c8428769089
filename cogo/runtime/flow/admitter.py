"""One route's admission while this dispatcher holds the route's partition.

How and why it works is told in ``cogo.runtime.flow.admission``; in short, a session loads the
route's slots (its slot log, then a KV watch of the slots' keys, whose purges are releases
by other dispatchers) and held tasks (an ordered consumer on its ``FLOW`` subjects), then
admits in rounds: expire held tasks past their deadline, pick what may start
(``cogo.runtime.flow.fairness``), record the picks' slots in the log, forward them with their
``execute_enqueued``, delete their held copies, announce the new holds
(``execute_throttled``), and now and then write what it sees for ``GET /api/flow``. Any
failure ends the session; the next one loads the route from the bus again.

The fast path (``admit_now``): an attempt that this dispatcher claims for a route it admits,
while nothing of the route waits and its limits allow one more, is admitted on the spot,
without the hold in ``FLOW``, its delivery back to the admitter and its deletion: its slot
is counted in memory, and the attempt rides behind the slot log's next record. When this
process handles an attempt's result, its slot is freed in memory and in the log
(``release_here``), not purged as a key that the admitter's own watch would deliver back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from cogo.aio import cancel_and_wait
from cogo.errors import MalformedMessage, TtlExpired
from cogo.runtime.flow.fairness import Held, RouteFlow
from cogo.runtime.flow.held import held_of, wait_started
from cogo.runtime.flow.slotlog import KV_STREAM, SlotLog
from cogo.streams.catalogue import EXECUTE_THROTTLED, ExecuteThrottled
from cogo.streams.envelope import WorkOrder, decode_order, new_id
from cogo.streams.events import event_message, iso, order_event
from cogo.streams.flow import (
    NOT_FOUND,
    SEQ_NOT_FOUND,
    SLOT_GRACE_S,
    RouteSnapshot,
    SlotLogRecord,
    decode_log_record,
    decode_slot,
    delete_held_message,
    encode_snapshot,
    held_filter,
    log_filter,
    partition_of,
    slot_key,
    slot_prefix,
    snapshot_message,
)
from cogo.streams.publisher import Outgoing
from cogo.streams.topology import FLOW, FLOW_BUCKET

if TYPE_CHECKING:
    from cogo.runtime.flow.admission import FlowControl

log = logging.getLogger(__name__)

ADMIT_BATCH = 128  # attempts admitted per round, at most (one round trip per step each)
# an admitter looks again at least this often, and sees then whether what it shows on
# GET /api/flow changed: a view at most about half a second old
IDLE_WAKE_S = 0.5
SNAPSHOT_EVERY_S = 0.5
SNAPSHOT_REFRESH_S = 10.0  # rewritten this often even when nothing changed (its TTL is 30 s)
RELOAD_PAUSE_S = 1.0


class RouteAdmitter:
    """Admits one route's held tasks while this process holds the route's partition."""

    def __init__(self, control: FlowControl, route: str) -> None:
        self.c = control
        self.route = route
        self.partition = partition_of(route)
        self.flow: RouteFlow | None = None
        self._log: SlotLog | None = None  # the session's slot log
        self.counters = control.d.counters
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._round_lock = asyncio.Lock()
        self._checked_at = 0.0  # when the snapshot was last computed
        self._snapshot_at = 0.0  # ... and last written
        self._snapshot_body = b""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"admit {self.route}")

    async def stop(self, *, abort: bool = False) -> None:
        """Stop after the round in progress (``abort``: at once; the lease is gone)."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        if abort:
            await cancel_and_wait([self._task])
            return
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def idle(self) -> bool:
        return self.flow is not None and self.flow.waiting == 0

    async def admit_now(self, order: WorkOrder) -> bool:
        """Admit ``order`` at once if nothing waits and the limits allow it (the fast path);
        False: hold it in ``FLOW`` like any other."""
        flow, slots = self.flow, self._log
        if flow is None or slots is None or self._task is None or self._task.done():
            return False
        if not self._valid():
            return False
        now = time.time()
        key = order.assignment.key or ""
        slot = slot_key(self.route, order.task_id, order.attempt)
        expires_at = order.deadline + SLOT_GRACE_S
        fresh = not flow.has_slot(slot)  # else a redelivered submission: counted already
        if not flow.try_start(slot, key, expires_at, now):
            return False
        d = self.c.d
        order = msgspec.structs.replace(order, flow_slot=slot, held_ms=0.0)
        messages = d.enqueued_messages(order, since=wait_started(order))
        if fresh:
            # the slot's record, then the attempt and its event right behind it. Whatever
            # fails, the slot stays counted (the attempt may be out): the redelivered
            # submission finds it and forwards the attempt again (de-duplicated)
            ack, _ = await slots.start(slot, key, expires_at, messages)
        else:
            ack, _ = await d.publish_all(messages)
        if ack.duplicate and fresh:
            # forwarded before (a redelivered submission) and maybe ended since: free the
            # slot taken anew, as a round does
            freed = slots.end(slot, expires_at)
            flow.slot_released(slot)
            await freed
        self.counters["flow_admitted"] += 1
        self.counters["flow_admitted_at_once"] += 1
        return True

    async def release_here(self, slot: str) -> bool:
        """Free ``slot`` in memory and in the slot log if this admitter counts it there (the
        result was handled in this process); False: it is a KV entry, or not counted here."""
        flow, slots = self.flow, self._log
        if flow is None or slots is None:
            return False
        expires_at = flow.logged_expiry(slot)
        if expires_at is None:
            return False
        stored = slots.end(slot, expires_at)  # logged before anything can take its place
        flow.slot_released(slot)
        if flow.waiting:
            self._wake.set()
        await stored
        return True

    def _valid(self) -> bool:
        return not self._stopping and self.c.leases.valid(self.partition)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # whatever went wrong, the bus has the truth: load the route from it again
                log.warning("%s: admitting %s failed (%s); reloading", self.c.name, self.route, exc)
                self.counters["flow_reloads"] += 1
                await asyncio.sleep(RELOAD_PAUSE_S)

    async def _session(self) -> None:
        """One life of the route's state: slots and held tasks loaded from the bus, then
        rounds of admission until this process stops admitting the route."""
        js = self.c.d.js
        flow = RouteFlow(self.c.limits(self.route), time.time())
        slots = SlotLog(self.c.d.publisher, js, self.route, new_id(), flow.logged_slots, self._valid)
        kv = await js.key_value(FLOW_BUCKET)
        # the slot log first, then the KV slots (whose purge markers free logged slots that
        # other dispatchers released), then held tasks: a held task whose slot exists is
        # re-forwarded, not counted again
        log_loaded = asyncio.Event()

        async def on_record(msg: Msg) -> None:
            self._on_record(msg, flow, slots, log_loaded)

        records = await js.subscribe(
            log_filter(self.route),
            stream=KV_STREAM,
            ordered_consumer=True,
            cb=on_record,
            pending_msgs_limit=0,
            pending_bytes_limit=0,
        )
        watcher = follower = sub = None
        held_loaded = asyncio.Event()
        try:
            if (await records.consumer_info()).num_pending == 0:
                log_loaded.set()
            async with asyncio.timeout(60):
                await log_loaded.wait()
            watcher = await kv.watch(slot_prefix(self.route) + ">")
            slots_loaded = asyncio.Event()
            follower = asyncio.create_task(self._follow_slots(watcher, flow, slots, slots_loaded))
            async with asyncio.timeout(30):
                await slots_loaded.wait()

            async def on_held(msg: Msg) -> None:
                self._on_held(msg, flow, held_loaded)

            sub = await js.subscribe(
                held_filter(self.route),
                stream=FLOW,
                ordered_consumer=True,
                cb=on_held,
                pending_msgs_limit=0,
                pending_bytes_limit=0,  # the backlog is in memory anyway
            )
            if (await sub.consumer_info()).num_pending == 0:
                held_loaded.set()
            async with asyncio.timeout(60):
                await held_loaded.wait()
            self.flow, self._log = flow, slots
            while not self._stopping:
                if follower.done():  # the watch ended: releases would go unseen from here
                    raise RuntimeError("the watch of the route's slots ended")
                if slots.failed is not None:  # memory and log may differ: load again
                    raise RuntimeError(f"the slot log was not written: {slots.failed}")
                if self._valid():
                    async with self._round_lock:
                        await self._round(flow)
                    slots.tick()
                await self._sleep(flow)
        finally:
            self.flow = self._log = None
            await slots.close()
            await cancel_and_wait([follower])
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py: unannotated
            for subscription in (records, sub):
                if subscription is not None:
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()

    def _on_record(self, msg: Msg, flow: RouteFlow, slots: SlotLog, loaded: asyncio.Event) -> None:
        """A record of the route's slot log; another session's counts (ours are counted)."""
        meta = msg.metadata
        if msg.data:  # not a marker of a record that expired
            try:
                record = decode_log_record(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.error("%s: unreadable slot log record (seq %d) ignored: %s", self.route, meta.sequence.stream, exc)
            else:
                if record.session != slots.session:
                    self._apply(record, flow, slots, live=loaded.is_set())
        slots.read_to(meta.sequence.stream)
        if meta.num_pending == 0:
            loaded.set()

    def _apply(self, record: SlotLogRecord, flow: RouteFlow, slots: SlotLog, *, live: bool) -> None:
        for slot, key, expires_at in record.starts:
            flow.slot_taken(slot, key, expires_at, logged=True)
        ended = []
        for slot in record.ends:
            expiry = flow.logged_expiry(slot)
            if expiry is not None:
                ended.append((slot, expiry))
                flow.slot_released(slot)
        if live:
            # an admitter that has not noticed yet that it lost the route wrote it: ours from
            # here, so that no checkpoint of ours purges it before it is counted there
            slots.note([s for s in record.starts if flow.has_slot(s[0])], ended)
        self._wake.set()

    async def _follow_slots(self, watcher: Any, flow: RouteFlow, slots: SlotLog, loaded: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:
                loaded.set()
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                expires_at = flow.logged_expiry(entry.key)
                flow.slot_released(entry.key)
                if expires_at is not None:
                    # a slot of the log, released by another dispatcher (which purges the
                    # key, as for any slot): its end goes into the log, as if ours
                    slots.note([], [(entry.key, expires_at)])
            elif flow.has_slot(entry.key):
                continue  # ours, counted when it was taken (the fast path's, mostly)
            else:
                try:
                    slot = decode_slot(entry.value)
                except msgspec.DecodeError:
                    log.error("%s: unreadable slot %s ignored", self.route, entry.key)
                    continue
                flow.slot_taken(entry.key, slot.key, slot.expires_at)
            self._wake.set()

    def _on_held(self, msg: Msg, flow: RouteFlow, loaded: asyncio.Event) -> None:
        try:
            flow.add(held_of(msg, self.route))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error(
                "%s: unreadable held task (FLOW seq %d) left alone: %s", self.route, msg.metadata.sequence.stream, exc
            )
        else:
            self._wake.set()
        if msg.metadata.num_pending == 0:
            loaded.set()

    async def _sleep(self, flow: RouteFlow) -> None:
        timeout = IDLE_WAKE_S
        due = flow.next_wake()
        if due is not None:
            timeout = min(timeout, max(0.0, due - time.time()) + 0.001)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    # -- one round ----------------------------------------------------------------------

    async def _round(self, flow: RouteFlow) -> None:
        self._wake.clear()  # what arrives while this round runs wakes the next one
        flow.set_limits(self.c.limits(self.route))
        now = time.time()
        expired = flow.expired(now)
        if expired:
            await self._expire(flow, expired, now)
        while True:
            picks = flow.pick(now, ADMIT_BATCH)
            if not picks:
                break
            await self._admit(flow, picks, now)
            if len(picks) < ADMIT_BATCH or not self._valid():
                break
            now = time.time()
        holds = flow.holds(now)
        if holds:
            await self._announce(flow, holds, now)
        if now - self._checked_at >= SNAPSHOT_EVERY_S:
            await self._snapshot(flow, now)

    async def _admit(self, flow: RouteFlow, picks: list[Held], now: float) -> None:
        d = self.c.d
        slots = self._log
        assert slots is not None  # rounds run once the session is loaded
        orders = []
        taken = []
        for held in picks:
            order = msgspec.structs.replace(
                decode_order(held.data),
                flow_slot=held.slot,
                held_ms=round(max(0.0, now - held.held_at) * 1000.0, 3),
            )
            orders.append(order)
            if not held.redo:  # a redo's slot is counted already (in the log or the bucket)
                expires_at = held.deadline + SLOT_GRACE_S
                flow.log_slot(held.slot)
                taken.append((held.slot, held.key, expires_at))
        # 1. the slots are stored (one record of the slot log) before any attempt goes out:
        # a takeover counts them
        if taken:
            await slots.starts(taken)
        if not self._valid():  # the lease lapsed meanwhile: the next holder re-forwards
            raise _LeaseLapsed()
        # 2. the attempts and their execute_enqueued (fixed ids: a redo stores nothing twice)
        messages = [m for o in orders for m in d.enqueued_messages(o, since=wait_started(o))]
        acks = await d.publish_all(messages)
        freed = []
        for i, held in enumerate(picks):
            if acks[2 * i].duplicate and not held.redo:
                # it was forwarded before (a killed admitter did not delete it) and its
                # result has released its slot since: the slot just taken is for nothing
                freed.append(slots.end(held.slot, held.deadline + SLOT_GRACE_S))
                flow.slot_released(held.slot)
        if freed:
            await asyncio.gather(*freed)
        # 3. the held copies go
        await self._delete(flow, picks)
        self.counters["flow_admitted"] += len(picks)

    async def _delete(self, flow: RouteFlow, gone: list[Held]) -> None:
        publisher = self.c.d.publisher
        futures = [await publisher.publish(*delete_held_message(h.seq)) for h in gone]
        for held, outcome in zip(gone, await asyncio.gather(*futures, return_exceptions=True), strict=True):
            # a NOT_FOUND: somebody deleted it already (a takeover's redo)
            gone_already = isinstance(outcome, nats.js.errors.APIError) and outcome.err_code in (
                NOT_FOUND,
                SEQ_NOT_FOUND,
            )
            if isinstance(outcome, BaseException) and not gone_already:
                raise outcome
            flow.forget(held.seq)

    async def _expire(self, flow: RouteFlow, expired: list[Held], now: float) -> None:
        d = self.c.d
        messages: list[Outgoing] = []
        for held in expired:
            try:
                order = decode_order(held.data)
            except MalformedMessage:
                continue
            limit = flow.reason(held, now) or "flow"
            error = TtlExpired(
                f"held by flow control ({limit}) for {now - held.held_at:.1f} s, past its "
                f"ttl_ms={order.assignment.ttl_ms}"
            )
            held_ms = round((now - held.held_at) * 1000.0, 3)
            event = d.verdicts.order_failure(
                order,
                error,
                data={
                    "limit": limit,
                    "key": held.key,
                    "priority": held.priority,
                    "held_ms": held_ms,
                },
            )
            # a held retry whose earlier attempt wrote output: that output ends here too
            messages += d.verdicts.terminal_messages(event, order if order.emitted else None)
            self.counters["flow_expired"] += 1
        if messages:
            await d.publish_all(messages)
        await self._delete(flow, expired)

    async def _announce(self, flow: RouteFlow, holds: list[tuple[Held, str]], now: float) -> None:
        d = self.c.d
        messages = []
        for held, limit in holds:
            try:
                order = decode_order(held.data)
            except MalformedMessage:
                continue
            event = order_event(
                EXECUTE_THROTTLED,
                order,
                event_id=f"{order.task_id}:throttled:{order.attempt}",
                actor=d.name,
                queue_wait_ms=round(max(0.0, now - wait_started(order)) * 1000.0, 3),
                data=ExecuteThrottled(
                    limit=limit,
                    key=held.key,
                    priority=held.priority,
                    held_at=iso(held.held_at),
                    limits=flow.limits_dict(),
                    running=flow.running,
                    waiting=flow.waiting,
                ),
            )
            messages.append(event_message(event, d.task_token(order.task_id)))
        if messages:
            await d.publish_all(messages)
            self.counters["flow_throttled"] += len(messages)

    async def _snapshot(self, flow: RouteFlow, now: float) -> None:
        self._checked_at = now
        rate, keys, omitted = flow.figures(now)
        snapshot = RouteSnapshot(
            route=self.route,
            admitter=self.c.name,
            updated_at=0.0,
            limits=flow.limits_dict(),
            running=flow.running,
            waiting=flow.waiting,
            rate_per_s=rate,
            keys=keys,
            keys_omitted=omitted,
        )
        body = encode_snapshot(snapshot)
        if body == self._snapshot_body and now - self._snapshot_at < SNAPSHOT_REFRESH_S:
            return
        self._snapshot_body, self._snapshot_at = body, now
        snapshot = msgspec.structs.replace(snapshot, updated_at=now)
        with contextlib.suppress(nats.errors.Error):  # a view: never worth failing a round
            await self.c.d.publish_all([snapshot_message(snapshot)])


class _LeaseLapsed(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The route's lease ran out during a round: stop admitting it here."""
