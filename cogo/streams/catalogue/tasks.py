"""A task's events: the dispatcher's audit trail, flow control's holds, and the journal of a
durable task (suspensions, signals, the children it called)."""

from __future__ import annotations

from typing import Any

from cogo.streams.catalogue.base import EventData
from cogo.streams.envelope import ResolvedAssignment, Waiting

# the dispatcher's audit trail of a task (docs/design.md §4)
EXECUTE_ENQUEUED = "execute_enqueued"
EXECUTE_RETRY = "execute_retry"
EXECUTE_FAILED = "execute_failed"
EXECUTE_DONE = "execute_done"
# a worker still running an attempt a moment after its claim (not for quick attempts)
EXECUTE_STARTED = "execute_started"
# flow control held an attempt back (once per attempt; data.limit says which limit)
EXECUTE_THROTTLED = "execute_throttled"
# durable agents (cogo.sdk.durable, cogo.runtime.suspension): a task gave back its worker
# to wait for a call, a timer or a signal; it was delivered again; it was cancelled
EXECUTE_SUSPENDED = "execute_suspended"
EXECUTE_RESUMED = "execute_resumed"
EXECUTE_CANCELLED = "execute_cancelled"
TERMINAL_TYPES = frozenset({EXECUTE_FAILED, EXECUTE_DONE, EXECUTE_CANCELLED})
# a durable task's journal beyond its steps: signals sent to it, the children it called
TASK_SIGNALED = "task_signaled"
CALL_STARTED = "call_started"
CALL_COMPLETED = "call_completed"


class ExecuteEnqueued(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """An attempt was forwarded to its route (``queue_wait_ms``: submit -> dispatch)."""

    submitted_at: str
    deadline: str
    assignment: ResolvedAssignment
    held_ms: float | None = None  # how long flow control held it first


class ExecuteStarted(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A worker is still running the attempt a moment after claiming it."""

    claimed_at: str
    delivery: int


class ExecuteDone(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """The worker succeeded; ``result`` is the handler's return value (docs/design.md §10)."""

    claimed_at: str
    submitted_at: str
    result: Any  # written even when null


class ExecuteRetry(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """An attempt failed and another is scheduled (``backoff_ms``, ``next_attempt_at``)."""

    claimed_at: str
    submitted_at: str


class ExecuteFailed(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """The task's terminal failure; ``error_code`` / ``error`` on the event say why.

    Timings are there when an attempt reached a worker; ``limit`` ... ``held_ms`` when the
    task expired while flow control held it."""

    claimed_at: str | None = None
    submitted_at: str | None = None
    detail: Any = None  # a validation error's field-level detail, as HTTP shows it
    last_error_code: str | None = None  # attempts exhausted / no time left: the last one
    limit: str | None = None
    key: str | None = None
    priority: int | None = None
    held_ms: float | None = None


class ExecuteThrottled(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """Flow control's first hold of an attempt (docs/design.md §14)."""

    limit: str
    key: str
    priority: int
    held_at: str
    limits: dict[str, Any]
    running: int
    waiting: int


class ExecuteSuspended(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """The attempt gave back its worker and flow slot until one of ``waiting_for`` arrives."""

    waiting_for: list[Waiting]
    resumes: int = 0  # how many times this attempt was resumed before


class ExecuteResumed(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A suspended attempt was delivered to its route again, woken by ``woken_by``."""

    resumes: int
    woken_by: str


class ExecuteCancelled(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """The task was cancelled (terminal); ``parent_id`` when its parent's cancel did it."""

    reason: str | None = None
    parent_id: str | None = None


class TaskSignaled(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A signal for ``ctx.wait_signal(name)``: the first one of a name counts."""

    name: str
    data: Any = None


class CallStarted(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """``ctx.call`` started child ``child_id`` with the budget carved for it."""

    child_id: str
    key: str
    child_route: str
    seq: int
    max_tokens: int
    max_cost_usd: float


class CallCompleted(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """Child ``child_id`` ended; ``tree_usage`` is its usage plus its descendants'."""

    child_id: str
    ok: bool
    result: Any = None
    error_code: str | None = None
    error: str | None = None
    attempts: int = 0
    tree_tokens: int = 0
    tree_cost_usd: float = 0.0


TYPES: dict[str, type[EventData]] = {
    EXECUTE_ENQUEUED: ExecuteEnqueued,
    EXECUTE_STARTED: ExecuteStarted,
    EXECUTE_DONE: ExecuteDone,
    EXECUTE_RETRY: ExecuteRetry,
    EXECUTE_FAILED: ExecuteFailed,
    EXECUTE_THROTTLED: ExecuteThrottled,
    EXECUTE_SUSPENDED: ExecuteSuspended,
    EXECUTE_RESUMED: ExecuteResumed,
    EXECUTE_CANCELLED: ExecuteCancelled,
    TASK_SIGNALED: TaskSignaled,
    CALL_STARTED: CallStarted,
    CALL_COMPLETED: CallCompleted,
}
# fields of the event itself a type must carry, beyond event_id/type/at
REQUIRED: dict[str, tuple[str, ...]] = {
    EXECUTE_ENQUEUED: ("task_id", "route", "attempt"),
    EXECUTE_STARTED: ("task_id", "route", "attempt"),
    EXECUTE_DONE: ("task_id", "attempt"),
    EXECUTE_RETRY: ("task_id", "attempt", "backoff_ms", "next_attempt_at", "error_code", "error"),
    EXECUTE_FAILED: ("task_id", "error_code", "error"),
    EXECUTE_THROTTLED: ("task_id", "route", "attempt"),
    EXECUTE_SUSPENDED: ("task_id", "route", "attempt"),
    EXECUTE_RESUMED: ("task_id", "route", "attempt"),
    EXECUTE_CANCELLED: ("task_id", "error_code", "error"),
    TASK_SIGNALED: ("task_id",),
    CALL_STARTED: ("task_id",),
    CALL_COMPLETED: ("task_id",),
}
