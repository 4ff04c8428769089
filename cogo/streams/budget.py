"""A task's budget: ``max_tokens`` and ``max_cost_usd`` of its resolved assignment.

One rule, checked where usage becomes known: the worker as an attempt reports usage
(``TaskContext.report_usage``: the budget holds mid-attempt), the dispatcher when an
attempt's result arrives (usage summed across attempts), the suspension keeper when a
durable run parks (its tree's usage), and the unit-test harness. Usage *above* a limit is
over budget; reaching it exactly is not. Tokens are checked first: a task over both
limits fails with ``budget.tokens_exceeded``.

    error = over_budget(spent, order.assignment, "across 2 attempt(s)")
    if error is not None:
        raise error
"""

from __future__ import annotations

from cogo.errors import BudgetExhausted, CostBudgetExhausted, TokenBudgetExhausted
from cogo.streams.envelope import ResolvedAssignment, Usage


def over_budget(spent: Usage, assignment: ResolvedAssignment, scope: str = "") -> BudgetExhausted | None:
    """The error ``spent`` earns under ``assignment``'s budget; None while within it.

    ``scope`` says whose usage it is in the message (``"across 2 attempt(s)"``).
    """
    where = f" {scope}" if scope else ""
    if spent.tokens > assignment.max_tokens:
        return TokenBudgetExhausted(f"used {spent.tokens} tokens{where}, budget max_tokens={assignment.max_tokens}")
    if spent.cost_usd > assignment.max_cost_usd:
        return CostBudgetExhausted(f"spent ${spent.cost_usd:.4f}{where}, budget max_cost_usd={assignment.max_cost_usd}")
    return None
