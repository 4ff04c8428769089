"""The workflow orchestrator (``cogo run orchestrator``): runs plans node by node.

Inputs, each through the shared actor loop (``cogo.actors.base``):

- commands on ``orchestrator.workflow.0`` (TASKS, work queue): ``{"op": "start",
  "run_id", "plan"}`` and ``{"op": "cancel", "run_id", "reason"}``, published with
  ``Nats-Msg-Id = <run>:<op>``;
- the durable EVENTS consumer ``orchestrator-events`` on ``execute_done`` /
  ``execute_failed``: how Publish and Notify nodes learn that their task ended. An event is
  acked only after the node outcome it causes is appended, so a crash in between means a
  redelivery, never a lost step.

Wait nodes read the log themselves, from the run's first event, through an ephemeral
consumer per waiting node; Wait deadlines and Retry backoffs are timestamps stored in
``node_started`` / ``node_failed`` events, re-armed as timers whenever a run is loaded.

Restart: before consuming anything, the orchestrator lists runs that started and did not
end (``events.workflow_*.wf.>``), folds each one from its own events
(``events.*.wf.*.<run>``) and carries on. Tasks are submitted with
``task_id = <run>:<node>:<attempt>`` as ``Nats-Msg-Id``, so re-submitting a task the
previous process may already have sent is dropped by JetStream (duplicate window), and
every event id is deterministic, so no step happens twice.

One orchestrator process holds the runs at a time (a second one would only repeat
appends that the stream de-duplicates, but it would not see the first one's runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import pydantic
from nats.js import api
from nats.js.client import JetStreamContext

from cogo.actors.base import Actor, Delivery
from cogo.errors import MalformedMessage
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID, encoder
from cogo.streams.events import EXECUTE_DONE, EXECUTE_FAILED, Event, decode_event
from cogo.streams.topology import EVENTS, ORCHESTRATOR_ROUTE, ensure_consumer
from cogo.workflows import history
from cogo.workflows.definition import RUN_ID
from cogo.workflows.engine import (
    Action,
    Append,
    Submit,
    cancelled_event,
    decide,
    matches,
    next_wakeup,
    resubmissions,
    started_event,
)
from cogo.workflows.planner import Plan, link
from cogo.workflows.run import RUNNING, RunState

log = logging.getLogger(__name__)

EVENTS_DURABLE = "orchestrator-events"
EVENTS_INPUT = "events:" + EVENTS_DURABLE  # the fetch loop's label, not a subject
TASK_EVENT_SUBJECTS = [f"events.{EXECUTE_DONE}.>", f"events.{EXECUTE_FAILED}.>"]
RETRY_ADVANCE_S = 1.0
MAX_STEPS = 10_000

RunId = Annotated[str, msgspec.Meta(pattern=RUN_ID)]


class StartRun(msgspec.Struct, frozen=True, tag="start", tag_field="op"):
    """Start a run of ``plan`` (a checked ``Plan`` as JSON) under ``run_id``."""

    run_id: RunId
    plan: dict[str, Any]


class CancelRun(msgspec.Struct, frozen=True, tag="cancel", tag_field="op"):
    """Cancel a run; its running tasks finish, but nothing new starts."""

    run_id: RunId
    reason: str | None = None


Command = StartRun | CancelRun
_command_decoder = msgspec.json.Decoder(Command)


async def send_command(js: JetStreamContext, command: Command) -> bool:
    """Publish a command to the orchestrator; False if it was a duplicate."""
    op = "start" if isinstance(command, StartRun) else "cancel"
    ack = await js.publish(
        ORCHESTRATOR_ROUTE,
        encoder.encode(command),
        headers={MSG_ID: f"{command.run_id}:{op}"},
        timeout=10,
    )
    return not ack.duplicate


def decode_command(data: bytes) -> Command:
    try:
        return _command_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"invalid orchestrator command: {exc}") from exc


@dataclass
class _Run:
    """A run this process is driving."""

    plan: Plan
    state: RunState
    timer: asyncio.TimerHandle | None = None
    watchers: dict[tuple[str, int], asyncio.Task[None]] = field(default_factory=dict)


class Orchestrator(Actor):
    """Drives workflow runs from commands and task events; every step is an event."""

    kind = "orchestrator"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: dict[str, _Run] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def default_routes(self) -> list[str]:
        return [ORCHESTRATOR_ROUTE]

    # -- lifecycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        await ensure_consumer(self.js, ORCHESTRATOR_ROUTE, self.config)
        await self.js.add_consumer(
            EVENTS,
            api.ConsumerConfig(
                durable_name=EVENTS_DURABLE,
                description="workflow orchestrator: terminal task events",
                filter_subjects=TASK_EVENT_SUBJECTS,
                ack_policy=api.AckPolicy.EXPLICIT,
                # created before the first run starts: older events belong to nobody
                deliver_policy=api.DeliverPolicy.NEW,
                ack_wait=self.config.bus.ack_wait_s,
                max_deliver=-1,  # a run must not lose its task's outcome
                max_ack_pending=self.config.bus.max_ack_pending,
                num_replicas=self.config.bus.replicas,
            ),
        )
        await self._resume_all()

    async def start(self) -> None:
        await super().start()  # on_start (resume), then the command consumer
        # the shared fetch loop of the actor base, on the EVENTS durable this time
        loop = self._fetch_loop(EVENTS_INPUT, (EVENTS, EVENTS_DURABLE))
        self._loops.append(asyncio.create_task(loop, name=EVENTS_DURABLE))

    async def on_stop(self) -> None:
        for run in list(self.runs.values()):
            self._close(run)
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- inputs ------------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        if delivery.route == EVENTS_INPUT:
            try:
                event = decode_event(delivery.data)
            except msgspec.DecodeError:
                return  # not an event: not ours to judge
            await self._on_task_event(event)
            return
        command = decode_command(delivery.data)  # MalformedMessage -> dead letter
        if isinstance(command, StartRun):
            await self._start_run(command)
        else:
            await self._cancel_run(command)

    async def _on_task_event(self, event: Event) -> None:
        run_id = event.correlation_id
        if run_id not in self.runs:
            return  # not a workflow task, or a run that already ended
        async with self._lock(run_id):
            run = self.runs.get(run_id)
            if run is not None and run.state.observe_task(event):
                self.counters["task_outcomes"] += 1
                await self._advance(run)

    async def _start_run(self, command: StartRun) -> None:
        try:
            plan = link(Plan.model_validate(command.plan))
        except pydantic.ValidationError as exc:
            raise MalformedMessage(f"invalid plan for run {command.run_id}: {exc}") from exc
        async with self._lock(command.run_id):
            if command.run_id in self.runs:
                # a redelivered command: the first handling may have failed half-way
                await self._advance(self.runs[command.run_id])
                return
            state = await history.read_run(self.js, command.run_id)
            if state.finished:
                return
            if state.started:  # the log wins over the command
                plan = link(Plan.model_validate(state.plan))
            run = _Run(plan, state)
            if not state.started:
                await self._do(run, Append(started_event(plan, command.run_id, self.name)))
                self.counters["runs_started"] += 1
            self.runs[command.run_id] = run
            await self._advance(run, resume=True)

    async def _cancel_run(self, command: CancelRun) -> None:
        async with self._lock(command.run_id):
            run = self.runs.get(command.run_id)
            if run is None:
                state = await history.read_run(self.js, command.run_id)
                if not state.started or state.finished:
                    return
                run = _Run(link(Plan.model_validate(state.plan)), state)
            await self._do(run, Append(cancelled_event(run.state, self.name, command.reason)))
            self.counters["runs_cancelled"] += 1
            self._close(run)

    # -- driving a run -----------------------------------------------------------------

    async def _resume_all(self) -> None:
        """Load every run that started and has not ended, and carry on with it."""
        pending = [r.run_id for r in await history.list_runs(self.js) if not r.finished]
        for run_id in pending:
            async with self._lock(run_id):
                state = await history.read_run(self.js, run_id)
                if not state.started or state.finished:
                    continue
                try:
                    plan = link(Plan.model_validate(state.plan))
                except pydantic.ValidationError as exc:
                    log.error("cannot resume run %s: its plan is invalid: %s", run_id, exc)
                    continue
                run = _Run(plan, state)
                self.runs[run_id] = run
                await self._advance(run, resume=True)
                self.counters["runs_resumed"] += 1
        if pending:
            log.info("%s resumed %d unfinished run(s)", self.name, len(pending))

    async def _advance(self, run: _Run, resume: bool = False) -> None:
        """Apply ``decide`` until the run has to wait; the caller holds the run's lock."""
        if resume:
            window = self.config.bus.duplicate_window_s
            for submit in resubmissions(run.state, time.time(), window):
                await self._do(run, submit)
        for _ in range(MAX_STEPS):
            actions = decide(run.plan, run.state, time.time(), self.name)
            if not actions:
                break
            progressed = [await self._do(run, action) for action in actions]
            if not any(progressed):  # a decision that changes nothing would spin
                log.error("%s: run %s is stuck at %s", self.name, run.state.run_id, actions)
                break
        if run.state.finished:
            self._close(run)
            self.counters[f"runs_{run.state.status}"] += 1
            return
        self._arm(run)
        self._sync_watchers(run)

    async def _do(self, run: _Run, action: Action) -> bool:
        """Carry out one action; False if it changed nothing (an event already folded)."""
        if isinstance(action, Submit):
            task = action.task
            await self.js.publish(
                EXECUTE_SUBJECT,
                encoder.encode(task),
                headers={MSG_ID: task["task_id"]},
                timeout=10,
            )
            self.counters["tasks_submitted"] += 1
            return True
        event = action.event
        seq, duplicate = await history.append(self.js, event)
        if duplicate:
            # an earlier process appended this fact already: fold what the log holds
            with contextlib.suppress(Exception):
                event = await history.stored(self.js, seq)
            self.counters["duplicate_events"] += 1
        return run.state.apply(event, seq)

    def _close(self, run: _Run) -> None:
        """Forget a run that ended (or this process stops): timers and watchers go."""
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        current = asyncio.current_task()
        for task in run.watchers.values():
            if task is not current:
                task.cancel()
        run.watchers.clear()
        if run.state.finished:
            self.runs.pop(run.state.run_id, None)
            self._locks.pop(run.state.run_id, None)

    # -- durable timers ----------------------------------------------------------------

    def _arm(self, run: _Run) -> None:
        """One timer per run, at its earliest deadline (stored in its events)."""
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        at = next_wakeup(run.plan, run.state)
        if at is None:
            return
        delay = max(0.0, at - time.time()) + 0.005
        run_id = run.state.run_id
        run.timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._in_background(self._wake(run_id))
        )

    async def _wake(self, run_id: str) -> None:
        async with self._lock(run_id):
            run = self.runs.get(run_id)
            if run is None:
                return
            try:
                await self._advance(run)
            except Exception:
                log.exception("%s: advancing run %s failed; retrying", self.name, run_id)
                run.timer = asyncio.get_running_loop().call_later(
                    RETRY_ADVANCE_S, lambda: self._in_background(self._wake(run_id))
                )

    def _in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- Wait nodes on events ----------------------------------------------------------

    def _sync_watchers(self, run: _Run) -> None:
        """One watcher per running Wait-on-event node attempt; none for anything else."""
        wanted = {
            (node.id, node.attempt): node.inputs["event"]
            for node in run.state.nodes.values()
            if node.status == RUNNING and node.inputs.get("event")
        }
        for key in [k for k in run.watchers if k not in wanted]:
            task = run.watchers.pop(key)
            if task is not asyncio.current_task():
                task.cancel()
        for key, spec in wanted.items():
            if key not in run.watchers:
                task = asyncio.create_task(self._watch(run.state.run_id, *key, spec))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                run.watchers[key] = task

    async def _watch(self, run_id: str, node_id: str, attempt: int, spec: dict[str, Any]) -> None:
        """Read the log from the run's start for the event a Wait node's attempt wants."""
        run = self.runs.get(run_id)
        if run is None:
            return
        types = [spec["type"]] if isinstance(spec.get("type"), str) else list(spec["type"])
        route = spec.get("route")
        subjects = sorted(
            {s for t in types for s in ([f"events.{t}.{route}"] if route
                                        else [f"events.{t}", f"events.{t}.>"])}
        )  # fmt: skip
        try:
            async with history.tail(self.js, subjects, run.state.start_seq + 1) as reader:
                while True:
                    for _, event in await reader.fetch(timeout=1.0):
                        found = msgspec.to_builtins(event)
                        if await self._on_match(run_id, node_id, attempt, spec, found):
                            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: watcher of %s/%s failed; restarting it", self.name, run_id, node_id)
            await asyncio.sleep(RETRY_ADVANCE_S)
            async with self._lock(run_id):
                run = self.runs.get(run_id)
                if run is not None:
                    run.watchers.pop((node_id, attempt), None)
                    self._sync_watchers(run)

    async def _on_match(
        self, run_id: str, node_id: str, attempt: int, spec: dict[str, Any], event: Any
    ) -> bool:
        async with self._lock(run_id):
            run = self.runs.get(run_id)
            node = run.state.nodes.get(node_id) if run else None
            if run is None or node is None or node.status != RUNNING or node.attempt != attempt:
                return True  # nothing waits for it any more
            if not matches(spec, event, run.state):
                return False
            run.state.observe_match(node_id, attempt, event)
            try:
                await self._advance(run)
            except Exception:  # the match is recorded; a timer finishes the step
                log.exception("%s: advancing run %s failed; retrying", self.name, run_id)
                run.timer = asyncio.get_running_loop().call_later(
                    RETRY_ADVANCE_S, lambda: self._in_background(self._wake(run_id))
                )
            return True

    def _lock(self, run_id: str) -> asyncio.Lock:
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = asyncio.Lock()
        return lock

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "runs_active": len(self.runs)}
