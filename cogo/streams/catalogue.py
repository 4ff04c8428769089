"""The event catalogue: every event type Cogo appends, and the shape of its ``data``.

One ``msgspec.Struct`` per event type, keyed by the type name in ``CATALOGUE`` (the event's
own ``type`` is the tag: it travels next to ``data``, not inside it, so the wire form is the
one docs/design.md §5 names). ``cogo.streams.events.make_event`` checks every event against this
catalogue before it can reach the stream: an unknown type, a missing required field or a
misspelled one fails where the event is built. Readers turn a decoded event's ``data`` into
its struct with ``data_of``; the SQL views' JSON paths are checked against these structs by
``tests/test_event_catalogue.py``.

A field typed ``Any`` or ``dict[str, Any]`` is free-form on purpose (a worker's result, a
plan, a policy): the catalogue fixes the path to it, not what lies below. Optional fields
default to ``None`` and are left out of the JSON when unset, as producers always did.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from cogo.streams.envelope import ResolvedAssignment, Waiting

# -- type names --------------------------------------------------------------------------

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
# the agent runtime (docs/design.md §11): one per LLM call, one per durable step's first success
LLM_CALL = "llm_call"
STEP_COMPLETED = "step_completed"
ARTIFACT_STORED = "artifact_stored"
# the indexer: batches of files (re)indexed or gone
FILE_INDEXED = "code_file_indexed"
FILE_REMOVED = "code_file_removed"
# route policies and rollouts
POLICY_CHANGED = "policy_changed"
ROUTE_FORGOTTEN = "route_forgotten"
POLICY_BYPASSED = "policy_bypassed"
ROLLOUT_STARTED = "rollout_started"
ROLLOUT_STAGE_CHANGED = "rollout_stage_changed"
ROLLOUT_GATE_EVALUATED = "rollout_gate_evaluated"
ROLLOUT_PROMOTED = "rollout_promoted"
ROLLOUT_ROLLED_BACK = "rollout_rolled_back"
ROLLOUT_PAUSED = "rollout_paused"
# workflow runs (cogo.workflows.run folds them)
WORKFLOW_STARTED = "workflow_started"
NODE_STARTED = "node_started"
NODE_SUCCEEDED = "node_succeeded"
NODE_FAILED = "node_failed"
NODE_SKIPPED = "node_skipped"
GATE_PASSED = "gate_passed"
GATE_FAILED = "gate_failed"
WORKFLOW_SIGNALED = "workflow_signaled"
MAP_ITEM_STARTED = "map_item_started"
MAP_ITEM_SUCCEEDED = "map_item_succeeded"
MAP_ITEM_FAILED = "map_item_failed"
WORKFLOW_SUCCEEDED = "workflow_succeeded"
WORKFLOW_FAILED = "workflow_failed"
WORKFLOW_CANCELLED = "workflow_cancelled"
# a run's outcome event -> its status
RUN_OUTCOMES = {
    WORKFLOW_SUCCEEDED: "succeeded",
    WORKFLOW_FAILED: "failed",
    WORKFLOW_CANCELLED: "cancelled",
}
WORKFLOW_EVENT_TYPES = (
    WORKFLOW_STARTED, NODE_STARTED, NODE_SUCCEEDED, NODE_FAILED, NODE_SKIPPED, GATE_PASSED,
    GATE_FAILED, WORKFLOW_SIGNALED, MAP_ITEM_STARTED, MAP_ITEM_SUCCEEDED, MAP_ITEM_FAILED,
    *RUN_OUTCOMES,
)  # fmt: skip


class EventData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The base of every event's ``data``."""


# -- tasks -------------------------------------------------------------------------------


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


# -- agent runtime -----------------------------------------------------------------------


