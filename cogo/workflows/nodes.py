"""Where each node of a workflow run stands: its attempts, its map items, its inputs.

``RunState`` (``cogo.workflows.run``) folds a run's node events into these; the engine reads
them to decide what comes next, and ``view`` is what ``/api/orchestrator/state`` shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cogo.streams.catalogue import MapItemStarted, NodeStarted

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
    inputs: MapItemStarted | None = None
    result: Any = None
    error_code: str | None = None
    error: str | None = None

    @property
    def task_id(self) -> str | None:
        return self.inputs.task_id if self.inputs else None

    @property
    def child_run_id(self) -> str | None:
        return self.inputs.child_run_id if self.inputs else None

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
    inputs: NodeStarted | None = None
    retry_at: float | None = None
    # a map node's items (current attempt), by index
    items: dict[int, ItemState] = field(default_factory=dict)

    @property
    def task_id(self) -> str | None:
        return self.inputs.task_id if self.inputs else None

    @property
    def child_run_id(self) -> str | None:
        return self.inputs.child_run_id if self.inputs else None

    @property
    def deadline(self) -> float | None:
        return self.inputs.deadline if self.inputs else None

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
            **({"signal": self.inputs.name if self.inputs else None} if self.type == "signal" else {}),
            **({"childRunId": self.child_run_id} if self.child_run_id else {}),
            **(
                {
                    "itemCount": self.inputs.count if self.inputs else None,
                    "items": [self.items[i].view() for i in sorted(self.items)],
                }
                if self.type == "map"
                else {}
            ),
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
