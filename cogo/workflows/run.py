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

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
)
from cogo.streams.events import Event

# node statuses; the last four are final
PENDING, RUNNING, RETRYING = "pending", "running", "retrying"
SUCCEEDED, FAILED, SKIPPED, CANCELLED = "succeeded", "failed", "skipped", "cancelled"
NODE_FINAL = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED})


def timestamp(at: str | None) -> float | None:
    """An event's ISO ``at`` as unix seconds."""
    if not at:
        return None
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


@dataclass
class Attempt:
    """One attempt of a node."""

    attempt: int
    started_at: str
    task_id: str | None = None
    ended_at: str | None = None
    status: str = RUNNING
    error_code: str | None = None
    error: str | None = None


@dataclass
class ItemState:
    """One item of a map node's current attempt."""

    index: int
    status: str = RUNNING
    started_at: str | None = None
    ended_at: str | None = None
    # what map_item_started recorded: task_id/task, or child_run_id/child
    inputs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error_code: str | None = None
    error: str | None = None

    @property
    def task_id(self) -> str | None:
        return self.inputs.get("task_id")

    @property
    def child_run_id(self) -> str | None:
        return self.inputs.get("child_run_id")

    @property
    def final(self) -> bool:
        return self.status in NODE_FINAL

    def view(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "status": self.status,
            "taskId": self.task_id,
            "runId": self.child_run_id,
            "startedAt": self.started_at,
            "endedAt": self.ended_at,
            "result": self.result,
            "errorCode": self.error_code,
            "error": self.error,
        }


@dataclass
class NodeState:
    """Where one node of a run stands."""

    id: str
    type: str
    status: str = PENDING
    attempt: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    started_at: str | None = None
    ended_at: str | None = None
    result: Any = None
    error_code: str | None = None
    error: str | None = None
    verdict: str | None = None
    skip_reason: str | None = None
    # what the current attempt's node_started recorded (task, payload, deadline, filter)
    inputs: dict[str, Any] = field(default_factory=dict)
    retry_at: float | None = None
    # a map node's items (current attempt), by index
    items: dict[int, ItemState] = field(default_factory=dict)

    @property
    def task_id(self) -> str | None:
        return self.inputs.get("task_id")

    @property
    def child_run_id(self) -> str | None:
        return self.inputs.get("child_run_id")

    @property
    def deadline(self) -> float | None:
        return self.inputs.get("deadline")

    @property
    def attempt_started(self) -> float | None:
        return timestamp(self.attempts[-1].started_at) if self.attempts else None

    @property
    def final(self) -> bool:
        return self.status in NODE_FINAL

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "attempt": self.attempt,
            "taskId": self.task_id,
            "startedAt": self.started_at,
            "endedAt": self.ended_at,
            "retryAt": self.retry_at,
            "deadline": self.deadline,
            "result": self.result,
            "errorCode": self.error_code,
            "error": self.error,
            "verdict": self.verdict,
            "skipReason": self.skip_reason,
            **({"signal": self.inputs.get("name")} if self.type == "signal" else {}),
            **({"childRunId": self.child_run_id} if self.child_run_id else {}),
            **(
                {
                    "itemCount": self.inputs.get("count"),
                    "items": [self.items[i].view() for i in sorted(self.items)],
                }
                if self.type == "map"
                else {}
            ),  # fmt: skip
            "attempts": [
                {
                    "attempt": a.attempt,
                    "status": a.status,
                    "taskId": a.task_id,
                    "startedAt": a.started_at,
                    "endedAt": a.ended_at,
                    "errorCode": a.error_code,
                    "error": a.error,
                }
                for a in self.attempts
            ],
        }