class ArtifactRef(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """What was stored: the key, its size in bytes and its SHA-256 (hex)."""

    name: str
    size: int
    sha256: str


class LlmCall(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """One request to the LLM endpoint (its usage is the event's ``usage``); every field is
    written, nulls included (``step`` is null outside a step, ``finish_reason`` and
    ``reply_model`` when no reply came)."""

    model: str
    step: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    finish_reason: str | None
    usage_estimated: bool
    prompt_estimate: int
    max_tokens: int
    stream: bool
    retry: int
    tool_calls: int
    reply_model: str | None
    delivery: int
    # the reported usage was outside what was sent and received (a lying endpoint): what it
    # claimed and why it was not believed; the event's usage is what was charged
    usage_disputed: str | None = None


class StepCompleted(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A durable step's first result: inline, or in the artifact store when large."""

    step: str
    delivery: int = 1
    result: Any = None
    artifact: ArtifactRef | None = None
    # the request's place in the handler (durable agents check a replay asks the same) and
    # which run of the attempt journaled it (a resumed attempt runs again)
    seq: int | None = None
    run: int | None = None


class Symbol(msgspec.Struct, frozen=True, kw_only=True):
    """A class, function, import ... of an indexed file."""

    kind: str
    name: str
    line: int
    parent: str | None = None


class IndexedFile(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A file as the indexer saw it; removed files carry only ``path``."""

    path: str
    language: str | None = None
    size: int | None = None
    sha256: str | None = None
    lines: int | None = None
    symbols: list[Symbol] | None = None


class CodeFiles(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A batch of files of one repository (``code_file_indexed`` / ``code_file_removed``)."""

    repo: str
    files: list[IndexedFile]


# -- policies and rollouts ---------------------------------------------------------------


class PolicyChanged(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A route's runtime overrides changed (``changes`` laid over, or ``reset``)."""

    policy: dict[str, Any]
    overrides: dict[str, Any]
    changes: dict[str, Any] | None = None
    reset: bool | None = None


class RouteForgotten(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A route left the registry."""

    route: str


class PolicyBypassed(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A task ran with some policy checks bypassed: the audit of an honoured grant."""

    bypassed: list[str]
    assignment: ResolvedAssignment
    ceilings: dict[str, Any]
    # what granted it: "canary" (the route's canary cohort) or "principal" (a submitter named
    # in [policy] bypass_principals, then ``principal`` names it)
    granted_by: str | None = None
    principal: str | None = None


class RolloutData(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """Every rollout event names its rollout."""

    rollout_id: str


class RolloutStarted(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    candidate: str
    baseline: str | None = None
    slo_p90_ms: float | None = None
    min_samples: int | None = None


class RolloutStageChanged(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    stage: str
    title: str
    percent: int


class RolloutGateEvaluated(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    """One gate's verdict at the end of a stage, with the figures it was decided on."""

    stage: str
    name: str
    passed: bool
    detail: str
    candidate: float | None = None
    baseline: float | None = None
    limit: float | None = None


class RolloutPromoted(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    manual: bool
    previous_baseline: str | None = None


class RolloutRolledBack(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    stage: str | None = None
    reason: str


class RolloutPaused(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    stage: str | None = None
    percent: int


# -- workflow runs -----------------------------------------------------------------------


class ParentRun(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The run (and node, and map item) that started a child run."""

    runId: str  # noqa: N815 - the HTTP API's spelling, kept on the wire
    nodeId: str  # noqa: N815
    workflowId: str | None = None  # noqa: N815
    ancestry: list[str] = []
    index: int | None = None


class RunData(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """Every workflow event names its run and workflow."""

    run_id: str
    workflow_id: str | None = None


class WorkflowStarted(RunData, frozen=True, kw_only=True, omit_defaults=True):
    """The plan travels in the event, so the log alone can resume the run."""

    plan: dict[str, Any]
    parent: ParentRun | None = None


class RunEnded(RunData, frozen=True, kw_only=True, omit_defaults=True):
    """``workflow_succeeded`` / ``workflow_failed`` / ``workflow_cancelled``."""

    failed_nodes: list[str] = []
    parent: ParentRun | None = None  # a child that could not be planned


class WorkflowSignaled(RunData, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    signal_id: str
    data: Any = None


class NodeStarted(RunData, frozen=True, kw_only=True, omit_defaults=True):
    """A node's attempt began; which inputs it records depends on ``node_type``."""

    node_id: str
    node_type: str
    task_id: str | None = None  # publish / notify
    route: str | None = None
    task: dict[str, Any] | None = None
    deadline: float | None = None  # wait / signal
    deadline_at: str | None = None
    event: dict[str, Any] | None = None  # wait on an event
    condition: str | None = None  # wait on a condition / gate
    name: str | None = None  # signal
    child_run_id: str | None = None  # workflow
    workflow: str | None = None
    child: dict[str, Any] | None = None
    items: list[Any] | None = None  # map
    count: int | None = None
    max_parallel: int | None = None


class NodeSucceeded(RunData, frozen=True, kw_only=True, omit_defaults=True):
    node_id: str
    task_id: str | None = None
    result: Any = None


class NodeFailed(RunData, frozen=True, kw_only=True, omit_defaults=True):
    """A node's attempt failed; ``retry_at`` when another attempt is due."""

    node_id: str
    task_id: str | None = None
    result: Any = None
    retry_at: float | None = None
    retry_at_iso: str | None = None


class NodeSkipped(RunData, frozen=True, kw_only=True, omit_defaults=True):
    node_id: str
    reason: str


class GateEvaluated(RunData, frozen=True, kw_only=True, omit_defaults=True):
    """``gate_passed`` / ``gate_failed``."""

    node_id: str
    condition: str
    verdict: str


class MapItemStarted(RunData, frozen=True, kw_only=True, omit_defaults=True):
    node_id: str
    index: int
    task_id: str | None = None
    route: str | None = None
    task: dict[str, Any] | None = None
    child_run_id: str | None = None
    workflow: str | None = None
    child: dict[str, Any] | None = None


class MapItemEnded(RunData, frozen=True, kw_only=True, omit_defaults=True):
    """``map_item_succeeded`` / ``map_item_failed``."""

    node_id: str
    index: int
    result: Any = None


# -- the catalogue -----------------------------------------------------------------------

CATALOGUE: dict[str, type[EventData]] = {
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
    LLM_CALL: LlmCall,
    STEP_COMPLETED: StepCompleted,
    ARTIFACT_STORED: ArtifactRef,
    FILE_INDEXED: CodeFiles,
    FILE_REMOVED: CodeFiles,
    POLICY_CHANGED: PolicyChanged,
    ROUTE_FORGOTTEN: RouteForgotten,
    POLICY_BYPASSED: PolicyBypassed,
    ROLLOUT_STARTED: RolloutStarted,
    ROLLOUT_STAGE_CHANGED: RolloutStageChanged,
    ROLLOUT_GATE_EVALUATED: RolloutGateEvaluated,
    ROLLOUT_PROMOTED: RolloutPromoted,
    ROLLOUT_ROLLED_BACK: RolloutRolledBack,
    ROLLOUT_PAUSED: RolloutPaused,
    WORKFLOW_STARTED: WorkflowStarted,
    NODE_STARTED: NodeStarted,
    NODE_SUCCEEDED: NodeSucceeded,
    NODE_FAILED: NodeFailed,
    NODE_SKIPPED: NodeSkipped,
    GATE_PASSED: GateEvaluated,
    GATE_FAILED: GateEvaluated,
    WORKFLOW_SIGNALED: WorkflowSignaled,
    MAP_ITEM_STARTED: MapItemStarted,
    MAP_ITEM_SUCCEEDED: MapItemEnded,
    MAP_ITEM_FAILED: MapItemEnded,
    WORKFLOW_SUCCEEDED: RunEnded,
    WORKFLOW_FAILED: RunEnded,
    WORKFLOW_CANCELLED: RunEnded,
}

# fields of the event itself (docs/design.md §4/§5) a type must carry, beyond event_id/type/at
REQUIRED: dict[str, tuple[str, ...]] = {
    EXECUTE_ENQUEUED: ("task_id", "route", "attempt"),
    EXECUTE_STARTED: ("task_id", "route", "attempt"),
    EXECUTE_DONE: ("task_id", "attempt"),
    EXECUTE_RETRY: ("task_id", "attempt", "backoff_ms", "next_attempt_at", "error_code", "error"),
    EXECUTE_FAILED: ("task_id", "error_code", "error"),
    EXECUTE_THROTTLED: ("task_id", "route", "attempt"),
    LLM_CALL: ("task_id", "attempt", "usage"),
    STEP_COMPLETED: ("task_id", "attempt"),
    EXECUTE_SUSPENDED: ("task_id", "route", "attempt"),
    EXECUTE_RESUMED: ("task_id", "route", "attempt"),
    EXECUTE_CANCELLED: ("task_id", "error_code", "error"),
    TASK_SIGNALED: ("task_id",),
    CALL_STARTED: ("task_id",),
    CALL_COMPLETED: ("task_id",),
    **{t: ("correlation_id",) for t in WORKFLOW_EVENT_TYPES},
    **{t: ("error_code", "error") for t in (WORKFLOW_FAILED, WORKFLOW_CANCELLED)},
}

# names of each struct's fields: make_event refuses a dict with any other key
FIELDS: dict[str, frozenset[str]] = {
    t: frozenset(cls.__struct_fields__) for t, cls in CATALOGUE.items()
}
# types whose data may be left out (no required field)
DATA_OPTIONAL = frozenset(
    t for t, cls in CATALOGUE.items() if len(cls.__struct_defaults__) == len(FIELDS[t])
)

D = TypeVar("D", bound=EventData)


class UnknownEventType(ValueError):
    """Raised when an event's type is not in the catalogue."""


def data_type(type: str) -> type[EventData]:
    """The struct of ``type``'s data; UnknownEventType if the catalogue has no such type."""
    try:
        return CATALOGUE[type]
    except KeyError:
        raise UnknownEventType(f"event type {type!r} is not in cogo.streams.catalogue") from None


def checked_data(type: str, data: Any) -> EventData | None:
    """``data`` for an event of ``type``, checked against the catalogue.

    A struct must be the type's own; a dict is validated (every key a field of the struct,
    every required field there, every value of its field's type) and becomes the struct.
    Raises UnknownEventType, TypeError or ``msgspec.ValidationError``.
    """
    cls = data_type(type)
    if data is None:
        if type in DATA_OPTIONAL:
            return None
        raise TypeError(f"{type} events need data ({cls.__name__})")
    if data.__class__ is cls:
        return data
    if isinstance(data, dict):
        unknown = data.keys() - FIELDS[type]
        if unknown:
            raise TypeError(
                f"{type} data has no field(s) {sorted(unknown)}; {cls.__name__} has "
                f"{sorted(FIELDS[type])}"
            )
        return msgspec.convert(data, cls)
    raise TypeError(f"{type} data must be a {cls.__name__}, not {data.__class__.__name__}")


def data_of(event: Any, kind: type[D]) -> D:
    """The data of ``event`` (built here or decoded) as ``kind``, its type's struct or a
    base of it (``RunData`` reads any workflow event); TypeError if the event's type does
    not carry ``kind``, ``msgspec.ValidationError`` if its data does not fit."""
    cls = CATALOGUE.get(event.type)
    if cls is None or not issubclass(cls, kind):
        raise TypeError(f"a {event.type} event does not carry {kind.__name__}")
    data = event.data
    if isinstance(data, kind):
        return data
    return msgspec.convert(data or {}, kind)
