"""Every error Cogo raises or reports, with a stable ``code``.

Codes travel in ``execute_failed`` events (``error_code``) and HTTP responses, so they are
part of the contract: add new ones, never rename.

CogoError                          root; ``code``, human ``message``, optional ``detail``
├── MessageError                   a message on the bus cannot be decoded
│   └── MalformedMessage           message.malformed: not JSON, wrong types, missing fields, a route with wildcards
│       └── MessageTooLarge        message.too_large: a task message over the 1 MiB the HTTP facade also takes
├── RouteError
│   ├── UnknownRoute               route.unknown: no app declared that route
│   ├── InvalidRoute               route.invalid: not ``<service>.<role>.<shard>``, or a reserved service
│   └── RouteConflict              route.conflict: two apps (or agents) declare the same route
├── AppError                       loading or declaring an app (``cogo run/up --app``)
│   ├── AppNotFound                app.not_found: the module or attribute does not import
│   └── AgentNotFound              app.agent_not_found: the app has no agent of that name
├── AssignmentError                the task's ``__assignment`` envelope
│   ├── InvalidAssignment          assignment.invalid: wrong type or out-of-range value
│   └── TtlExpired                 assignment.ttl_expired: the task outlived its TTL
├── PolicyViolation                the assignment breaks a ceiling of the route policy
│   ├── ModelNotAllowed            policy.model_not_allowed
│   ├── TokensAboveCeiling         policy.max_tokens_exceeded
│   ├── CostAboveCeiling           policy.max_cost_exceeded
│   ├── AttemptsAboveCeiling       policy.max_attempts_exceeded
│   ├── TimeoutAboveCeiling        policy.timeout_exceeded
│   ├── TtlAboveCeiling            policy.ttl_exceeded
│   └── BypassDenied               policy.bypass_denied
├── BudgetExhausted                usage accumulated across attempts passed the budget
│   ├── TokenBudgetExhausted       budget.tokens_exceeded
│   └── CostBudgetExhausted        budget.cost_exceeded
├── AttemptError                   one attempt of a worker failed
│   ├── AttemptTimeout             attempt.timeout: the handler ran past ``timeout_ms``
│   ├── WorkerError                worker.error: the handler raised (retryable)
│   └── PermanentWorkerError       worker.permanent: the handler says retrying is useless
│       └── WebhookHostNotAllowed  webhook.host_not_allowed: the webhook URL's host is not allowed
├── AttemptsExhausted              attempts.exhausted: the last allowed attempt failed
├── DeadLetter                     dead_letter: JetStream gave up after ``max_deliver``
├── BackpressureError              bus.backpressure: the event log refuses writes (full)
├── ConfigError                    config.invalid: a configuration file or value is wrong
├── StartupError                   startup.failed: ``cogo up`` could not start (what it started is stopped)
│   ├── PortInUse                  startup.port_in_use: the NATS or HTTP port is taken by another process
│   ├── StoreInUse                 startup.store_in_use: a live process owns the JetStream store
│   └── ForeignServer              startup.foreign_server: what answers on the port is not the server started
├── InvalidPayload                 payload.invalid: the task payload has the wrong shape for its route
├── InvalidResult                  result.invalid: a handler returned something that is not JSON data, or too large
├── TaskFailed                     a task a client waited for ended in ``execute_failed`` (its own ``code``)
├── TaskNotFound                   task.not_found: no events for that task id
├── EditError                      a code edit cannot be accepted or applied (not retryable)
│   ├── InvalidEdit                edit.invalid: unknown ``op``, missing or mistyped fields
│   ├── EditPathInvalid            edit.path_invalid: absolute, ``..``, or escapes via a symlink
│   └── EditConflict               edit.conflict: the edit does not apply to the file as it is
├── LlmError                       llm.error: the LLM endpoint failed or timed out (retryable)
│   ├── LlmNotConfigured           llm.not_configured: ``COGO_LLM_BASE_URL`` is not set
│   ├── LlmRequestRejected         llm.rejected: the endpoint refused the request (4xx)
│   └── LlmBadReply                llm.bad_reply: the reply is malformed or holds nothing usable (retryable)
├── StepError                      a durable step (``ctx.step``) that cannot run or be journaled
│   ├── StepNameInvalid            step.name_invalid: empty, longer than 200 characters, or not printable
│   ├── StepNameReused             step.name_reused: a step of that name already ran in this attempt
│   ├── StepNested                 step.nested: ``ctx.step`` called inside another step's function
│   └── StepResultInvalid          step.result_invalid: the step's result has no JSON form
├── DurableError                   a durable agent's call, sleep, signal or cancel (``cogo.sdk.durable``)
│   ├── TaskNondeterministic       task.nondeterministic: a replay asked for other things than the journal holds
│   ├── TaskSignalTimeout          task.signal_timeout: ``ctx.wait_signal`` timed out (``cogo.SignalTimeout``)
│   ├── CallDepthExceeded          call.depth_exceeded: ``ctx.call`` nested deeper than ``[runtime] max_call_depth``
│   ├── SleepPastTtl               task.sleep_past_ttl: a sleep or wait would end after the task's ``ttl_ms``
│   ├── TaskCancelled              task.cancelled: the task was cancelled (its terminal ``error_code``)
│   └── TaskFinished               task.finished: a signal or cancel for a task that already ended
├── OutputInvalid                  output.invalid: ``ctx.emit`` of a value that is not JSON data, or too large
├── BuildError
│   └── RepoMissing                build.repo_missing: the repository is not a directory
├── ArtifactError
│   ├── ArtifactKeyInvalid         artifact.key_invalid: empty, absolute or ``..`` segments
│   └── ArtifactNotFound           artifact.not_found: no such object in the ``artifacts`` bucket
├── ProjectionError                projection.error: the DuckDB projection cannot be opened or built
│   └── ProjectionBusy             projection.busy: another process or a replay holds the file
│       └── ReplayRunning          projection.replay_running: a replay is already running
├── SqlError                       ad-hoc SQL (``cogo sql``, ``POST /api/sql``) failed
│   ├── SqlRejected                sql.rejected: not a read-only query, or it touched files/network
│   ├── SqlInvalid                 sql.invalid: DuckDB could not parse or bind the query
│   └── SqlTimeout                 sql.timeout: the query ran past its time limit and was interrupted
├── WorkflowError                  a workflow definition, plan or run
│   ├── InvalidWorkflow            workflow.invalid: a definition or plan is wrong (``detail``: field errors)
│   │   └── InvalidParameters      workflow.parameters_invalid: parameters do not fit the definition
│   ├── WorkflowNotFound           workflow.not_found: no definition with that id
│   ├── RunNotFound                workflow.run_not_found: no events for that run id
│   ├── RunFinished                workflow.run_finished: the run already ended (no signal, no cancel)
│   ├── WaitTimeout                workflow.wait_timeout: a Wait node's deadline passed
│   ├── GateFailed                 workflow.gate_failed: a Gate's condition did not hold
│   ├── ConditionUnmet             workflow.condition_unmet: a Retry's ``until`` still failed
│   ├── RunCancelled               workflow.cancelled: the run was cancelled
│   ├── SignalTimeout              workflow.signal_timeout: a Signal node's deadline passed
│   ├── SignalUnknown              workflow.signal_unknown: the run has no signal node of that name
│   ├── ChildFailed                workflow.child_failed: a child run did not succeed
│   └── WorkflowCycle              workflow.cycle: a workflow would (indirectly) run itself
├── ScheduleError                  a schedule of workflow runs (``/api/schedules``)
│   ├── InvalidSchedule            schedule.invalid: bad cron expression, interval or catch-up policy
│   └── ScheduleNotFound           schedule.not_found: no schedule with that id
├── ExpressionError                a workflow condition or ``${...}`` template
│   ├── InvalidExpression          expression.invalid: bad syntax, or outside the whitelist
│   └── ExpressionEvalError        expression.eval_failed: a value could not be read (missing key, type)
├── RolloutError                   a rollout of a worker version (``/api/rollouts``)
│   ├── RolloutNotFound            rollout.not_found: no rollout with that id
│   └── RolloutConflict            rollout.conflict: the route already has one running, or it is over
├── VersionGrantRefused            auth.version_refused: too many versions of a route, or granted too fast
├── Unavailable                    service.unavailable: what the request needs does not run in this process
│   └── BusUnavailable             bus.unavailable: NATS did not answer, or refused the write
└── RequestError                   an HTTP request the facade cannot take (``cogo.http.errors`` maps
    │                              every CogoError to its status; the body is ``{"detail", "code"}``)
    ├── InvalidJson                request.invalid_json: the body is empty or not JSON
    ├── JsonTooDeep                request.json_too_deep: arrays/objects nested past the limit
    ├── JsonNumberOutOfRange       request.number_out_of_range: an integer past 64 bits, or a huge float
    ├── RequestInvalid             request.invalid: fields are wrong (``detail`` lists each, by ``loc``)
    ├── BodyTooLarge               request.too_large: the body is over the size limit
    ├── RequestTimeout             request.timeout: the body did not arrive within the time limit
    ├── Unauthorized               auth.unauthorized: the bearer token is missing or wrong
    ├── NotFound                   http.not_found: no such path
    └── MethodNotAllowed           http.method_not_allowed: the path does not take that method
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


class MessageTooLarge(MalformedMessage):
    """Raised when a task message on the bus is larger than a submission may be."""

    code = "message.too_large"


class RouteError(CogoError):
    """Raised when a route is wrong."""


class UnknownRoute(RouteError):
    """Raised when no app declared the requested route."""

    code = "route.unknown"


class InvalidRoute(RouteError):
    """Raised when a route is not ``<service>.<role>.<shard>`` or uses a reserved service."""

    code = "route.invalid"


class RouteConflict(RouteError):
    """Raised when two apps or agents declare the same route (or consumer name)."""

    code = "route.conflict"


class AppError(CogoError):
    """Raised when an app cannot be loaded or declared."""

    code = "app.error"


class AppNotFound(AppError):
    """Raised when ``module:attr`` does not import or is not a ``cogo.App``."""

    code = "app.not_found"


class AgentNotFound(AppError):
    """Raised when an app has no agent of the requested name."""

    code = "app.agent_not_found"


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


class BypassDenied(PolicyViolation):
    """Raised when ``__assignment.bypass`` asks to lift a ceiling without a grant."""

    code = "policy.bypass_denied"


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


class StartupError(CogoError):
    """Raised when ``cogo up`` cannot start; everything it had started is stopped again."""

    code = "startup.failed"


class PortInUse(StartupError):
    """Raised when the NATS or HTTP port ``cogo up`` was to listen on is taken."""

    code = "startup.port_in_use"


class StoreInUse(StartupError):
    """Raised when another live process owns the JetStream store directory."""

    code = "startup.store_in_use"


class ForeignServer(StartupError):
    """Raised when the server answering on the port is not the one just started."""

    code = "startup.foreign_server"


class InvalidPayload(CogoError):
    """Raised when a task payload has the wrong shape for its route."""

    code = "payload.invalid"


class InvalidResult(CogoError):
    """Raised when a handler's return value is not JSON data or is too large for the bus."""

    code = "result.invalid"


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


