"""Route policies, budgets and rollouts: what a task may ask for, and which version runs it."""

from __future__ import annotations

from cogo.errors.base import CogoError


class PolicyViolation(CogoError):
    """Raised when an assignment asks for more than the route policy allows."""

    code = "policy.violation"


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


class BypassDenied(PolicyViolation):
    """Raised when ``__assignment.bypass`` asks to lift a ceiling without a grant."""

    code = "policy.bypass_denied"


class BudgetExhausted(CogoError):
    """Raised when usage accumulated across attempts passed the assignment's budget."""

    code = "budget.exceeded"


class TokenBudgetExhausted(BudgetExhausted):
    """Raised when the tokens used across attempts passed ``max_tokens``."""

    code = "budget.tokens_exceeded"


class CostBudgetExhausted(BudgetExhausted):
    """Raised when the cost across attempts passed ``max_cost_usd``."""

    code = "budget.cost_exceeded"


class RolloutError(CogoError):
    """Raised when a rollout cannot be started or changed."""

    code = "rollout.error"


class RolloutNotFound(RolloutError):
    """Raised when no rollout has the given id."""

    code = "rollout.not_found"


class RolloutConflict(RolloutError):
    """Raised when a route already has an active rollout, or the rollout is already over."""

    code = "rollout.conflict"


class VersionGrantRefused(CogoError):
    """Raised when ``cogo up --auth`` refuses a versioned consumer: too many, or too fast."""

    code = "auth.version_refused"