@dataclass
class RunState:
    """The fold of one run's events."""

    run_id: str
    workflow_id: str | None = None
    status: str = PENDING
    plan: dict[str, Any] | None = None
    started_at: str | None = None
    ended_at: str | None = None
    error_code: str | None = None
    error: str | None = None
    # stream sequence of workflow_started: Wait nodes match events appended after it
    start_seq: int = 0
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

    @property
    def started(self) -> bool:
        return self.plan is not None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    @property
    def parameters(self) -> dict[str, Any]:
        return dict((self.plan or {}).get("parameters") or {})

    # -- folding -------------------------------------------------------------------------

    def apply(self, event: Event, seq: int = 0) -> bool:
        """Fold one workflow event; False if this event id was already applied."""
        if event.event_id in self.seen:
            return False
        self.seen.add(event.event_id)
        data = event.data or {}
        if event.type == WORKFLOW_STARTED:
            self._on_started(event, data, seq)
            return True
        if event.type in RUN_OUTCOMES:
            if not self.finished:
                self.status = RUN_OUTCOMES[event.type]
                self.ended_at = event.at
                self.error_code, self.error = event.error_code, event.error
                self.workflow_id = self.workflow_id or data.get("workflow_id")
                if self.status == CANCELLED:
                    for each in self.nodes.values():
                        if not each.final:
                            each.status = CANCELLED
                        for item in each.items.values():
                            if not item.final:
                                item.status = CANCELLED
            return True
        if event.type == WORKFLOW_SIGNALED:
            name = str(data.get("name"))
            self.signals.setdefault(name, []).append(
                {"signal_id": data.get("signal_id"), "data": data.get("data"), "at": event.at,
                 "event_id": event.event_id}
            )  # fmt: skip
            return True
        node = self.nodes.get(str(data.get("node_id")))
        if node is None:
            return True
        if event.type in (MAP_ITEM_STARTED, MAP_ITEM_SUCCEEDED, MAP_ITEM_FAILED):
            self._on_item(node, event, data)
            return True
        attempt = event.attempt or node.attempt
        if event.type == NODE_STARTED:
            node.status, node.attempt, node.retry_at = RUNNING, attempt, None
            node.started_at = node.started_at or event.at
            node.inputs = dict(data)
            node.items = {}
            node.attempts.append(Attempt(attempt, event.at, task_id=data.get("task_id")))
            self._track(node.task_id, node.child_run_id, (node.id, None))
        elif event.type in (NODE_SUCCEEDED, GATE_PASSED):
            node.status, node.ended_at = SUCCEEDED, event.at
            node.result = data.get("result")
            node.error_code = node.error = None
            self._close(node, attempt, event)
        elif event.type in (NODE_FAILED, GATE_FAILED):
            retry_at = data.get("retry_at")
            node.status = RETRYING if retry_at else FAILED
            node.retry_at = retry_at
            node.ended_at = None if retry_at else event.at
            node.result = data.get("result", node.result)
            node.error_code, node.error = event.error_code, event.error
            self._close(node, attempt, event)
        elif event.type == NODE_SKIPPED:
            node.status, node.ended_at = SKIPPED, event.at
            node.skip_reason = data.get("reason")
        if event.type in (GATE_PASSED, GATE_FAILED):
            node.verdict = data.get("verdict")
        if event.type != NODE_STARTED:
            self._untrack(node.task_id, node.child_run_id)
        return True

    def _on_item(self, node: NodeState, event: Event, data: dict[str, Any]) -> None:
        if event.attempt is not None and event.attempt != node.attempt:
            return  # an item of an earlier attempt
        index = int(data.get("index", -1))
        if event.type == MAP_ITEM_STARTED:
            item = node.items.setdefault(index, ItemState(index, started_at=event.at))
            item.inputs = dict(data)
            self._track(item.task_id, item.child_run_id, (node.id, index))
            return
        item = node.items.setdefault(index, ItemState(index, started_at=event.at))
        item.ended_at = event.at
        if event.type == MAP_ITEM_SUCCEEDED:
            item.status, item.result = SUCCEEDED, data.get("result")
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

    def _on_started(self, event: Event, data: dict[str, Any], seq: int) -> None:
        self.plan = data.get("plan") or {}
        self.parent = data.get("parent")
        self.workflow_id = data.get("workflow_id") or self.plan.get("workflow_id")
        self.started_at = event.at
        self.start_seq = seq
        if not self.finished:
            self.status = RUNNING
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
            {"node": n.id, "name": n.inputs.get("name"), "deadline": n.deadline,
             "since": n.attempts[-1].started_at if n.attempts else None}
            for n in self.nodes.values()
            if n.type == "signal" and n.status == RUNNING
        ]  # fmt: skip

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
                    "condition": node.inputs.get("condition"),
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
            },  # fmt: skip
            "gates": {n.id: n.verdict for n in self.nodes.values() if n.verdict},
            "artifacts": self.artifacts(),
        }


def fold(run_id: str, events: list[tuple[int, Event]]) -> RunState:
    """A run's state from its ``(stream sequence, event)`` pairs."""
    state = RunState(run_id=run_id)
    for seq, event in events:
        state.apply(event, seq)
    return state
