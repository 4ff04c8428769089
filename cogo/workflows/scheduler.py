"""The scheduler: fires the due ticks of every schedule, exactly once each.

It runs in every orchestrator process and works in the one holding the ``scheduler``
lease (a key of ``orchestrator_leases``, compare-and-set and a TTL, as the partitions'
leases are). Every ``POLL_S`` the holder computes each schedule's due ticks from its cursor
(``cogo.workflows.schedules.due``: the catch-up policy applies to ticks missed while no
scheduler ran), plans the workflow, sends ``StartRun`` for ``<schedule id>:<tick>`` to the
run's partition and moves the cursor with compare-and-set. A crash between the start and
the cursor write fires the tick again after the restart, which starts nothing twice (the
start's ``Nats-Msg-Id``, then the orchestrator's look at the log); a cursor moved by
somebody else (a lease handover) is read again instead of overwritten.

A tick whose workflow cannot be planned (the definition went away, parameters no longer
fit) starts no run: the cursor counts it as ``failed`` with ``last_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.client import JetStreamContext
from pydantic import ValidationError

from cogo.aio import cancel_and_wait
from cogo.config import Config
from cogo.errors import CogoError
from cogo.streams.leases import Lease
from cogo.streams.topology import LEASE_BUCKET
from cogo.workflows.inbox import StartRun, send_command
from cogo.workflows.planner import Plan
from cogo.workflows.schedules import Cursor, Schedule, ScheduleStore, due, run_id_of

log = logging.getLogger(__name__)

POLL_S = 0.5
LEASE_KEY = "scheduler"
PlanRun = Callable[[str, dict[str, Any]], Awaitable[Plan]]


class Scheduler:
    """Fires schedules while this process holds the ``scheduler`` lease."""

    def __init__(self, js: JetStreamContext, name: str, config: Config, plan: PlanRun) -> None:
        self.js = js
        self.name = name
        self.plan = plan
        self.store = ScheduleStore(js)
        self.ttl_s = max(1, math.ceil(config.bus.lease_ttl_s))
        self.schedules: dict[str, Schedule] = {}
        self.counters: dict[str, int] = {"fired": 0, "failed": 0, "skipped": 0}
        self._cursors: dict[str, tuple[Cursor, int]] = {}
        self._lease: Lease | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def leading(self) -> bool:
        return self._lease is not None and self._lease.valid()

    async def start(self) -> None:
        kv = await self.js.key_value(LEASE_BUCKET)
        value = json.dumps({"owner": self.name}).encode()
        self._lease = Lease(kv, self.js, LEASE_KEY, value, self.ttl_s)
        self._tasks = [
            asyncio.create_task(self._watch(), name="schedules-watch"),
            asyncio.create_task(self._run(), name="scheduler"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._lease is not None:
            await self._lease.release()

    async def _run(self) -> None:
        assert self._lease is not None
        renewed = 0.0
        while True:
            try:
                if self._lease.revision is None:
                    if await self._lease.acquire():
                        renewed = time.monotonic()
                        self._cursors.clear()  # another leader may have moved them
                        log.info("%s is the scheduler", self.name)
                elif time.monotonic() - renewed >= self.ttl_s / 3:
                    if await self._lease.renew():
                        renewed = time.monotonic()
                if self._lease.valid():
                    await self.fire_due(time.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: scheduling round failed: %s", self.name, exc)
            await asyncio.sleep(POLL_S)

    async def fire_due(self, now: float) -> None:
        """Fire every tick due at ``now`` (the caller holds the lease)."""
        for schedule_id, schedule in list(self.schedules.items()):
            if not self.leading:
                return
            await self._fire_schedule(schedule_id, schedule, now)

    async def _fire_schedule(self, schedule_id: str, schedule: Schedule, now: float) -> None:
        cursor, revision = self._cursors.get(schedule_id) or await self.store.cursor(schedule_id)
        fire, skipped, horizon = due(schedule, cursor, now)
        if horizon is None:
            self._cursors[schedule_id] = (cursor, revision)
            return
        if skipped:
            cursor.skipped += skipped
            self.counters["skipped"] += skipped
            log.info("schedule %s: skipped %d missed tick(s) (catchup %s)", schedule_id, skipped, schedule.spec.catchup)
        for tick in fire:
            await self._fire(schedule, cursor, tick)
            cursor.last_tick = tick
            saved = await self.store.save_cursor(schedule_id, cursor, revision)
            if saved is None:  # moved by somebody else: read it again next round
                self._cursors.pop(schedule_id, None)
                return
            revision = saved
        if cursor.last_tick is None or cursor.last_tick < horizon:
            cursor.last_tick = horizon  # past the skipped ticks too
            saved = await self.store.save_cursor(schedule_id, cursor, revision)
            if saved is None:
                self._cursors.pop(schedule_id, None)
                return
            revision = saved
        self._cursors[schedule_id] = (cursor, revision)

    async def _fire(self, schedule: Schedule, cursor: Cursor, tick: float) -> None:
        spec = schedule.spec
        run_id = run_id_of(spec.id, tick)
        try:
            plan = await self.plan(spec.workflow_id, spec.parameters)
        except CogoError as exc:
            cursor.failed += 1
            cursor.last_error = f"{run_id}: [{exc.code}] {exc.message}"
            self.counters["failed"] += 1
            log.warning("schedule %s: tick %s not started: %s", spec.id, run_id, exc)
            return
        await send_command(self.js, StartRun(run_id=run_id, plan=plan.to_json()))
        cursor.fired += 1
        cursor.last_run_id = run_id
        cursor.last_error = None
        self.counters["fired"] += 1

    async def _watch(self) -> None:
        """Keep ``schedules`` in step with the bucket (specs are added and removed live)."""
        kv = await self.store.kv()
        while True:
            try:
                watcher = await kv.watch("spec.>")
                async for entry in watcher:
                    if entry is None:
                        continue
                    schedule_id = entry.key.removeprefix("spec.")
                    if entry.operation in ("DEL", "PURGE"):
                        self.schedules.pop(schedule_id, None)
                        self._cursors.pop(schedule_id, None)
                        continue
                    with contextlib.suppress(ValidationError, ValueError):
                        self.schedules[schedule_id] = Schedule.model_validate_json(entry.value or b"{}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: watching schedules failed: %s", self.name, exc)
                await asyncio.sleep(1.0)
