"""A task's life: its route, its assignment, its payload, its attempts and its end."""

from __future__ import annotations

from cogo.errors.base import CogoError


class RouteError(CogoError):
    """Raised when a route is wrong."""

    code = "route.error"


class UnknownRoute(RouteError):
    """Raised when no app declared the requested route."""

    code = "route.unknown"


class InvalidRoute(RouteError):
    """Raised when a route is not ``<service>.<role>.<shard>`` or uses a reserved service."""

    code = "route.invalid"


class RouteConflict(RouteError):
    """Raised when two apps or agents declare the same route (or consumer name)."""

    code = "route.conflict"


class AssignmentError(CogoError):
    """Raised when a task's ``__assignment`` envelope cannot be honoured."""

    code = "assignment.error"


class InvalidAssignment(AssignmentError):
    """Raised when an assignment value has the wrong type or is out of range."""

    code = "assignment.invalid"


class TtlExpired(AssignmentError):
    """Raised when a task outlived its ``ttl_ms`` before it could finish."""

    code = "assignment.ttl_expired"


class InvalidPayload(CogoError):
    """Raised when a task payload has the wrong shape for its route."""

    code = "payload.invalid"


class InvalidResult(CogoError):
    """Raised when a handler's return value is not JSON data or is too large for the bus."""

    code = "result.invalid"


class OutputInvalid(CogoError):
    """Raised when ``ctx.emit`` is given a value that is not JSON data, or one too large."""

    code = "output.invalid"


class AttemptError(CogoError):
    """Raised when one attempt of a worker fails; the dispatcher decides what is next."""

    code = "attempt.error"

    retryable = True


class AttemptTimeout(AttemptError):
    """Raised when a handler runs past the assignment's ``timeout_ms``."""

    code = "attempt.timeout"


class WorkerError(AttemptError):
    """Raised when a handler fails in a way another attempt may fix."""

    code = "worker.error"


class PermanentWorkerError(AttemptError):
    """Raised when a handler fails in a way no further attempt can fix."""

    code = "worker.permanent"
    retryable = False


class WebhookHostNotAllowed(PermanentWorkerError):
    """Raised when a webhook URL points at a host outside the notifier's allow-list."""

    code = "webhook.host_not_allowed"


class AttemptsExhausted(CogoError):
    """Raised when the last allowed attempt failed."""

    code = "attempts.exhausted"


class DeadLetter(CogoError):
    """Raised when JetStream gave up redelivering a message after ``max_deliver``."""

    code = "dead_letter"


class TaskFailed(CogoError):
    """Raised by ``TaskHandle.result()`` when the task ended in ``execute_failed``.

    ``code`` is the task's ``error_code`` (``worker.permanent``, ``budget.tokens_exceeded``,
    ...), ``message`` its ``error`` and ``attempts`` the attempts it made.
    """

    code = "task.failed"

    def __init__(self, code: str, message: str, attempts: int, *, task_id: str = "") -> None:
        super().__init__(message, detail={"task_id": task_id, "attempts": attempts})
        self.code = code
        self.attempts = attempts
        self.task_id = task_id

    def __str__(self) -> str:
        return f"[{self.code}] {self.message} (after {self.attempts} attempt(s))"


class TaskNotFound(CogoError):
    """Raised when the event log holds nothing for a task id."""

    code = "task.not_found"
