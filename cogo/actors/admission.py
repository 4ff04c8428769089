"""Admission: flow control of the routes that have a ``flow`` policy, across every dispatcher.

Why this design (DESIGN §14; the bus objects are in ``cogo.streams.flow``):

- **A held task leaves ``TASKS`` at once.** A dispatcher that claims an attempt of a flow-
  controlled route stores it in the ``FLOW`` stream (``flow.<route>.<priority>.<key>``) and
  acks its submission. Holding it in ``TASKS`` instead would go wrong three ways: a message
  nak'd with a delay again and again counts each redelivery against ``max_deliver`` and ends
  dead-lettered; one held un-acked counts against ``max_ack_pending`` and stops the consumer;
  and a work queue hands out messages in stream order, so a held task would stand in front
  of other keys and routes. In ``FLOW`` a held task spends no attempt and blocks nobody.
- **One admitter per route.** The routes are hashed into partitions leased in the KV bucket
  ``flow`` (``cogo.workflows.leases``: compare-and-set, per-message TTL, balanced across the
  dispatchers that run); the holder of a route's partition alone admits its tasks, from its
  own memory (``cogo.actors.flow``: limits, priorities, keys in turn), so limits hold across
  processes without a compare-and-set per task, and fairness is one queue's order, not a
  negotiation between dispatchers. The admitter sees held tasks through an ordered consumer
  on the route's ``FLOW`` subjects and slots through a watch of the route's slot keys.
- **Slots are on the bus.** Admitting writes the attempt's slot (``slot.<route>.<task>.
  <attempt>``, with a TTL a little past the task's deadline), *then* forwards the attempt
  and its ``execute_enqueued`` (the ids of both are fixed), *then* deletes the held copy.
  Whichever dispatcher handles the attempt's result purges the slot after the result's
  events are stored and before the result is acked, so a dispatcher killed at any point
  leaves a state the next one completes: a redelivered result purges again; a new admitter
  loads the slots and held tasks left behind, re-forwards (de-duplicated) a held task whose
  slot exists, and frees a slot it took anew for an attempt the stream says was forwarded
  already. A worker killed mid-attempt costs nothing extra: JetStream redelivers the
  attempt, which still holds its slot, and its result releases it. A slot whose release
  never comes (its route lost every worker) expires with its task's deadline.
- **Held once, visibly.** A task that a limit keeps waiting gets one ``execute_throttled``
  (``<task>:throttled:<attempt>``, ``data.limit`` names the limit); its ``queue_wait_ms``
  (enqueued, and the worker's result) includes the hold, which ``execute_enqueued`` also
  carries as ``data.held_ms``. A held task past its deadline fails (``assignment.ttl_expired``).
- **Rate across takeovers.** A new admitter starts every key's token bucket empty (the
  one before it may just have spent it), so a move of the route never exceeds the rate.
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

from cogo.actors.flow import Held, RouteFlow
from cogo.config import FlowPolicy
from cogo.errors import MalformedMessage, TtlExpired, UnknownRoute
from cogo.streams.envelope import MSG_ID, WorkOrder, decode_order, encoder
from cogo.streams.events import EXECUTE_THROTTLED, event_message, iso, make_event
from cogo.streams.flow import (
    FLOW_PARTITIONS,
    NOT_FOUND,
    SEQ_NOT_FOUND,
    SLOT_GRACE_S,
    RouteSnapshot,
    Slot,
    decode_slot,
    delete_held_message,
    encode_snapshot,
    held_filter,
    held_msg_id,
    held_subject,
    partition_of,
    release_message,
    slot_key,
    slot_message,
    slot_prefix,
    snapshot_key,
    snapshot_message,
)
from cogo.streams.publisher import Outgoing
from cogo.streams.topology import FLOW, FLOW_BUCKET
from cogo.workflows.leases import PartitionLeases

if TYPE_CHECKING:
    from cogo.actors.dispatcher import ExecutorDispatcher

log = logging.getLogger(__name__)

LEASE_TTL_S = 3  # a dead admitter's routes move after this (whole seconds: Nats-TTL)
ADMIT_BATCH = 128  # attempts admitted per round, at most (one round trip per step each)
IDLE_WAKE_S = 1.0  # an admitter looks again at least this often
SNAPSHOT_EVERY_S = 1.0
SNAPSHOT_REFRESH_S = 10.0  # rewritten this often even when nothing changed (its TTL is 30 s)
ORPHAN_SCAN_S = 10.0  # how often routes without a flow policy are checked for held tasks
RELOAD_PAUSE_S = 1.0


class _HeadAssignment(msgspec.Struct):
    key: str | None = None
    priority: int = 5


class _Head(msgspec.Struct):
    """The fields of a held ``WorkOrder`` admission needs (decoding the rest costs more)."""

    task_id: str
    route: str
    attempt: int
    deadline: float
    assignment: _HeadAssignment


_head_decoder = msgspec.json.Decoder(_Head)


def wait_started(order: WorkOrder) -> float:
    """When the attempt began to wait: its submission, or (a retry) the end of its backoff."""
    return order.not_before if order.attempt > 1 else order.submitted_at


class FlowControl:
    """A dispatcher's part in flow control: holds tasks, admits the routes it has leased."""

    def __init__(self, dispatcher: ExecutorDispatcher) -> None:
        self.d = dispatcher
        self.name = dispatcher.name
        self.leases = PartitionLeases(
            dispatcher.js, dispatcher.name, FLOW_PARTITIONS, LEASE_TTL_S,
            on_gain=self._gained, on_release=self._released, on_lost=self._lost,
            bucket=FLOW_BUCKET,
        )  # fmt: skip
        self.admitters: dict[str, RouteAdmitter] = {}
        self._loop: asyncio.Task[None] | None = None
        self._orphans_at = 0.0

    async def start(self) -> None:
        await self.leases.start()
        self._loop = asyncio.create_task(self._run(), name="flow-control")

    async def stop(self) -> None:
        """Stop admitting (a round in progress finishes) and hand the routes over."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self.leases.stop()  # on_release drains the admitters of every partition
        await asyncio.gather(*(a.stop() for a in list(self.admitters.values())))
        self.admitters.clear()

    # -- on the dispatcher's path -------------------------------------------------------

    async def hold(self, order: WorkOrder) -> None:
        """Hand an attempt of a flow-controlled route to its admitter (through ``FLOW``)."""
        await self.d.publish_all(
            [(held_subject(order), encoder.encode(order), {MSG_ID: held_msg_id(order)})]
        )
        self.d.counters["flow_held"] += 1

    async def release(self, order: WorkOrder) -> None:
        """The attempt's result is handled: free its slot (idempotent)."""
        if order.flow_slot:
            await self.d.publish_all([release_message(order.flow_slot)])

    def limits(self, route: str) -> FlowPolicy:
        """The route's flow limits now (none once its policy drops them or it is forgotten:
        what is still held is then admitted freely)."""
        try:
            return self.d.policies.get(route).flow
        except UnknownRoute:
            return FlowPolicy()

    # -- which routes this process admits ------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus is away for a moment: next round
                log.warning("%s: flow control round failed: %s", self.name, exc)
            await asyncio.sleep(self.leases.tick_s)

    async def _sync(self) -> None:
        """Start an admitter for each flow-controlled route of a partition held here; stop
        those whose route has no limits any more and nothing held."""
        mine = {p for p in self.leases.held if p not in self.leases.releasing}
        for route in self.d.policies.routes():
            if partition_of(route) in mine and self.limits(route).enabled:
                self._ensure(route)
        for route, admitter in list(self.admitters.items()):
            if not self.limits(route).enabled and admitter.idle():
                await self._drop(route, forget=True)
        if time.monotonic() - self._orphans_at > ORPHAN_SCAN_S:
            self._orphans_at = time.monotonic()
            await self._adopt_orphans(mine)

    async def _adopt_orphans(self, mine: set[int]) -> None:
        """Held tasks of a route whose limits were dropped while nobody admitted it."""
        routes = [r for r in self.d.policies.routes()
                  if partition_of(r) in mine and r not in self.admitters]  # fmt: skip
        if not routes or not (await self.d.js.stream_info(FLOW)).state.messages:
            return
        for route in routes:
            info = await self.d.js.stream_info(FLOW, subjects_filter=held_filter(route))
            if info.state.subjects:
                self._ensure(route)

    def _ensure(self, route: str) -> None:
        if route not in self.admitters:
            admitter = self.admitters[route] = RouteAdmitter(self, route)
            admitter.start()

    async def _drop(self, route: str, *, forget: bool = False, abort: bool = False) -> None:
        admitter = self.admitters.pop(route, None)
        if admitter is not None:
            await admitter.stop(abort=abort)
            if forget:  # nothing to show for a route without limits
                with contextlib.suppress(Exception):
                    kv = await self.d.js.key_value(FLOW_BUCKET)
                    await kv.purge(snapshot_key(route))

    async def _gained(self, partitions: list[int]) -> None:
        await self._sync()

    async def _released(self, partitions: list[int]) -> None:
        routes = [r for r in self.admitters if partition_of(r) in partitions]
        await asyncio.gather(*(self._drop(r) for r in routes))

    async def _lost(self, partitions: list[int]) -> None:
        routes = [r for r in self.admitters if partition_of(r) in partitions]
        await asyncio.gather(*(self._drop(r, abort=True) for r in routes))


