"""Workflow definitions, runs, schedules and their expressions."""

from __future__ import annotations

from cogo.errors.base import CogoError


class WorkflowError(CogoError):
    """Raised when a workflow definition, plan or run cannot go on."""

    code = "workflow.error"


class InvalidWorkflow(WorkflowError):
    """Raised when a definition or plan is wrong; ``detail`` lists field-level errors."""

    code = "workflow.invalid"


class InvalidParameters(InvalidWorkflow):
    """Raised when run parameters do not fit the definition's declared parameters."""

    code = "workflow.parameters_invalid"


class WorkflowNotFound(WorkflowError):
    """Raised when no workflow definition has the requested id."""

    code = "workflow.not_found"


class RunNotFound(WorkflowError):
    """Raised when the event log holds nothing for a run id."""

    code = "workflow.run_not_found"


class RunFinished(WorkflowError):
    """Raised when a run that already ended is signalled or cancelled."""

    code = "workflow.run_finished"


class WaitTimeout(WorkflowError):
    """Raised when a Wait node's deadline passes before its event or condition."""

    code = "workflow.wait_timeout"


class GateFailed(WorkflowError):
    """Raised when a Gate's condition is false or cannot be evaluated."""

    code = "workflow.gate_failed"


class ConditionUnmet(WorkflowError):
    """Raised when a Retry node's ``until`` condition is false after an attempt."""

    code = "workflow.condition_unmet"


class RunCancelled(WorkflowError):
    """Raised when a run was cancelled."""

    code = "workflow.cancelled"


class SignalTimeout(WorkflowError):
    """Raised when a Signal node's deadline passes before its signal arrived."""

    code = "workflow.signal_timeout"


class SignalUnknown(WorkflowError):
    """Raised when a signal names no signal node of the run."""

    code = "workflow.signal_unknown"


class ChildFailed(WorkflowError):
    """Raised when a child run (workflow node, map item) failed or was cancelled."""

    code = "workflow.child_failed"


class WorkflowCycle(WorkflowError):
    """Raised when a workflow node would run a workflow that is already its ancestor."""

    code = "workflow.cycle"


class ScheduleError(CogoError):
    """Raised when a schedule cannot be stored or fired."""

    code = "schedule.error"


class InvalidSchedule(ScheduleError):
    """Raised when a schedule's cron expression, interval or catch-up policy is wrong."""

    code = "schedule.invalid"


class ScheduleNotFound(ScheduleError):
    """Raised when no schedule has the given id."""

    code = "schedule.not_found"


class ExpressionError(CogoError):
    """Raised when a workflow condition or template is wrong."""

    code = "expression.error"


class InvalidExpression(ExpressionError):
    """Raised when an expression has bad syntax or uses something outside the whitelist."""

    code = "expression.invalid"


class ExpressionEvalError(ExpressionError):
    """Raised when evaluating an expression fails (missing key, null, wrong type)."""

    code = "expression.eval_failed"
