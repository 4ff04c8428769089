"""The agent runtime: LLM calls, durable steps, durable calls, sleeps and signals."""

from __future__ import annotations

from cogo.errors.base import CogoError


class LlmError(CogoError):
    """Raised when the LLM endpoint fails or times out; another attempt may succeed."""

    code = "llm.error"
    retryable = True


class LlmNotConfigured(LlmError):
    """Raised when ``COGO_LLM_BASE_URL`` is not set."""

    code = "llm.not_configured"
    retryable = False


class LlmRequestRejected(LlmError):
    """Raised when the endpoint refuses the request (a 4xx other than 408/429)."""

    code = "llm.rejected"
    retryable = False


class LlmBadReply(LlmError):
    """Raised when a reply is malformed or holds nothing usable; another attempt may do better."""

    code = "llm.bad_reply"


class StepError(CogoError):
    """Raised when a durable step cannot run or be journaled (a bug in the handler: no retry)."""

    code = "step.error"


class StepNameInvalid(StepError):
    """Raised when a step name is empty, longer than 200 characters or not printable."""

    code = "step.name_invalid"


class StepNameReused(StepError):
    """Raised when a step of the same name already ran in this attempt."""

    code = "step.name_reused"


class StepNested(StepError):
    """Raised when ``ctx.step`` is called inside another step's function."""

    code = "step.nested"


class StepResultInvalid(StepError):
    """Raised when a step's result has no JSON form (it could not be journaled)."""

    code = "step.result_invalid"


class DurableError(CogoError):
    """Raised when a durable agent's call, sleep, signal or cancel cannot go on."""

    code = "durable.error"


class TaskNondeterministic(DurableError):
    """Raised when a resumed or retried handler asks for other things than its journal holds."""

    code = "task.nondeterministic"


class TaskSignalTimeout(DurableError):
    """Raised in a handler when ``ctx.wait_signal`` timed out (exported as ``cogo.SignalTimeout``)."""

    code = "task.signal_timeout"


class CallDepthExceeded(DurableError):
    """Raised when ``ctx.call`` would nest children deeper than ``[runtime] max_call_depth``."""

    code = "call.depth_exceeded"


class SleepPastTtl(DurableError):
    """Raised when a sleep or a signal's timeout would end after the task's ``ttl_ms``."""

    code = "task.sleep_past_ttl"


class TaskCancelled(DurableError):
    """Raised when a task was cancelled (the terminal ``error_code`` of ``execute_cancelled``)."""

    code = "task.cancelled"


class TaskFinished(DurableError):
    """Raised when a signal or a cancel names a task that already ended."""

    code = "task.finished"