class RouteAdmitter:
    """Admits one route's held tasks while this process holds the route's partition."""

    def __init__(self, control: FlowControl, route: str) -> None:
        self.c = control
        self.route = route
        self.partition = partition_of(route)
        self.flow: RouteFlow | None = None
        self.counters = control.d.counters
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._round_lock = asyncio.Lock()
        self._snapshot_at = 0.0
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
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def idle(self) -> bool:
        return self.flow is not None and self.flow.waiting == 0

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
                log.warning("%s: admitting %s failed (%s); reloading", self.c.name, self.route,
                            exc)  # fmt: skip
                self.counters["flow_reloads"] += 1
                await asyncio.sleep(RELOAD_PAUSE_S)

    async def _session(self) -> None:
        """One life of the route's state: slots and held tasks loaded from the bus, then
        rounds of admission until this process stops admitting the route."""
        js = self.c.d.js
        flow = RouteFlow(self.c.limits(self.route), time.time())
        kv = await js.key_value(FLOW_BUCKET)
        # slots first: a held task whose slot exists is re-forwarded, not counted again
        watcher = await kv.watch(slot_prefix(self.route) + ">")
        slots_loaded = asyncio.Event()
        follower = asyncio.create_task(self._follow_slots(watcher, flow, slots_loaded))
        held_loaded = asyncio.Event()
        sub = None
        try:
            async with asyncio.timeout(30):
                await slots_loaded.wait()

            async def on_held(msg: Msg) -> None:
                self._on_held(msg, flow, held_loaded)

            sub = await js.subscribe(
                held_filter(self.route), stream=FLOW, ordered_consumer=True, cb=on_held,
                pending_msgs_limit=0, pending_bytes_limit=0,  # the backlog is in memory anyway
            )  # fmt: skip
            if (await sub.consumer_info()).num_pending == 0:
                held_loaded.set()
            async with asyncio.timeout(60):
                await held_loaded.wait()
            self.flow = flow
            while not self._stopping:
                if self._valid():
                    async with self._round_lock:
                        await self._round(flow)
                await self._sleep(flow)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
            with contextlib.suppress(Exception):
                await watcher.stop()
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _follow_slots(self, watcher: Any, flow: RouteFlow, loaded: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:
                loaded.set()
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                flow.slot_released(entry.key)
            else:
                try:
                    slot = decode_slot(entry.value)
                except msgspec.DecodeError:
                    log.error("%s: unreadable slot %s ignored", self.route, entry.key)
                    continue
                flow.slot_taken(entry.key, slot.key, slot.expires_at)
            self._wake.set()

    def _on_held(self, msg: Msg, flow: RouteFlow, loaded: asyncio.Event) -> None:
        meta = msg.metadata
        try:
            head = _head_decoder.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("%s: unreadable held task (FLOW seq %d) left alone: %s",
                      self.route, meta.sequence.stream, exc)  # fmt: skip
        else:
            flow.add(
                Held(
                    seq=meta.sequence.stream, task_id=head.task_id, attempt=head.attempt,
                    key=head.assignment.key or "", priority=head.assignment.priority,
                    deadline=head.deadline, held_at=meta.timestamp.timestamp(),
                    slot=slot_key(self.route, head.task_id, head.attempt), data=msg.data,
                )
            )  # fmt: skip
            self._wake.set()
        if meta.num_pending == 0:
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
        if now - self._snapshot_at >= SNAPSHOT_EVERY_S:
            await self._snapshot(flow, now)

    async def _admit(self, flow: RouteFlow, picks: list[Held], now: float) -> None:
        d = self.c.d
        orders = []
        slots: list[Outgoing] = []
        for held in picks:
            order = msgspec.structs.replace(
                decode_order(held.data), flow_slot=held.slot,
                held_ms=round(max(0.0, now - held.held_at) * 1000.0, 3),
            )  # fmt: skip
            orders.append(order)
            slot = Slot(task_id=held.task_id, attempt=held.attempt, key=held.key,
                        admitted_at=now, expires_at=held.deadline + SLOT_GRACE_S,
                        admitter=d.name)  # fmt: skip
            slots.append(slot_message(held.slot, slot, now))
        # 1. the slots are stored before any attempt goes out: a takeover finds them
        await d.publish_all(slots)
        if not self._valid():  # the lease lapsed meanwhile: the next holder re-forwards
            raise _LeaseLapsed()
        # 2. the attempts and their execute_enqueued (fixed ids: a redo stores nothing twice)
        messages = [m for o in orders for m in d.enqueued_messages(o, since=wait_started(o))]
        acks = await d.publish_all(messages)
        freed: list[Outgoing] = []
        for i, held in enumerate(picks):
            if acks[2 * i].duplicate and not held.redo:
                # it was forwarded before (a killed admitter did not delete it) and its
                # result has released its slot since: the slot just taken is for nothing
                flow.slot_released(held.slot)
                freed.append(release_message(held.slot))
        if freed:
            await d.publish_all(freed)
        # 3. the held copies go
        await self._delete(flow, picks)
        self.counters["flow_admitted"] += len(picks)

    async def _delete(self, flow: RouteFlow, gone: list[Held]) -> None:
        publisher = self.c.d.publisher
        futures = [await publisher.publish(*delete_held_message(h.seq)) for h in gone]
        for held, outcome in zip(gone, await asyncio.gather(*futures, return_exceptions=True),
                                 strict=True):  # fmt: skip
            if isinstance(outcome, nats.js.errors.APIError) and outcome.err_code in (
                NOT_FOUND, SEQ_NOT_FOUND,
            ):  # fmt: skip
                outcome = None  # somebody deleted it already (a takeover's redo)
            if isinstance(outcome, BaseException):
                raise outcome
            flow.forget(held.seq)

    async def _expire(self, flow: RouteFlow, expired: list[Held], now: float) -> None:
        d = self.c.d
        events = []
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
            events.append(d.order_failure(order, error, data={
                "limit": limit, "key": held.key, "priority": held.priority, "held_ms": held_ms,
            }))  # fmt: skip
        if events:
            await d.publish_all([event_message(e) for e in events])
            self.counters["flow_expired"] += len(events)
        await self._delete(flow, expired)

    async def _announce(self, flow: RouteFlow, holds: list[tuple[Held, str]], now: float) -> None:
        d = self.c.d
        messages = []
        for held, limit in holds:
            try:
                order = decode_order(held.data)
            except MalformedMessage:
                continue
            event = make_event(
                EXECUTE_THROTTLED,
                event_id=f"{order.task_id}:throttled:{order.attempt}",
                task_id=order.task_id, correlation_id=order.correlation_id,
                causation_id=order.causation_id, route=order.route, actor=d.name,
                attempt=order.attempt, version=order.version, cohort=order.cohort,
                queue_wait_ms=round(max(0.0, now - wait_started(order)) * 1000.0, 3),
                data={"limit": limit, "key": held.key, "priority": held.priority,
                      "held_at": iso(held.held_at), "limits": flow.limits_dict(),
                      "running": flow.running, "waiting": flow.waiting},
            )  # fmt: skip
            messages.append(event_message(event))
        if messages:
            await d.publish_all(messages)
            self.counters["flow_throttled"] += len(messages)

    async def _snapshot(self, flow: RouteFlow, now: float) -> None:
        rate, keys, omitted = flow.figures(now)
        snapshot = RouteSnapshot(
            route=self.route, admitter=self.c.name, updated_at=0.0, limits=flow.limits_dict(),
            running=flow.running, waiting=flow.waiting, rate_per_s=rate, keys=keys,
            keys_omitted=omitted,
        )  # fmt: skip
        body = encode_snapshot(snapshot)
        if body == self._snapshot_body and now - self._snapshot_at < SNAPSHOT_REFRESH_S:
            return
        self._snapshot_body, self._snapshot_at = body, now
        snapshot = msgspec.structs.replace(snapshot, updated_at=now)
        with contextlib.suppress(nats.errors.Error):  # a view: never worth failing a round
            await self.c.d.publish_all([snapshot_message(snapshot)])


class _LeaseLapsed(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The route's lease ran out during a round: stop admitting it here."""