class EditError(CogoError):
    """Raised when a code edit cannot be accepted or applied; retrying does not change it."""


class InvalidEdit(EditError):
    """Raised when an edit has an unknown ``op`` or missing / mistyped fields."""

    code = "edit.invalid"


class EditPathInvalid(EditError):
    """Raised when an edit path is absolute, holds ``..`` or resolves outside the workspace."""

    code = "edit.path_invalid"


class EditConflict(EditError):
    """Raised when an edit does not apply to the file as it is (search text or hunk missing)."""

    code = "edit.conflict"


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


class OutputInvalid(CogoError):
    """Raised when ``ctx.emit`` is given a value that is not JSON data, or one too large."""

    code = "output.invalid"


class BuildError(CogoError):
    """Raised when a build/test run cannot start for reasons outside the change."""


class RepoMissing(BuildError):
    """Raised when the repository to generate for or build is not a directory."""

    code = "build.repo_missing"


class ArtifactError(CogoError):
    """Raised when an artifact cannot be named, stored or found."""


class ArtifactKeyInvalid(ArtifactError):
    """Raised when an artifact key is empty, absolute or has ``.`` / ``..`` segments."""

    code = "artifact.key_invalid"


class ArtifactNotFound(ArtifactError):
    """Raised when the ``artifacts`` bucket holds no object under the key."""

    code = "artifact.not_found"


