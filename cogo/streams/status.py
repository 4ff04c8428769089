"""A task's status as ``GET /api/tasks/{id}``, ``cogo.tasks.status`` and ``Client.status`` answer.

The wire type only: the projector folds it from the task's events (``cogo.projections.tasks``);
the client and the facade read it.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["TERMINAL", "TaskStatus"]

# the events that end a task, and the status each one leaves
TERMINAL = {"execute_done": "succeeded", "execute_failed": "failed", "execute_cancelled": "cancelled"}


class TaskStatus(msgspec.Struct, frozen=True):
    """What ``GET /api/tasks/{task_id}`` and ``Client.status`` answer."""

    task_id: str
    route: str | None
    status: str  # queued | running | retrying | suspended | succeeded | failed | cancelled
    attempt: int
    result: Any = None
    error_code: str | None = None
    error: str | None = None
    usage: dict[str, Any] = msgspec.field(default_factory=dict)
    submitted_at: str | None = None
    finished_at: str | None = None
    events: list[dict[str, Any]] = msgspec.field(default_factory=list)
    # durable agents: who started it (ctx.call), whom it started, what it waits for now
    parent_id: str | None = None
    children: list[str] = msgspec.field(default_factory=list)
    waiting_for: list[dict[str, Any]] | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")
