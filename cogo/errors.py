"""Every error Cogo raises or reports, with a stable ``code``.

Codes travel in ``execute_failed`` events (``error_code``) and HTTP responses, so they are
part of the contract: add new ones, never rename.

CogoError                          root; ``code``, human ``message``, optional ``detail``
├── MessageError                   a message on the bus cannot be decoded
│   └── MalformedMessage           message.malformed: not JSON, wrong types, missing fields
├── RouteError
│   └── UnknownRoute               route.unknown: no actor consumes that route
├── AssignmentError                the task's ``__assignment`` envelope
│   ├── InvalidAssignment          assignment.invalid: wrong type or out-of-range value
│   └── TtlExpired                 assignment.ttl_expired: the task outlived its TTL
├── PolicyViolation                the assignment breaks a ceiling of the route policy
│   ├── ModelNotAllowed            policy.model_not_allowed
│   ├── TokensAboveCeiling         policy.max_tokens_exceeded
│   ├── CostAboveCeiling           policy.max_cost_exceeded
│   ├── AttemptsAboveCeiling       policy.max_attempts_exceeded
│   ├── TimeoutAboveCeiling        policy.timeout_exceeded
│   └── TtlAboveCeiling            policy.ttl_exceeded
├── BudgetExhausted                usage accumulated across attempts passed the budget
│   ├── TokenBudgetExhausted       budget.tokens_exceeded
│   └── CostBudgetExhausted        budget.cost_exceeded
├── AttemptError                   one attempt of a worker failed
│   ├── AttemptTimeout             attempt.timeout: the handler ran past ``timeout_ms``
│   ├── WorkerError                worker.error: the handler raised (retryable)
│   └── PermanentWorkerError       worker.permanent: the handler says retrying is useless
├── AttemptsExhausted              attempts.exhausted: the last allowed attempt failed
├── DeadLetter                     dead_letter: JetStream gave up after ``max_deliver``
├── BackpressureError              bus.backpressure: the event log refuses writes (full)
└── ConfigError                    config.invalid: a configuration file or value is wrong
"""

from __future__ import annotations

from typing import Any


class CogoError(Exception):
    """Root of every Cogo error; ``code`` is stable, ``message`` is for humans."""

    code = "cogo.error"
    retryable = False

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class MessageError(CogoError):
    """Raised when a message on the bus cannot be decoded."""


class MalformedMessage(MessageError):
    """Raised when a message is not JSON, has wrong types or misses a required field."""

    code = "message.malformed"


class RouteError(CogoError):
    """Raised when a route is wrong."""


class UnknownRoute(RouteError):
    """Raised when no actor consumes the requested route."""

    code = "route.unknown"


class AssignmentError(CogoError):
    """Raised when a task's ``__assignment`` envelope cannot be honoured."""


class InvalidAssignment(AssignmentError):
    """Raised when an assignment value has the wrong type or is out of range."""

    code = "assignment.invalid"


class TtlExpired(AssignmentError):
    """Raised when a task outlived its ``ttl_ms`` before it could finish."""

    code = "assignment.ttl_expired"


class PolicyViolation(CogoError):
    """Raised when an assignment asks for more than the route policy allows."""


class ModelNotAllowed(PolicyViolation):
    """Raised when the assignment's model is not in the route's allow-list."""

    code = "policy.model_not_allowed"


class TokensAboveCeiling(PolicyViolation):
    """Raised when ``max_tokens`` is above the route ceiling."""

    code = "policy.max_tokens_exceeded"


class CostAboveCeiling(PolicyViolation):
    """Raised when ``max_cost_usd`` is above the route ceiling."""

    code = "policy.max_cost_exceeded"


class AttemptsAboveCeiling(PolicyViolation):
    """Raised when ``max_attempts`` is above the route ceiling."""

    code = "policy.max_attempts_exceeded"


class TimeoutAboveCeiling(PolicyViolation):
    """Raised when ``timeout_ms`` is above the route ceiling."""

    code = "policy.timeout_exceeded"


class TtlAboveCeiling(PolicyViolation):
    """Raised when ``ttl_ms`` is above the route ceiling."""

    code = "policy.ttl_exceeded"


class BudgetExhausted(CogoError):
    """Raised when usage accumulated across attempts passed the assignment's budget."""


class TokenBudgetExhausted(BudgetExhausted):
    """Raised when the tokens used across attempts passed ``max_tokens``."""

    code = "budget.tokens_exceeded"


class CostBudgetExhausted(BudgetExhausted):
    """Raised when the cost across attempts passed ``max_cost_usd``."""

    code = "budget.cost_exceeded"


class AttemptError(CogoError):
    """Raised when one attempt of a worker fails; the dispatcher decides what is next."""

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


class AttemptsExhausted(CogoError):
    """Raised when the last allowed attempt failed."""

    code = "attempts.exhausted"


class DeadLetter(CogoError):
    """Raised when JetStream gave up redelivering a message after ``max_deliver``."""

    code = "dead_letter"


class BackpressureError(CogoError):
    """Raised when the bus refuses a write (stream full); the caller should retry later."""

    code = "bus.backpressure"
    retryable = True


class ConfigError(CogoError):
    """Raised when a configuration file or value is wrong."""

    code = "config.invalid"
