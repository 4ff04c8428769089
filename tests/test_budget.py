"""The budget rule, in one place: usage above ``max_tokens`` / ``max_cost_usd`` fails."""

from __future__ import annotations

from cogo.config import Backoff
from cogo.errors import CostBudgetExhausted, TokenBudgetExhausted
from cogo.streams.budget import over_budget
from cogo.streams.envelope import ResolvedAssignment, Usage

ASSIGNMENT = ResolvedAssignment(
    model="local",
    max_tokens=100,
    max_cost_usd=0.5,
    timeout_ms=1000,
    ttl_ms=10_000,
    max_attempts=3,
    backoff=Backoff(),
)


def test_reaching_a_limit_exactly_is_within_budget() -> None:
    assert over_budget(Usage(tokens=100, cost_usd=0.5), ASSIGNMENT) is None


def test_tokens_above_the_limit_fail_with_their_code() -> None:
    error = over_budget(Usage(tokens=101), ASSIGNMENT, "across 2 attempt(s)")
    assert isinstance(error, TokenBudgetExhausted)
    assert error.code == "budget.tokens_exceeded"
    assert str(error) == "used 101 tokens across 2 attempt(s), budget max_tokens=100"


def test_cost_above_the_limit_fails_with_its_code() -> None:
    error = over_budget(Usage(tokens=1, cost_usd=0.50001), ASSIGNMENT)
    assert isinstance(error, CostBudgetExhausted)
    assert error.code == "budget.cost_exceeded"


def test_tokens_are_checked_before_cost() -> None:
    assert isinstance(over_budget(Usage(tokens=200, cost_usd=9.0), ASSIGNMENT), TokenBudgetExhausted)