class ProjectionError(CogoError):
    """Raised when the DuckDB projection cannot be opened, migrated or rebuilt."""

    code = "projection.error"


class ProjectionBusy(ProjectionError):
    """Raised when another process owns the projection file, or a replay is running."""

    code = "projection.busy"


class ReplayRunning(ProjectionBusy):
    """Raised when a replay is asked for while one is running."""

    code = "projection.replay_running"


class SqlError(CogoError):
    """Raised when an ad-hoc SQL query cannot be run."""

    code = "sql.error"


class SqlRejected(SqlError):
    """Raised when a query is not read-only or reaches for files, network or extensions."""

    code = "sql.rejected"


class SqlInvalid(SqlError):
    """Raised when DuckDB cannot parse, bind or execute a query."""

    code = "sql.invalid"


class SqlTimeout(SqlError):
    """Raised when a query runs past its time limit and is interrupted."""

    code = "sql.timeout"


class WebhookHostNotAllowed(PermanentWorkerError):
    """Raised when a webhook URL points at a host outside the notifier's allow-list."""

    code = "webhook.host_not_allowed"


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


class RunFinished(WorkflowError):
    """Raised when a run that already ended is signalled or cancelled."""

    code = "workflow.run_finished"


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


class Unavailable(CogoError):
    """Raised when what a request needs (the projector, the rollout controller) does not run here."""

    code = "service.unavailable"
    retryable = True


