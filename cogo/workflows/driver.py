"""Driving runs: the engine's actions carried out against the bus, with timers and watchers.

``Runs`` holds the runs one orchestrator process drives (those of the partitions it holds a
lease on). For each: the plan, the folded state, one timer at the earliest deadline (Wait
and Signal deadlines, Retry backoffs: timestamps stored in events, so a loaded run re-arms
them) and one log watcher per thing it waits for in the log, a Wait node's event or the end
of a child run (an ephemeral consumer from the run's first event on).

Everything a run does goes through ``_do``: append an event (deterministic id; a duplicate
is folded as the log holds it), submit a task (``Nats-Msg-Id = task id``), start a child
(planned here, then ``StartRun`` to the child's partition). Before each action ``may_act``
is asked whether this process still holds the run's partition; if not, ``LeaseLost`` stops
the step, and the input that caused it is redelivered to the new holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pydantic
from nats.js.client import JetStreamContext

from cogo import tracing
from cogo.aio import cancel_and_wait
from cogo.errors import CogoError, MalformedMessage
from cogo.streams.catalogue import RUN_OUTCOMES, WORKFLOW_SIGNALED, RunData, data_of
from cogo.streams.commands import cancel_message
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID, encoder
from cogo.streams.events import Event, make_event
from cogo.streams.publisher import Publisher
from cogo.workflows import history
from cogo.workflows.actions import unplannable_event
from cogo.workflows.engine import (
    Action,
    Append,
    StartChild,
    Submit,
    cancelled_event,
    decide,
    matches,
    next_wakeup,
    restarts,
    resubmissions,
    running_children,
    started_event,
)
from cogo.workflows.inbox import CancelRun, SignalRun, StartRun, send_command
from cogo.workflows.nodes import RUNNING, timestamp
from cogo.workflows.planner import Plan, link
from cogo.workflows.run import RunState

log = logging.getLogger(__name__)

RETRY_ADVANCE_S = 1.0
MAX_STEPS = 10_000
LOAD_CONCURRENCY = 16

PlanChild = Callable[[StartChild], Awaitable[Plan]]


class LeaseLost(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised when the partition of a run moved to another orchestrator mid-step."""


@dataclass
class Run:
    """A run this process is driving."""

    plan: Plan
    state: RunState
    timer: asyncio.TimerHandle | None = None
    watchers: dict[tuple[Any, ...], asyncio.Task[None]] = field(default_factory=dict)


