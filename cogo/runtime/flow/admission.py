"""Admission: flow control of the routes that have a ``flow`` policy, across every dispatcher.

Why this design (docs/design.md §14; the bus objects are in ``cogo.streams.flow``):

- **A held task leaves ``TASKS`` at once.** A dispatcher that claims an attempt of a flow-
  controlled route stores it in the ``FLOW`` stream (``flow.<route>.<priority>.<key>``) and
  acks its submission. Holding it in ``TASKS`` instead would go wrong three ways: a message
  nak'd with a delay again and again counts each redelivery against ``max_deliver`` and ends
  dead-lettered; one held un-acked counts against ``max_ack_pending`` and stops the consumer;
  and a work queue hands out messages in stream order, so a held task would stand in front
  of other keys and routes. In ``FLOW`` a held task spends no attempt and blocks nobody.
- **One admitter per route.** The routes are hashed into partitions leased in the KV bucket
  ``flow`` (``cogo.streams.leases``: compare-and-set, per-message TTL, balanced across the
  dispatchers that run); the holder of a route's partition alone admits its tasks, from its
  own memory (``cogo.runtime.flow.fairness``: limits, priorities, keys in turn), so limits hold across
  processes without a compare-and-set per task, and fairness is one queue's order, not a
  negotiation between dispatchers. The admitter sees held tasks through an ordered consumer
  on the route's ``FLOW`` subjects and slots through a watch of the route's slot keys.
- **Slots are on the bus.** Admitting records the attempt's slot (``slot.<route>.<task>.
  <attempt>``) in the route's slot log (``cogo.runtime.flow.slotlog``: one record per batch, with
  a TTL a little past the latest deadline in it), *then* forwards the attempt and its
  ``execute_enqueued`` (the ids of both are fixed), *then* deletes the held copy. Whichever
  dispatcher handles the attempt's result frees the slot after the result's events are
  stored and before the result is acked (the admitter's own process with an end in the
  log, another one by purging the slot's key, which the admitter's watch turns into an
  end), so a dispatcher killed at any point leaves a state the next one completes: a
  redelivered result frees it again; a new admitter replays the log, loads the held tasks
  left behind, re-forwards (de-duplicated) a held task whose slot exists, and frees a slot
  it took anew for an attempt the stream says was forwarded already. A worker killed mid-attempt costs nothing extra: JetStream redelivers the
  attempt, which still holds its slot, and its result releases it. A slot whose release
  never comes (its route lost every worker) expires with its task's deadline.
- **Held once, visibly.** A task that a limit keeps waiting gets one ``execute_throttled``
  (``<task>:throttled:<attempt>``, ``data.limit`` names the limit); its ``queue_wait_ms``
  (enqueued, and the worker's result) includes the hold, which ``execute_enqueued`` also
  carries as ``data.held_ms``. A held task past its deadline fails (``assignment.ttl_expired``).
- **At once when nothing waits.** The dispatcher that admits a route admits an attempt it
  claims itself on the spot when nothing of the route waits and its limits allow one more
  (``RouteAdmitter.admit_now``), without the trip through ``FLOW``. Other dispatchers'
  attempts, and everything while some wait, take turns.
- **Slots are logged in batches, not written one by one.** A slot written as a KV entry per
  attempt, then purged, and both delivered back to the admitter's watch, was most of what
  flow control cost a route under its limits; the log costs one record per batch of tasks,
  and the fast path's attempts ride behind their record in the same flush.
- **Rate across takeovers.** A new admitter starts every key's token bucket empty (the
  one before it may just have spent it), so a move of the route never exceeds the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from cogo.aio import cancel_and_wait
from cogo.config import FlowPolicy
from cogo.errors import UnknownRoute
from cogo.runtime.flow.admitter import RouteAdmitter
from cogo.streams.envelope import MSG_ID, WorkOrder, encoder
from cogo.streams.flow import (
    FLOW_PARTITIONS,
    held_filter,
    held_msg_id,
    held_subject,
    partition_of,
    release_message,
    snapshot_key,
)
from cogo.streams.leases import PartitionLeases
from cogo.streams.topology import FLOW, FLOW_BUCKET

if TYPE_CHECKING:
    from cogo.runtime.dispatcher import ExecutorDispatcher

log = logging.getLogger(__name__)

ORPHAN_SCAN_S = 10.0  # how often routes without a flow policy are checked for held tasks


class FlowControl:
    """A dispatcher's part in flow control: holds tasks, admits the routes it has leased."""

    def __init__(self, dispatcher: ExecutorDispatcher) -> None:
        self.d = dispatcher
        self.name = dispatcher.name
        self.leases = PartitionLeases(
            dispatcher.js,
            dispatcher.name,
            FLOW_PARTITIONS,
            dispatcher.config.bus.lease_ttl_s,
            on_gain=self._gained,
            on_release=self._released,
            on_lost=self._lost,
            bucket=FLOW_BUCKET,
        )
        self.admitters: dict[str, RouteAdmitter] = {}
        self._loop: asyncio.Task[None] | None = None
        self._orphans_at = 0.0

    async def start(self) -> None:
        await self.leases.start()
        self._loop = asyncio.create_task(self._run(), name="flow-control")

    async def stop(self) -> None:
        """Stop admitting (a round in progress finishes) and hand the routes over."""
        await cancel_and_wait([self._loop])
        await self.leases.stop()  # on_release drains the admitters of every partition
        await asyncio.gather(*(a.stop() for a in list(self.admitters.values())))
        self.admitters.clear()

    # -- on the dispatcher's path -------------------------------------------------------

    async def hold(self, order: WorkOrder) -> None:
        """Hand an attempt of a flow-controlled route to its admitter (through ``FLOW``), or
        admit it at once when this process admits the route and nothing waits there."""
        admitter = self.admitters.get(order.route)
        if admitter is not None and await admitter.admit_now(order):
            return
        await self.d.publish_all([(held_subject(order), encoder.encode(order), {MSG_ID: held_msg_id(order)})])
        self.d.counters["flow_held"] += 1

    async def release(self, order: WorkOrder) -> None:
        """The attempt's result is handled: free its slot (idempotent)."""
        slot = order.flow_slot
        if not slot:
            return
        admitter = self.admitters.get(order.route)
        if admitter is not None and await admitter.release_here(slot):
            return  # a slot of the log this process admits from: freed in memory and log
        await self.d.publish_all([release_message(slot)])

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
        routes = [r for r in self.d.policies.routes() if partition_of(r) in mine and r not in self.admitters]
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