class BusUnavailable(Unavailable):
    """Raised when NATS does not answer a request in time, or refuses a write."""

    code = "bus.unavailable"


class RequestError(CogoError):
    """Raised when the HTTP facade cannot take a request as sent."""

    code = "request.error"


class InvalidJson(RequestError):
    """Raised when a request body is empty or not JSON."""

    code = "request.invalid_json"


class JsonTooDeep(RequestError):
    """Raised when a JSON body nests arrays and objects deeper than the limit."""

    code = "request.json_too_deep"


class JsonNumberOutOfRange(RequestError):
    """Raised when a JSON body holds an integer past 64 bits or a float beyond double range."""

    code = "request.number_out_of_range"


class RequestInvalid(RequestError):
    """Raised when fields of a request are wrong; ``detail`` lists them (``loc``, ``msg``, ``type``)."""

    code = "request.invalid"


class BodyTooLarge(RequestError):
    """Raised when a request body is larger than the limit."""

    code = "request.too_large"


class RequestTimeout(RequestError):
    """Raised when a request body does not arrive within the time limit."""

    code = "request.timeout"


class Unauthorized(RequestError):
    """Raised when the bearer token is missing or wrong."""

    code = "auth.unauthorized"


class NotFound(RequestError):
    """Raised when no route serves the path."""

    code = "http.not_found"


class MethodNotAllowed(RequestError):
    """Raised when the path is served, but not for that method."""

    code = "http.method_not_allowed"
