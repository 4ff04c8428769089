"""A workflow run's state: a fold over its events.

Nothing about a run is stored anywhere but the event log. ``RunState.apply`` folds one
workflow event (idempotently: an event id is applied once), so the orchestrator rebuilds
an unfinished run after a restart, and the HTTP facade answers ``/state`` by reading the
same events. Terminal task events (``execute_done`` / ``execute_failed``), events
matched by Wait nodes and the outcomes of child runs are *inputs*: ``observe_task`` /
``observe_match`` / ``observe_child`` record them, and the engine turns them into node
outcomes, which are events again. Signals are events of the run itself
(``workflow_signaled``), so one sent before its node starts is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cogo.streams.catalogue import (
    GATE_FAILED,
    GATE_PASSED,
    MAP_ITEM_FAILED,
    MAP_ITEM_STARTED,
    MAP_ITEM_SUCCEEDED,
    NODE_FAILED,
    NODE_SKIPPED,
    NODE_STARTED,
    NODE_SUCCEEDED,
    RUN_OUTCOMES,
    TERMINAL_TYPES,
    WORKFLOW_SIGNALED,
    WORKFLOW_STARTED,
    GateEvaluated,
    MapItemEnded,
    MapItemStarted,
    NodeFailed,
    NodeSkipped,
    NodeStarted,
    NodeSucceeded,
    RunData,
    WorkflowSignaled,
    WorkflowStarted,
    data_of,
)
from cogo.streams.events import Event
from cogo.workflows.nodes import (
    CANCELLED,
    FAILED,
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    Attempt,
    ItemState,
    NodeState,
    timestamp,
)
from cogo.workflows.record import RunRecord

log = logging.getLogger(__name__)

# how a node's attempt ends -> the struct its event carries
_NODE_ENDS: dict[str, type[RunData]] = {
    NODE_SUCCEEDED: NodeSucceeded,
    NODE_FAILED: NodeFailed,
    NODE_SKIPPED: NodeSkipped,
    GATE_PASSED: GateEvaluated,
    GATE_FAILED: GateEvaluated,
}


@dataclass
class RunState:
    """The fold of one run's events: its record (``cogo.workflows.record``) and its nodes."""

    run_id: str
    plan: dict[str, Any] | None = None
    nodes: dict[str, NodeState] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    task_outcomes: dict[str, Event] = field(default_factory=dict)
    matches: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    # signals received, by name, in log order: {"signal_id", "data", "at", "event_id"}
    signals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # ends of child runs (workflow nodes, map items): child run id -> its outcome
    child_outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the run that started this one (``{"runId", "nodeId", "workflowId", "ancestry"}``)
    parent: dict[str, Any] | None = None
    # running task ids and child run ids -> (node id, item index or None)
    running_tasks: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    running_children: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    # start, outcome and workflow id: the fold the projection's workflow_runs holds too
    record: RunRecord = field(init=False)

    def __post_init__(self) -> None:
        self.record = RunRecord(run_id=self.run_id)

    @property
    def workflow_id(self) -> str | None:
        return self.record.workflow_id

    @workflow_id.setter
    def workflow_id(self, value: str | None) -> None:
        self.record.workflow_id = value

    @property
    def status(self) -> str:
        return self.record.status or (RUNNING if self.started else PENDING)

    @property
    def started_at(self) -> str | None:
        return self.record.started_at

    @property
    def ended_at(self) -> str | None:
        return self.record.ended_at

    @property
    def error_code(self) -> str | None:
        return self.record.error_code

    @property
    def error(self) -> str | None:
        return self.record.error

    @property
    def start_seq(self) -> int:
        """The stream sequence of workflow_started: Wait nodes match events appended after it."""
        return self.record.start_seq or 0

    @property
    def started(self) -> bool:
        return self.plan is not None

    @property
    def finished(self) -> bool:
        return self.record.outcome is not None

    @property
    def parameters(self) -> dict[str, Any]:
        return dict((self.plan or {}).get("parameters") or {})

    # -- folding -------------------------------------------------------------------------

    def apply(self, event: Event, seq: int = 0) -> bool:
        """Fold one workflow event; False if this event id was already applied."""
        if event.event_id in self.seen:
            return False
        self.seen.add(event.event_id)
        finished = self.finished
        self.record.apply(event, seq)
        try:
            self._apply(event, finished)
        except (msgspec.ValidationError, TypeError) as exc:  # a body no version wrote
            log.warning("run %s: skipping a %s event: %s", self.run_id, event.type, exc)
        return True

    def _apply(self, event: Event, finished: bool) -> None:
        """Fold what ``event`` does to the nodes (its data read through its struct)."""
        kind = event.type
        if kind == WORKFLOW_STARTED:
            self._on_started(data_of(event, WorkflowStarted, lenient=True))
        elif kind in RUN_OUTCOMES:
            if not finished and self.status == CANCELLED:
                for each in self.nodes.values():
                    if not each.final:
                        each.status = CANCELLED
                    for item in each.items.values():
                        if not item.final:
                            item.status = CANCELLED
        elif kind == WORKFLOW_SIGNALED:
            signal = data_of(event, WorkflowSignaled, lenient=True)
            self.signals.setdefault(signal.name, []).append(
                {"signal_id": signal.signal_id, "data": signal.data, "at": event.at, "event_id": event.event_id}
            )
        elif kind in (MAP_ITEM_STARTED, MAP_ITEM_SUCCEEDED, MAP_ITEM_FAILED):
            self._on_item(event)
        elif kind == NODE_STARTED:
            self._on_node_started(event, data_of(event, NodeStarted, lenient=True))
        elif kind in _NODE_ENDS:
            self._on_node_end(event, data_of(event, _NODE_ENDS[kind], lenient=True))

    def _on_node_started(self, event: Event, started: NodeStarted) -> None:
        node = self.nodes.get(started.node_id)
        if node is None:
            return
        attempt = event.attempt or node.attempt
        node.status, node.attempt, node.retry_at = RUNNING, attempt, None
        node.started_at = node.started_at or event.at
        node.inputs = started
        node.items = {}
        node.attempts.append(Attempt(attempt, event.at, task_id=started.task_id))
        self._track(node.task_id, node.child_run_id, (node.id, None))

    def _on_node_end(self, event: Event, ended: RunData) -> None:
        node = self.nodes.get(getattr(ended, "node_id", ""))
        if node is None:
            return
        attempt = event.attempt or node.attempt
        if event.type in (NODE_SUCCEEDED, GATE_PASSED):
            node.status, node.ended_at = SUCCEEDED, event.at
            node.result = ended.result if isinstance(ended, NodeSucceeded) else None
            node.error_code = node.error = None
            self._close(node, attempt, event)
        elif event.type in (NODE_FAILED, GATE_FAILED):
            retry_at = ended.retry_at if isinstance(ended, NodeFailed) else None
            node.status = RETRYING if retry_at else FAILED
            node.retry_at = retry_at
            node.ended_at = None if retry_at else event.at
            if isinstance(ended, NodeFailed) and ended.result is not None:
                node.result = ended.result  # else the last result stands
            node.error_code, node.error = event.error_code, event.error
            self._close(node, attempt, event)
        elif isinstance(ended, NodeSkipped):
            node.status, node.ended_at = SKIPPED, event.at
            node.skip_reason = ended.reason
        if isinstance(ended, GateEvaluated):
            node.verdict = ended.verdict
        self._untrack(node.task_id, node.child_run_id)

    def _on_item(self, event: Event) -> None:
        data: MapItemStarted | MapItemEnded = (
            data_of(event, MapItemStarted, lenient=True)
            if event.type == MAP_ITEM_STARTED
            else data_of(event, MapItemEnded, lenient=True)
        )
        node = self.nodes.get(data.node_id)
        if node is None:
            return
        if event.attempt is not None and event.attempt != node.attempt:
            return  # an item of an earlier attempt
        item = node.items.setdefault(data.index, ItemState(data.index, started_at=event.at))
        if isinstance(data, MapItemStarted):
            item.inputs = data
            self._track(item.task_id, item.child_run_id, (node.id, data.index))
            return
        item.ended_at = event.at
        if event.type == MAP_ITEM_SUCCEEDED:
            item.status, item.result = SUCCEEDED, data.result
        else:
            item.status, item.error_code, item.error = FAILED, event.error_code, event.error
        self._untrack(item.task_id, item.child_run_id)

    def _track(self, task_id: str | None, child: str | None, where: tuple[str, int | None]) -> None:
        if task_id:
            self.running_tasks[task_id] = where
        if child:
            self.running_children[child] = where

    def _untrack(self, task_id: str | None, child: str | None) -> None:
        if task_id:
            self.running_tasks.pop(task_id, None)
        if child:
            self.running_children.pop(child, None)

    def _on_started(self, started: WorkflowStarted) -> None:
        self.plan = started.plan
        self.parent = msgspec.to_builtins(started.parent) if started.parent else None
        for spec in self.plan.get("nodes") or []:
            self.nodes.setdefault(spec["id"], NodeState(id=spec["id"], type=spec["type"]))

    @staticmethod
    def _close(node: NodeState, attempt: int, event: Event) -> None:
        for record in node.attempts:
            if record.attempt == attempt:
                record.ended_at = event.at
                record.status = SUCCEEDED if event.type in (NODE_SUCCEEDED, GATE_PASSED) else FAILED
                record.error_code, record.error = event.error_code, event.error

    # -- inputs --------------------------------------------------------------------------

    def observe_task(self, event: Event) -> bool:
        """Record a task's terminal event if it belongs to a running node (or map item)."""
        if event.type not in TERMINAL_TYPES or not event.task_id:
            return False
        if event.task_id not in self.running_tasks:
            return False
        self.task_outcomes.setdefault(event.task_id, event)
        return True

    def observe_child(self, child_run_id: str, outcome: dict[str, Any]) -> bool:
        """Record the end of a child run (``{"status", "error_code", "error", ...}``)."""
        if child_run_id not in self.running_children:
            return False
        self.child_outcomes.setdefault(child_run_id, outcome)
        return True

    def observe_match(self, node_id: str, attempt: int, event: dict[str, Any]) -> None:
        """Record the event a Wait node's attempt was waiting for."""
        self.matches.setdefault((node_id, attempt), event)

    # -- reading -------------------------------------------------------------------------

    def context(self) -> dict[str, Any]:
        """What conditions and templates read: ``params``, ``nodes``, ``run``."""
        return {
            "params": self.parameters,
            "nodes": {
                node.id: {
                    "status": node.status,
                    "result": node.result,
                    "task_id": node.task_id,
                    "attempt": node.attempt,
                    "error_code": node.error_code,
                    "error": node.error,
                    "verdict": node.verdict,
                }
                for node in self.nodes.values()
            },
            "run": {
                "id": self.run_id,
                "workflow_id": self.workflow_id,
                "status": self.status,
                "started_at": self.started_at,
            },
        }

    def artifacts(self) -> list[dict[str, str]]:
        """Artifact keys named in node results (``result.artifacts``)."""
        found = []
        for node in self.nodes.values():
            result = node.result if isinstance(node.result, dict) else {}
            if isinstance(result.get("data"), dict):  # a Wait's matched execute_done
                result = result["data"].get("result") or {}
            for key in result.get("artifacts") or [] if isinstance(result, dict) else []:
                if isinstance(key, str):
                    found.append({"node": node.id, "key": key})
        return found

    def duration_ms(self) -> float | None:
        start, end = timestamp(self.started_at), timestamp(self.ended_at)
        return round((end - start) * 1000.0, 3) if start and end else None

    def waiting_for(self) -> list[dict[str, Any]]:
        """Signal nodes that are running: what this run waits for from outside."""
        return [
            {
                "node": n.id,
                "name": n.inputs.name if n.inputs else None,
                "deadline": n.deadline,
                "since": n.attempts[-1].started_at if n.attempts else None,
            }
            for n in self.nodes.values()
            if n.type == "signal" and n.status == RUNNING
        ]

    def children(self) -> list[str]:
        """Child run ids started by workflow nodes and map items, in node order."""
        out: list[str] = []
        for node in self.nodes.values():
            if node.child_run_id:
                out.append(node.child_run_id)
            out.extend(i.child_run_id for _, i in sorted(node.items.items()) if i.child_run_id)
        return out

    def view(self) -> dict[str, Any]:
        """The run as the HTTP facade and the CLI show it."""
        return {
            "runId": self.run_id,
            "workflowId": self.workflow_id,
            "status": self.status,
            "parent": self.parent,
            "children": self.children(),
            "waitingFor": self.waiting_for(),
            "signals": sorted(self.signals),
            "startedAt": self.started_at,
            "endedAt": self.ended_at,
            "durationMs": self.duration_ms(),
            "errorCode": self.error_code,
            "error": self.error,
            "parameters": self.parameters,
            "nodes": [node.view() for node in self.nodes.values()],
            "gates": {
                node.id: {
                    "verdict": node.verdict,
                    "condition": node.inputs.condition if node.inputs else None,
                    "error": node.error,
                }
                for node in self.nodes.values()
                if node.type == "gate" and node.verdict
            },
            "artifacts": self.artifacts(),
        }

    def summary(self) -> dict[str, Any]:
        """A short account of the run so far (what Notify posts): ``status`` is the run's
        outcome once it has one; before that "failed" if a node failed (the run will fail),
        else "running" (a Notify node is itself still running while its body is built)."""
        failed = [n.id for n in self.nodes.values() if n.status == FAILED]
        status = self.status if self.finished else ("failed" if failed else RUNNING)
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "status": status,
            "started_at": self.started_at,
            "failed_nodes": failed,
            "nodes": {
                n.id: {
                    "status": n.status,
                    "attempt": n.attempt,
                    "error_code": n.error_code,
                    "error": n.error,
                }
                for n in self.nodes.values()
            },
            "gates": {n.id: n.verdict for n in self.nodes.values() if n.verdict},
            "artifacts": self.artifacts(),
        }


def fold(run_id: str, events: list[tuple[int, Event]]) -> RunState:
    """A run's state from its ``(stream sequence, event)`` pairs."""
    state = RunState(run_id=run_id)
    for seq, event in events:
        state.apply(event, seq)
    return state
