"""A workflow run's state: a fold over its events.

Nothing about a run is stored anywhere but the event log. ``RunState.apply`` folds one
workflow event (idempotently: an event id is applied once), so the orchestrator rebuilds
an unfinished run after a restart, and the HTTP facade answers ``/state`` by reading the
same events. Terminal task events (``execute_done`` / ``execute_failed``) and events
matched by Wait nodes are *inputs*: ``observe_task`` / ``observe_match`` record them, and
the engine turns them into node outcomes, which are events again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cogo.streams.events import EXECUTE_DONE, TERMINAL_TYPES, Event

WORKFLOW_STARTED = "workflow_started"
NODE_STARTED = "node_started"
NODE_SUCCEEDED = "node_succeeded"
NODE_FAILED = "node_failed"
NODE_SKIPPED = "node_skipped"
GATE_PASSED = "gate_passed"
GATE_FAILED = "gate_failed"
WORKFLOW_SUCCEEDED = "workflow_succeeded"
WORKFLOW_FAILED = "workflow_failed"
WORKFLOW_CANCELLED = "workflow_cancelled"

RUN_OUTCOMES = {
    WORKFLOW_SUCCEEDED: "succeeded",
    WORKFLOW_FAILED: "failed",
    WORKFLOW_CANCELLED: "cancelled",
}
WORKFLOW_EVENT_TYPES = (
    WORKFLOW_STARTED, NODE_STARTED, NODE_SUCCEEDED, NODE_FAILED, NODE_SKIPPED, GATE_PASSED,
    GATE_FAILED, *RUN_OUTCOMES,
)  # fmt: skip

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

    @property
    def task_id(self) -> str | None:
        return self.inputs.get("task_id")

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
                if self.status == CANCELLED:
                    for node in self.nodes.values():
                        if not node.final:
                            node.status = CANCELLED
            return True
        node = self.nodes.get(str(data.get("node_id")))
        if node is None:
            return True
        attempt = event.attempt or node.attempt
        if event.type == NODE_STARTED:
            node.status, node.attempt, node.retry_at = RUNNING, attempt, None
            node.started_at = node.started_at or event.at
            node.inputs = dict(data)
            node.attempts.append(Attempt(attempt, event.at, task_id=data.get("task_id")))
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
        return True

    def _on_started(self, event: Event, data: dict[str, Any], seq: int) -> None:
        self.plan = data.get("plan") or {}
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
        """Record a task's terminal event if it belongs to a running node of this run."""
        if event.type not in TERMINAL_TYPES or not event.task_id:
            return False
        for node in self.nodes.values():
            if node.status == RUNNING and node.task_id == event.task_id:
                self.task_outcomes.setdefault(event.task_id, event)
                return True
        return False

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

    def view(self) -> dict[str, Any]:
        """The run as the HTTP facade and the CLI show it."""
        return {
            "runId": self.run_id,
            "workflowId": self.workflow_id,
            "status": self.status,
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


def is_success(event: Event) -> bool:
    return event.type == EXECUTE_DONE