class Runs:
    """The runs of one orchestrator process, keyed by run id."""

    def __init__(
        self,
        js: JetStreamContext,
        name: str,
        *,
        duplicate_window_s: float,
        may_act: Callable[[str], bool],
        plan_child: PlanChild,
        counters: Counter[str],
        publisher: Publisher,
    ) -> None:
        self.js = js
        self.publisher = publisher
        self.name = name
        self.duplicate_window_s = duplicate_window_s
        self.may_act = may_act
        self.plan_child = plan_child
        self.counters = counters
        self.runs: dict[str, Run] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def lock(self, run_id: str) -> asyncio.Lock:
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = asyncio.Lock()
        return lock

    # -- inputs (the caller holds nothing; each takes the run's lock) --------------------

    async def start(self, command: StartRun) -> None:
        try:
            plan = link(Plan.model_validate(command.plan))
        except pydantic.ValidationError as exc:
            raise MalformedMessage(f"invalid plan for run {command.run_id}: {exc}") from exc
        async with self.lock(command.run_id):
            if command.run_id in self.runs:
                # a redelivered command: the first handling may have failed half-way
                await self._advance(self.runs[command.run_id])
                return
            state = await history.read_run(self.js, command.run_id)
            if state.finished:
                return
            if state.started:  # the log wins over the command
                plan = link(Plan.model_validate(state.plan))
            run = Run(plan, state)
            if not state.started:
                await self._do(run, Append(started_event(plan, command.run_id, self.name, command.parent)))
                self.counters["runs_started"] += 1
            self.runs[command.run_id] = run
            await self._advance(run, resume=True)

    async def cancel(self, command: CancelRun) -> None:
        async with self.lock(command.run_id):
            run = self.runs.get(command.run_id)
            if run is None:
                state = await history.read_run(self.js, command.run_id)
                if state.finished:
                    # a redelivery after the outcome: the cascade may not have gone out
                    if state.status == "cancelled" and state.started:
                        await self._cascade(state, command.reason)
                    return
                if not state.started:
                    # overtook its own start (a cascade to a child still being planned):
                    # the outcome goes first, so the start finds the run over
                    state.workflow_id = command.workflow_id
                    await self._append_outside(cancelled_event(state, self.name, command.reason))
                    return
                run = Run(link(Plan.model_validate(state.plan)), state)
            await self._do(run, Append(cancelled_event(run.state, self.name, command.reason)))
            self.counters["runs_cancelled"] += 1
            await self._cascade(run.state, command.reason)
            self._close(run)

    async def signal(self, command: SignalRun) -> None:
        async with self.lock(command.run_id):
            run = self.runs.get(command.run_id) or await self._load(command.run_id)
            if run is None:
                log.info(
                    "%s: signal %s for run %s, which is not running; dropped", self.name, command.name, command.run_id
                )
                return
            signaled = make_event(
                WORKFLOW_SIGNALED,
                event_id=f"{command.run_id}:signal:{command.signal_id}",
                correlation_id=command.run_id,
                actor=self.name,
                data={
                    "run_id": command.run_id,
                    "workflow_id": run.state.workflow_id,
                    "name": command.name,
                    "signal_id": command.signal_id,
                    "data": command.data,
                },
            )
            await self._do(run, Append(signaled))
            self.counters["signals"] += 1
            await self._advance(run)

    async def task_outcome(self, event: Event) -> bool:
        """Fold a task's terminal event into its run; False if the run is not held here."""
        run_id = event.correlation_id or ""
        if run_id not in self.runs:
            return False
        async with self.lock(run_id):
            run = self.runs.get(run_id)
            if run is None:
                return False
            if run.state.observe_task(event):
                self.counters["task_outcomes"] += 1
                await self._advance(run)
        return True

    # -- loading and dropping ------------------------------------------------------------

    async def resume(self, run_ids: list[str]) -> int:
        """Load these runs from the log and carry on with each; the number resumed."""
        gate = asyncio.Semaphore(LOAD_CONCURRENCY)

        async def one(run_id: str) -> bool:
            async with gate, self.lock(run_id):
                if run_id in self.runs:
                    return False
                run = await self._load(run_id)
                if run is None:
                    return False
                await self._advance(run, resume=True)
                self.counters["runs_resumed"] += 1
                return True

        results = await asyncio.gather(*(one(r) for r in run_ids), return_exceptions=True)
        for run_id, result in zip(run_ids, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, LeaseLost):
                log.error("%s: resuming run %s failed: %r", self.name, run_id, result)
        return sum(1 for r in results if r is True)

    async def _load(self, run_id: str) -> Run | None:
        state = await history.read_run(self.js, run_id)
        if not state.started or state.finished:
            return None
        try:
            plan = link(Plan.model_validate(state.plan))
        except pydantic.ValidationError as exc:
            log.error("cannot resume run %s: its plan is invalid: %s", run_id, exc)
            return None
        run = self.runs[run_id] = Run(plan, state)
        return run

    async def drop(self, keep: Callable[[str], bool]) -> int:
        """Forget every run for which ``keep(run_id)`` is false (its partition left us)."""
        gone = [r for r in self.runs if not keep(r)]
        for run_id in gone:
            async with self.lock(run_id):
                run = self.runs.pop(run_id, None)
                if run is not None:
                    self._close(run)
            self._locks.pop(run_id, None)
        return len(gone)

    async def stop(self) -> None:
        for run in list(self.runs.values()):
            self._close(run)
        tasks = list(self._background)
        await cancel_and_wait(tasks)

    # -- driving a run (the caller holds its lock) ---------------------------------------

    async def _advance(self, run: Run, resume: bool = False) -> None:
        """Apply ``decide`` until the run has to wait."""
        if resume:
            now = time.time()
            redo: list[Action] = [*resubmissions(run.state, now, self.duplicate_window_s), *restarts(run.state)]
            if redo:
                await self._do_all(run, redo)
        for _ in range(MAX_STEPS):
            actions = decide(run.plan, run.state, time.time(), self.name)
            if not actions:
                break
            progressed = await self._do_all(run, actions)
            if not progressed:  # a decision that changes nothing would spin
                log.error("%s: run %s is stuck at %s", self.name, run.state.run_id, actions)
                break
        if run.state.finished:
            self._close(run)
            self.counters[f"runs_{run.state.status}"] += 1
            return
        self._arm(run)
        self._sync_watchers(run)

    async def _do(self, run: Run, action: Action) -> bool:
        """Carry out one action; False if it changed nothing (an event already folded)."""
        return await self._do_all(run, [action])

    async def _do_all(self, run: Run, actions: list[Action]) -> bool:
        """Carry out one decision: its events first, appended in order in one round trip
        and folded in that order, then the tasks and child runs they announce."""
        if not self.may_act(run.state.run_id):
            raise LeaseLost(run.state.run_id)
        progressed = False
        events = [a.event for a in actions if isinstance(a, Append)]
        if events:
            acks = await self.publisher.publish_all([history.message(e) for e in events])
            for event, ack in zip(events, acks, strict=True):
                if ack.duplicate:
                    # an earlier process appended this fact already: fold what the log holds
                    with contextlib.suppress(Exception):
                        event = await history.stored(self.js, ack.seq)
                    self.counters["duplicate_events"] += 1
                progressed = run.state.apply(event, ack.seq) or progressed
                if not ack.duplicate:
                    tracing.workflow_event(
                        event, workflow_id=run.state.workflow_id, run_started=timestamp(run.state.started_at)
                    )
        tasks = [a.task for a in actions if isinstance(a, Submit)]
        if tasks:
            await self.publisher.publish_all(
                [
                    (
                        EXECUTE_SUBJECT,
                        encoder.encode(t),
                        tracing.workflow_task({MSG_ID: t["task_id"]}, t),
                    )
                    for t in tasks
                ]
            )
            self.counters["tasks_submitted"] += len(tasks)
        children = [a for a in actions if isinstance(a, StartChild)]
        if children:
            await asyncio.gather(*(self._start_child(child) for child in children))
        return progressed or bool(tasks or children)

    async def _start_child(self, child: StartChild) -> None:
        try:
            plan = await self.plan_child(child)
        except CogoError as exc:  # unknown workflow, bad parameters...: the child fails
            await self._append_outside(unplannable_event(child, self.name, exc))
            return
        await send_command(self.js, StartRun(run_id=child.run_id, plan=plan.to_json(), parent=child.parent))
        self.counters["children_started"] += 1

    async def _append_outside(self, event: Event) -> None:
        """Append an event of a run not driven here (a child's or a never-started run's)."""
        await history.append(self.js, event)

    async def _cascade(self, state: RunState, reason: str | None) -> None:
        """Cancel the running children of a cancelled run (each cancel is idempotent)."""
        for child_run_id in running_children(state):
            node_id, index = state.running_children[child_run_id]
            node = state.nodes[node_id]
            inputs = node.inputs if index is None else node.items[index].inputs
            why = f"parent run {state.run_id} cancelled" + (f": {reason}" if reason else "")
            await send_command(
                self.js, CancelRun(run_id=child_run_id, reason=why, workflow_id=inputs.workflow if inputs else None)
            )
            self.counters["children_cancelled"] += 1
        # and the tasks its nodes started that have not ended (cogo.runtime.suspension)
        why = f"workflow run {state.run_id} cancelled" + (f": {reason}" if reason else "")
        for task_id in sorted(state.running_tasks):
            subject, data, headers = cancel_message(task_id, why)
            await self.js.publish(subject, data, headers=headers, timeout=10)
            self.counters["tasks_cancelled"] += 1

    def _close(self, run: Run) -> None:
        """Forget a run's timer and watchers (it ended, or this process lets it go)."""
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

    # -- durable timers ------------------------------------------------------------------

    def _arm(self, run: Run) -> None:
        """One timer per run, at its earliest deadline (stored in its events)."""
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        at = next_wakeup(run.plan, run.state)
        if at is None:
            return
        delay = max(0.0, at - time.time()) + 0.005
        run.timer = asyncio.get_running_loop().call_later(delay, self._wake_soon, run.state.run_id)

    def _wake_soon(self, run_id: str) -> None:
        self._in_background(self._wake(run_id))

    async def _wake(self, run_id: str) -> None:
        async with self.lock(run_id):
            run = self.runs.get(run_id)
            if run is None:
                return
            try:
                await self._advance(run)
            except LeaseLost:
                return  # the new holder re-arms it from the log
            except Exception:
                log.exception("%s: advancing run %s failed; retrying", self.name, run_id)
                run.timer = asyncio.get_running_loop().call_later(RETRY_ADVANCE_S, self._wake_soon, run_id)

    def _in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- watchers: Wait nodes on events, ends of child runs ------------------------------

    def _sync_watchers(self, run: Run) -> None:
        """One watcher per running Wait-on-event attempt and per running child run."""
        state = run.state
        wanted: dict[tuple[Any, ...], dict[str, Any]] = {
            ("wait", node.id, node.attempt): node.inputs.event
            for node in state.nodes.values()
            if node.status == RUNNING and node.inputs and node.inputs.event
        }
        for child in running_children(state):
            wanted[("child", child)] = {}
        for key in [k for k in run.watchers if k not in wanted]:
            task = run.watchers.pop(key)
            if task is not asyncio.current_task():
                task.cancel()
        for key, spec in wanted.items():
            if key not in run.watchers:
                task = asyncio.create_task(self._watch(state.run_id, key, spec))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                run.watchers[key] = task

    async def _watch(self, run_id: str, key: tuple[Any, ...], spec: dict[str, Any]) -> None:
        """Read the log from the run's start for what ``key`` waits for."""
        run = self.runs.get(run_id)
        if run is None:
            return
        subjects = _child_subjects(key[1]) if key[0] == "child" else _wait_subjects(spec)
        try:
            async with history.tail(self.js, subjects, run.state.start_seq + 1) as reader:
                while True:
                    for _, event in await reader.fetch(timeout=1.0):
                        if await self._on_watched(run_id, key, spec, event):
                            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: watcher %s of %s failed; restarting it", self.name, key, run_id)
            await asyncio.sleep(RETRY_ADVANCE_S)
            async with self.lock(run_id):
                run = self.runs.get(run_id)
                if run is not None:
                    run.watchers.pop(key, None)
                    self._sync_watchers(run)

    async def _on_watched(self, run_id: str, key: tuple[Any, ...], spec: dict[str, Any], event: Event) -> bool:
        """Record what a watcher found; True when the watcher is done."""
        async with self.lock(run_id):
            run = self.runs.get(run_id)
            if run is None:
                return True
            if key[0] == "child":
                if event.type not in RUN_OUTCOMES or event.correlation_id != key[1]:
                    return False
                ended = {
                    "status": RUN_OUTCOMES[event.type],
                    "error_code": event.error_code,
                    "error": event.error,
                    "event_id": event.event_id,
                    "workflow_id": data_of(event, RunData, lenient=True).workflow_id,
                }
                if not run.state.observe_child(key[1], ended):
                    return True  # nothing waits for it any more
            else:
                _, node_id, attempt = key
                node = run.state.nodes.get(node_id)
                if node is None or node.status != RUNNING or node.attempt != attempt:
                    return True
                found = msgspec.to_builtins(event)
                if not matches(spec, found, run.state):
                    return False
                run.state.observe_match(node_id, attempt, found)
            try:
                await self._advance(run)
            except LeaseLost:
                pass
            except Exception:  # the input is recorded; a timer finishes the step
                log.exception("%s: advancing run %s failed; retrying", self.name, run_id)
                run.timer = asyncio.get_running_loop().call_later(RETRY_ADVANCE_S, self._wake_soon, run_id)
            return True


def _wait_subjects(spec: dict[str, Any]) -> list[str]:
    types = [spec["type"]] if isinstance(spec.get("type"), str) else list(spec["type"])
    route = spec.get("route")
    return sorted({s for t in types for s in ([f"events.{t}.{route}"] if route else [f"events.{t}", f"events.{t}.>"])})


def _child_subjects(child_run_id: str) -> list[str]:
    # any workflow id: a child that could not be planned, or was cancelled before it
    # started, files its outcome under the id its parent asked for (or none)
    return [f"events.{t}.wf.*.{child_run_id}" for t in RUN_OUTCOMES]
