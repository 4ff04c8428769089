"""Every error Cogo raises or reports, with a stable ``code``, grouped by domain.

Codes travel in ``execute_failed`` events (``error_code``), in HTTP error bodies and in the
CLI's messages, so they are part of the contract: add new ones, never rename. Each domain is
a module of this package; import every name from ``cogo.errors`` itself. The reference page
of error codes is generated from these classes (``scripts/gen_reference.py``), and
``tests/test_errors.py`` fails if a class has no code of its own, a code is used twice, or
the tree below leaves a class out.

CogoError                              cogo.error: root; ``code``, human ``message``, optional ``detail``
├── cogo.errors.tasks
│   ├── RouteError                     route.error
│   │   ├── UnknownRoute               route.unknown: no app declared that route
│   │   ├── InvalidRoute               route.invalid: not ``<service>.<role>.<shard>``, or a reserved service
│   │   └── RouteConflict              route.conflict: two apps (or agents) declare the same route
│   ├── AssignmentError                assignment.error: the task's ``__assignment`` envelope
│   │   ├── InvalidAssignment          assignment.invalid: wrong type or out-of-range value
│   │   └── TtlExpired                 assignment.ttl_expired: the task outlived its TTL
│   ├── InvalidPayload                 payload.invalid: the task payload has the wrong shape for its route
│   ├── InvalidResult                  result.invalid: a handler returned something that is not JSON data, or too large
│   ├── OutputInvalid                  output.invalid: ``ctx.emit`` of a value that is not JSON data, or too large
│   ├── AttemptError                   attempt.error: one attempt of a worker failed
│   │   ├── AttemptTimeout             attempt.timeout: the handler ran past ``timeout_ms``
│   │   ├── WorkerError                worker.error: the handler raised (retryable)
│   │   └── PermanentWorkerError       worker.permanent: the handler says retrying is useless
│   │       └── WebhookHostNotAllowed  webhook.host_not_allowed: the webhook URL's host is not allowed
│   ├── AttemptsExhausted              attempts.exhausted: the last allowed attempt failed
│   ├── DeadLetter                     dead_letter: JetStream gave up after ``max_deliver``
│   ├── TaskFailed                     task.failed: a task a client waited for ended in ``execute_failed`` (its own code)
│   └── TaskNotFound                   task.not_found: no events for that task id
├── cogo.errors.policy
│   ├── PolicyViolation                policy.violation: the assignment breaks a ceiling of the route policy
│   │   ├── ModelNotAllowed            policy.model_not_allowed
│   │   ├── TokensAboveCeiling         policy.max_tokens_exceeded
│   │   ├── CostAboveCeiling           policy.max_cost_exceeded
│   │   ├── AttemptsAboveCeiling       policy.max_attempts_exceeded
│   │   ├── TimeoutAboveCeiling        policy.timeout_exceeded
│   │   ├── TtlAboveCeiling            policy.ttl_exceeded
│   │   └── BypassDenied               policy.bypass_denied
│   ├── BudgetExhausted                budget.exceeded: usage accumulated across attempts passed the budget
│   │   ├── TokenBudgetExhausted       budget.tokens_exceeded
│   │   └── CostBudgetExhausted        budget.cost_exceeded
│   ├── RolloutError                   rollout.error: a rollout of a worker version (``/api/rollouts``)
│   │   ├── RolloutNotFound            rollout.not_found: no rollout with that id
│   │   └── RolloutConflict            rollout.conflict: the route already has one running, or it is over
│   └── VersionGrantRefused            auth.version_refused: too many versions of a route, or granted too fast
├── cogo.errors.agents
│   ├── LlmError                       llm.error: the LLM endpoint failed or timed out (retryable)
│   │   ├── LlmNotConfigured           llm.not_configured: ``COGO_LLM_BASE_URL`` is not set
│   │   ├── LlmRequestRejected         llm.rejected: the endpoint refused the request (4xx)
│   │   └── LlmBadReply                llm.bad_reply: the reply is malformed or holds nothing usable (retryable)
│   ├── StepError                      step.error: a durable step (``ctx.step``) that cannot run or be journaled
│   │   ├── StepNameInvalid            step.name_invalid: empty, longer than 200 characters, or not printable
│   │   ├── StepNameReused             step.name_reused: a step of that name already ran in this attempt
│   │   ├── StepNested                 step.nested: ``ctx.step`` called inside another step's function
│   │   └── StepResultInvalid          step.result_invalid: the step's result has no JSON form
│   └── DurableError                   durable.error: a durable agent's call, sleep, signal or cancel (``cogo.sdk.durable``)
│       ├── TaskNondeterministic       task.nondeterministic: a replay asked for other things than the journal holds
│       ├── TaskSignalTimeout          task.signal_timeout: ``ctx.wait_signal`` timed out (``cogo.SignalTimeout``)
│       ├── CallDepthExceeded          call.depth_exceeded: ``ctx.call`` nested deeper than ``[runtime] max_call_depth``
│       ├── SleepPastTtl               task.sleep_past_ttl: a sleep or wait would end after the task's ``ttl_ms``
│       ├── TaskCancelled              task.cancelled: the task was cancelled (its terminal ``error_code``)
│       └── TaskFinished               task.finished: a signal or cancel for a task that already ended
├── cogo.errors.workspace
│   ├── EditError                      edit.error: a code edit cannot be accepted or applied (not retryable)
│   │   ├── InvalidEdit                edit.invalid: unknown ``op``, missing or mistyped fields
│   │   ├── EditPathInvalid            edit.path_invalid: absolute, ``..``, or escapes via a symlink
│   │   └── EditConflict               edit.conflict: the edit does not apply to the file as it is
│   ├── BuildError                     build.error
│   │   └── RepoMissing                build.repo_missing: the repository is not a directory
│   └── ArtifactError                  artifact.error
│       ├── ArtifactKeyInvalid         artifact.key_invalid: empty, absolute or ``..`` segments
│       └── ArtifactNotFound           artifact.not_found: no such object in the ``artifacts`` bucket
├── cogo.errors.workflows
│   ├── WorkflowError                  workflow.error: a workflow definition, plan or run
│   │   ├── InvalidWorkflow            workflow.invalid: a definition or plan is wrong (``detail``: field errors)
│   │   │   └── InvalidParameters      workflow.parameters_invalid: parameters do not fit the definition
│   │   ├── WorkflowNotFound           workflow.not_found: no definition with that id
│   │   ├── RunNotFound                workflow.run_not_found: no events for that run id
│   │   ├── RunFinished                workflow.run_finished: the run already ended (no signal, no cancel)
│   │   ├── WaitTimeout                workflow.wait_timeout: a Wait node's deadline passed
│   │   ├── GateFailed                 workflow.gate_failed: a Gate's condition did not hold
│   │   ├── ConditionUnmet             workflow.condition_unmet: a Retry's ``until`` still failed
│   │   ├── RunCancelled               workflow.cancelled: the run was cancelled
│   │   ├── SignalTimeout              workflow.signal_timeout: a Signal node's deadline passed
│   │   ├── SignalUnknown              workflow.signal_unknown: the run has no signal node of that name
│   │   ├── ChildFailed                workflow.child_failed: a child run did not succeed
│   │   └── WorkflowCycle              workflow.cycle: a workflow would (indirectly) run itself
│   ├── ScheduleError                  schedule.error: a schedule of workflow runs (``/api/schedules``)
│   │   ├── InvalidSchedule            schedule.invalid: bad cron expression, interval or catch-up policy
│   │   └── ScheduleNotFound           schedule.not_found: no schedule with that id
│   └── ExpressionError                expression.error: a workflow condition or ``${...}`` template
│       ├── InvalidExpression          expression.invalid: bad syntax, or outside the whitelist
│       └── ExpressionEvalError        expression.eval_failed: a value could not be read (missing key, type)
├── cogo.errors.projections
│   ├── ProjectionError                projection.error: the DuckDB projection cannot be opened or built
│   │   └── ProjectionBusy             projection.busy: another process or a replay holds the file
│   │       └── ReplayRunning          projection.replay_running: a replay is already running
│   └── SqlError                       sql.error: ad-hoc SQL (``cogo sql``, ``POST /api/sql``) failed
│       ├── SqlRejected                sql.rejected: not a read-only query, or it touched files/network
│       ├── SqlInvalid                 sql.invalid: DuckDB could not parse or bind the query
│       └── SqlTimeout                 sql.timeout: the query ran past its time limit and was interrupted
├── cogo.errors.system
│   ├── MessageError                   message.error: a message on the bus cannot be decoded
│   │   └── MalformedMessage           message.malformed: not JSON, wrong types, missing fields, a route with wildcards
│   │       └── MessageTooLarge        message.too_large: a task message over the 1 MiB the HTTP facade also takes
│   ├── BackpressureError              bus.backpressure: the event log refuses writes (full)
│   ├── Unavailable                    service.unavailable: what the request needs does not run in this process
│   │   └── BusUnavailable             bus.unavailable: NATS did not answer, or refused the write
│   ├── ConfigError                    config.invalid: a configuration file or value is wrong
│   ├── StartupError                   startup.failed: ``cogo up`` could not start (what it started is stopped)
│   │   ├── PortInUse                  startup.port_in_use: the NATS or HTTP port is taken by another process
│   │   ├── StoreInUse                 startup.store_in_use: a live process owns the JetStream store
│   │   └── ForeignServer              startup.foreign_server: what answers on the port is not the server started
│   └── AppError                       app.error: loading or declaring an app (``cogo run/up --app``)
│       ├── AppNotFound                app.not_found: the module or attribute does not import
│       └── AgentNotFound              app.agent_not_found: the app has no agent of that name
└── cogo.errors.http
    └── RequestError                   request.error: an HTTP request the facade cannot take
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

from cogo.errors import agents, http, policy, projections, system, tasks, workflows, workspace
from cogo.errors.agents import (
    CallDepthExceeded,
    DurableError,
    LlmBadReply,
    LlmError,
    LlmNotConfigured,
    LlmRequestRejected,
    SleepPastTtl,
    StepError,
    StepNameInvalid,
    StepNameReused,
    StepNested,
    StepResultInvalid,
    TaskCancelled,
    TaskFinished,
    TaskNondeterministic,
    TaskSignalTimeout,
)
from cogo.errors.base import CogoError
from cogo.errors.http import (
    BodyTooLarge,
    InvalidJson,
    JsonNumberOutOfRange,
    JsonTooDeep,
    MethodNotAllowed,
    NotFound,
    RequestError,
    RequestInvalid,
    RequestTimeout,
    Unauthorized,
)
from cogo.errors.policy import (
    AttemptsAboveCeiling,
    BudgetExhausted,
    BypassDenied,
    CostAboveCeiling,
    CostBudgetExhausted,
    ModelNotAllowed,
    PolicyViolation,
    RolloutConflict,
    RolloutError,
    RolloutNotFound,
    TimeoutAboveCeiling,
    TokenBudgetExhausted,
    TokensAboveCeiling,
    TtlAboveCeiling,
    VersionGrantRefused,
)
from cogo.errors.projections import (
    ProjectionBusy,
    ProjectionError,
    ReplayRunning,
    SqlError,
    SqlInvalid,
    SqlRejected,
    SqlTimeout,
)
from cogo.errors.system import (
    AgentNotFound,
    AppError,
    AppNotFound,
    BackpressureError,
    BusUnavailable,
    ConfigError,
    ForeignServer,
    MalformedMessage,
    MessageError,
    MessageTooLarge,
    PortInUse,
    StartupError,
    StoreInUse,
    Unavailable,
)
from cogo.errors.tasks import (
    AssignmentError,
    AttemptError,
    AttemptsExhausted,
    AttemptTimeout,
    DeadLetter,
    InvalidAssignment,
    InvalidPayload,
    InvalidResult,
    InvalidRoute,
    OutputInvalid,
    PermanentWorkerError,
    RouteConflict,
    RouteError,
    TaskFailed,
    TaskNotFound,
    TtlExpired,
    UnknownRoute,
    WebhookHostNotAllowed,
    WorkerError,
)
from cogo.errors.workflows import (
    ChildFailed,
    ConditionUnmet,
    ExpressionError,
    ExpressionEvalError,
    GateFailed,
    InvalidExpression,
    InvalidParameters,
    InvalidSchedule,
    InvalidWorkflow,
    RunCancelled,
    RunFinished,
    RunNotFound,
    ScheduleError,
    ScheduleNotFound,
    SignalTimeout,
    SignalUnknown,
    WaitTimeout,
    WorkflowCycle,
    WorkflowError,
    WorkflowNotFound,
)
from cogo.errors.workspace import (
    ArtifactError,
    ArtifactKeyInvalid,
    ArtifactNotFound,
    BuildError,
    EditConflict,
    EditError,
    EditPathInvalid,
    InvalidEdit,
    RepoMissing,
)

# the domains, in the order the reference page lists them
DOMAINS = (tasks, policy, agents, workspace, workflows, projections, system, http)

__all__ = [
    "AgentNotFound",
    "AppError",
    "AppNotFound",
    "ArtifactError",
    "ArtifactKeyInvalid",
    "ArtifactNotFound",
    "AssignmentError",
    "AttemptError",
    "AttemptTimeout",
    "AttemptsAboveCeiling",
    "AttemptsExhausted",
    "BackpressureError",
    "BodyTooLarge",
    "BudgetExhausted",
    "BuildError",
    "BusUnavailable",
    "BypassDenied",
    "CallDepthExceeded",
    "ChildFailed",
    "CogoError",
    "ConditionUnmet",
    "ConfigError",
    "CostAboveCeiling",
    "CostBudgetExhausted",
    "DeadLetter",
    "DurableError",
    "EditConflict",
    "EditError",
    "EditPathInvalid",
    "ExpressionError",
    "ExpressionEvalError",
    "ForeignServer",
    "GateFailed",
    "InvalidAssignment",
    "InvalidEdit",
    "InvalidExpression",
    "InvalidJson",
    "InvalidParameters",
    "InvalidPayload",
    "InvalidResult",
    "InvalidRoute",
    "InvalidSchedule",
    "InvalidWorkflow",
    "JsonNumberOutOfRange",
    "JsonTooDeep",
    "LlmBadReply",
    "LlmError",
    "LlmNotConfigured",
    "LlmRequestRejected",
    "MalformedMessage",
    "MessageError",
    "MessageTooLarge",
    "MethodNotAllowed",
    "ModelNotAllowed",
    "NotFound",
    "OutputInvalid",
    "PermanentWorkerError",
    "PolicyViolation",
    "PortInUse",
    "ProjectionBusy",
    "ProjectionError",
    "ReplayRunning",
    "RepoMissing",
    "RequestError",
    "RequestInvalid",
    "RequestTimeout",
    "RolloutConflict",
    "RolloutError",
    "RolloutNotFound",
    "RouteConflict",
    "RouteError",
    "RunCancelled",
    "RunFinished",
    "RunNotFound",
    "ScheduleError",
    "ScheduleNotFound",
    "SignalTimeout",
    "SignalUnknown",
    "SleepPastTtl",
    "SqlError",
    "SqlInvalid",
    "SqlRejected",
    "SqlTimeout",
    "StartupError",
    "StepError",
    "StepNameInvalid",
    "StepNameReused",
    "StepNested",
    "StepResultInvalid",
    "StoreInUse",
    "TaskCancelled",
    "TaskFailed",
    "TaskFinished",
    "TaskNondeterministic",
    "TaskNotFound",
    "TaskSignalTimeout",
    "TimeoutAboveCeiling",
    "TokenBudgetExhausted",
    "TokensAboveCeiling",
    "TtlAboveCeiling",
    "TtlExpired",
    "Unauthorized",
    "Unavailable",
    "UnknownRoute",
    "VersionGrantRefused",
    "WaitTimeout",
    "WebhookHostNotAllowed",
    "WorkerError",
    "WorkflowCycle",
    "WorkflowError",
    "WorkflowNotFound",
]
