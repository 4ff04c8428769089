"""The workflow engine (``cogo run orchestrator [--replicas N]``, the agent name kept as it
was): drives workflow runs.

Any number of orchestrator processes, on any hosts, share the runs:

- runs are split into partitions by run id (``cogo.workflows.inbox``); a process drives the
  runs of the partitions it holds a lease on (``cogo.streams.leases``: KV keys with
  compare-and-set and a TTL), and the members balance the partitions between them;
- each partition has its own command queue, ``orchestrator.workflow.<p>`` (TASKS, work
  queue: start, cancel, signal, forwarded task outcome), pulled only by its holder;
- terminal task events (``execute_done`` / ``execute_failed``) come from one durable EVENTS
  consumer, ``orchestrator-events``, shared by all: whoever receives an event for a run it
  drives handles it; anybody else forwards it to the run's partition queue (``outcome``);
- an input is acked only after the step it causes is appended and only while the lease of
  its partition is still valid, otherwise it is handed back (``nak``) and redelivered,
  after ``ack_wait`` at the latest, to whoever holds the partition then.

When a process dies, its leases expire after their TTL (``[bus] lease_ttl_s``); another
member takes the partitions, loads their unfinished runs from the log (folds of their
events, timers re-armed from stored deadlines) and pulls their queues, where every command
and forwarded outcome the dead one had not acked is waiting: the runs continue within about
two ``ack_wait``s. No step is done twice: every event id is deterministic (a repeat is a
duplicate the stream drops), tasks are submitted with ``Nats-Msg-Id = <run>:<node>:
<attempt>`` and children started with ``<child run>:start``.

The member holding the ``scheduler`` lease also fires workflow schedules
(``cogo.workflows.scheduler``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from nats.js import api

from cogo.aio import cancel_and_wait
from cogo.errors import WorkflowNotFound
from cogo.runtime.base import Actor, Defer, Delivery
from cogo.streams.catalogue import EXECUTE_DONE, EXECUTE_FAILED
from cogo.streams.events import Event, decode_event
from cogo.streams.leases import PartitionLeases
from cogo.streams.policies import PolicyStore
from cogo.streams.topology import (
    EVENTS,
    ORCHESTRATOR_PARTITIONS,
    ORCHESTRATOR_ROUTES,
    TASKS,
    add_consumer_keeping_shape,
    durable_name,
    ensure_consumer,
)
from cogo.workflows import history
from cogo.workflows.definition import Catalog
from cogo.workflows.driver import LeaseLost, Runs
from cogo.workflows.engine import StartChild
from cogo.workflows.inbox import (
    CancelRun,
    Command,
    SignalRun,
    StartRun,
    TaskOutcome,
    decode_command,
    msg_id_of,
    partition_of,
    send_command,
    subject_of,
)
from cogo.workflows.planner import Plan, plan_workflow
from cogo.workflows.scheduler import Scheduler

log = logging.getLogger(__name__)

EVENTS_DURABLE = "orchestrator-events"
EVENTS_INPUT = "events:" + EVENTS_DURABLE  # the fetch loop's label, not a subject
TASK_EVENT_SUBJECTS = [f"events.{EXECUTE_DONE}.>", f"events.{EXECUTE_FAILED}.>"]
HAND_BACK_S = 0.2

__all__ = ["CancelRun", "SignalRun", "StartRun", "WorkflowEngine", "send_command"]


class WorkflowEngine(Actor):
    """Drives the workflow runs of the partitions it holds; every step is an event."""

    kind = "orchestrator"
    needs_data_dir = True

    def __init__(self, *args: Any, data_dir: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the declared routes are the partitions' queues: pulled while leased, never all
        self.routes = []
        self.data_dir = data_dir
        self.policies = PolicyStore(self.js)
        self.runs = Runs(
            self.js,
            self.name,
            duplicate_window_s=self.config.bus.duplicate_window_s,
            may_act=self._may_act,
            plan_child=self._plan_child,
            counters=self.counters,
            publisher=self.publisher,
        )
        self.leases = PartitionLeases(
            self.js,
            self.name,
            ORCHESTRATOR_PARTITIONS,
            self.config.bus.lease_ttl_s,
            on_gain=self._gain,
            on_release=self._let_go,
            on_lost=self._let_go,
        )
        # partitions whose runs are loaded and whose queue is being pulled
        self.ready: set[int] = set()
        self._partition_loops: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._busy: Counter[int] = Counter()
        self._idle: dict[int, asyncio.Event] = {}
        self.scheduler: Scheduler | None = None

    def default_routes(self) -> list[str]:
        return []  # the partition queues are pulled while their lease is held

    # -- lifecycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        for route in ORCHESTRATOR_ROUTES:
            await ensure_consumer(self.js, route, self.config)
        await add_consumer_keeping_shape(
            self.js,
            EVENTS,
            api.ConsumerConfig(
                durable_name=EVENTS_DURABLE,
                description="workflow orchestrators: terminal task events",
                filter_subjects=TASK_EVENT_SUBJECTS,
                ack_policy=api.AckPolicy.EXPLICIT,
                # created before the first run starts: older events belong to nobody
                deliver_policy=api.DeliverPolicy.NEW,
                ack_wait=self.config.bus.ack_wait_s,
                max_deliver=-1,  # a run must not lose its task's outcome
                max_ack_pending=self.config.bus.max_ack_pending,
            ),
            self.config.bus.replicas,
        )
        await self.policies.start()
        await self.leases.start()
        self.scheduler = Scheduler(self.js, self.name, self.config, self._plan_scheduled)
        await self.scheduler.start()

    async def start(self) -> None:
        await super().start()  # on_start: leases taken, partitions loading
        # the shared fetch loop of the actor base, on the EVENTS durable this time
        loop = self._fetch_loop(EVENTS_INPUT, (EVENTS, EVENTS_DURABLE))
        self._loops.append(asyncio.create_task(loop, name=EVENTS_DURABLE))

    async def on_stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.leases.stop()  # drains, then releases: the others take over at once
        await self.runs.stop()
        await self.policies.stop()

    # -- partitions --------------------------------------------------------------------

    def _may_act(self, run_id: str) -> bool:
        return self.leases.valid(partition_of(run_id))

    async def _gain(self, partitions: list[int]) -> None:
        """Load the unfinished runs of newly held partitions, then pull their queues."""
        wanted = set(partitions)
        while True:
            try:
                listed = await history.list_runs(self.js)
                break
            except Exception as exc:  # the bus is away for a moment: the leases wait too
                log.warning("%s: listing runs failed: %s; retrying", self.name, exc)
                await asyncio.sleep(1.0)
                if not any(self.leases.valid(p) for p in partitions):
                    return
        pending = [r.run_id for r in listed if not r.finished and partition_of(r.run_id) in wanted]
        resumed = await self.runs.resume(pending)
        if resumed:
            log.info("%s resumed %d unfinished run(s) of partitions %s", self.name, resumed, partitions)
        for partition in partitions:
            if not self.leases.valid(partition) or self._stopping.is_set():
                continue
            self.ready.add(partition)
            stop = asyncio.Event()
            route = ORCHESTRATOR_ROUTES[partition]
            task = asyncio.create_task(self._fetch_loop(route, (TASKS, durable_name(route)), stop), name=route)
            self._partition_loops[partition] = (task, stop)
            self._loops.append(task)
        self._loops = [t for t in self._loops if not t.done()]
        await self.runs.drop(lambda run_id: partition_of(run_id) in self.leases.held)

    async def _let_go(self, partitions: list[int]) -> None:
        """Stop pulling these partitions, let their handlers finish, forget their runs."""
        for partition in partitions:
            self.ready.discard(partition)
        loops = [self._partition_loops.pop(p) for p in partitions if p in self._partition_loops]
        for _, stop in loops:
            stop.set()
        if loops:
            _, late = await asyncio.wait([t for t, _ in loops], timeout=10)
            await cancel_and_wait(late)
        for partition in partitions:
            while self._busy[partition]:
                idle = self._idle.setdefault(partition, asyncio.Event())
                idle.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(idle.wait(), 1.0)
        gone = set(partitions)
        await self.runs.drop(lambda run_id: partition_of(run_id) not in gone)

    @contextlib.asynccontextmanager
    async def _working(self, partition: int) -> Any:
        self._busy[partition] += 1
        try:
            yield
        finally:
            self._busy[partition] -= 1
            if not self._busy[partition] and partition in self._idle:
                self._idle[partition].set()

    # -- inputs ------------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        if delivery.route == EVENTS_INPUT:
            try:
                event = decode_event(delivery.data)
            except msgspec.DecodeError:
                return  # not an event: not ours to judge
            await self._on_task_event(event)
            return
        partition = ORCHESTRATOR_ROUTES.index(delivery.route)
        command = decode_command(delivery.data)  # MalformedMessage -> dead letter
        if partition_of(command.run_id) != partition:
            # sent to another partition's subject (an older sender): pass it on
            await send_command(self.js, command, msg_id="fwd:" + msg_id_of(command))
            self.counters["commands_forwarded"] += 1
            return
        async with self._working(partition):
            if not self.leases.valid(partition):
                raise Defer(HAND_BACK_S)  # not ours any more: the new holder gets it
            try:
                await self._dispatch(command)
            except LeaseLost:
                raise Defer(HAND_BACK_S) from None
            if not self.leases.valid(partition):
                raise Defer(HAND_BACK_S)  # done, but maybe after the lease moved: redo there

    async def _dispatch(self, command: Command) -> None:
        if isinstance(command, StartRun):
            await self.runs.start(command)
        elif isinstance(command, CancelRun):
            await self.runs.cancel(command)
        elif isinstance(command, SignalRun):
            await self.runs.signal(command)
        else:
            try:
                event = msgspec.convert(command.event, Event)
            except msgspec.ValidationError:
                return
            await self.runs.task_outcome(event)

    async def _on_task_event(self, event: Event) -> None:
        run_id = event.correlation_id
        if not run_id or not (event.task_id or "").startswith(run_id + ":"):
            return  # not a task of a workflow run
        partition = partition_of(run_id)
        if partition in self.ready and self.leases.valid(partition):
            async with self._working(partition):
                try:
                    handled = await self.runs.task_outcome(event)
                    lost = not self.leases.valid(partition)
                except LeaseLost:
                    handled, lost = False, True
                if not lost and (handled or partition in self.ready):
                    return  # handled here, or a run that already ended
        # not driven here: into the run's partition queue, for whoever holds it
        outcome = TaskOutcome(run_id=run_id, event=msgspec.to_builtins(event))
        await send_command(self.js, outcome)
        self.counters["outcomes_forwarded"] += 1

    # -- planning children and scheduled runs --------------------------------------------

    async def _plan_child(self, child: StartChild) -> Plan:
        return await self._plan(child.workflow_id, child.parameters)

    async def _plan_scheduled(self, workflow_id: str, parameters: dict[str, Any]) -> Plan:
        return await self._plan(workflow_id, parameters)

    async def _plan(self, workflow_id: str, parameters: dict[str, Any]) -> Plan:
        catalog = Catalog.for_data_dir(self.data_dir)

        def plan() -> Plan:  # file reads: in a thread
            definitions = catalog.load()
            if workflow_id not in definitions:
                raise WorkflowNotFound(f"no workflow {workflow_id!r}; known: " + ", ".join(sorted(definitions)))
            return plan_workflow(definitions[workflow_id], parameters, self.policies.get, definitions)

        return await asyncio.to_thread(plan)

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "runs_active": len(self.runs.runs),
            "partitions": sorted(self.leases.held),
            **self.leases.counters,
        }


# kept for callers of the earlier module layout
__all__ += ["subject_of"]
