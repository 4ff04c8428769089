"""Wire types of tasks: what users submit, what the dispatcher sends workers, what comes back.

One module-level encoder and typed decoders, reused for every message (msgspec perf tips).

    user ──TaskMessage──▶ orchestrator.execute.0 ──WorkOrder──▶ <route>
    <route> worker ──WorkResult──▶ orchestrator.results.0 (RESULTS) ──▶ dispatcher ──▶ events
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

import msgspec

from cogo.config import Backoff
from cogo.errors import InvalidAssignment, MalformedMessage, MessageTooLarge
from cogo.streams.routes import ROUTE_PATTERN

ASSIGNMENT_KEY = "__assignment"
COHORT_KEY = "__cohort"  # payload pin: run this task on the canary or the baseline (rollouts)
# a child task started by ctx.call: {"parent": <task id>, "depth": <1 for a root's child>}
CALL_KEY = "__call"
# keys of a payload that are instructions to Cogo, not input of the handler
RESERVED_PAYLOAD_KEYS = frozenset({ASSIGNMENT_KEY, COHORT_KEY, CALL_KEY})
EXECUTE_SUBJECT = "orchestrator.execute.0"
# workers' reports, on the RESULTS stream (limits retention: an ack removes nothing, so a
# result costs one fsynced write instead of a write plus a removal on the work queue)
RESULTS_SUBJECT = "orchestrator.results.0"
# where workers of versions before RESULTS reported, on TASKS: still consumed (upgrades)
RESULT_SUBJECT = "orchestrator.result.0"
# workers report on their route's own subject of RESULTS, which only that route's app may
# publish to (cogo.streams.auth); the dispatcher counts a result only from its order's route
RESULTS_PREFIX = "results"
# the dispatcher's retries, due when their backoff is over (cogo.streams.schedule): only
# dispatchers may publish here; the public submit subject carries submissions only
RETRY_SUBJECT = "orchestrator.retry.0"

# headers
MSG_ID = "Nats-Msg-Id"
KIND_HEADER = "Cogo-Kind"  # "retry" on dispatcher-made retries of a task
# who submitted a task, as an authenticated front end (the HTTP facade) vouches for it: the
# name and its MAC under the dispatcher's key (cogo.streams.seal), bound to the task id
PRINCIPAL_HEADER = "Cogo-Principal"
PRINCIPAL_MAC_HEADER = "Cogo-Principal-Mac"


# the ranges decode_assignment enforces, and the JSON schema /openapi.json publishes
Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
# flow control (docs/design.md §14): who a task is for, and how urgent it is (higher first)
MAX_KEY_LENGTH = 256
DEFAULT_PRIORITY = 5
FlowKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=9)]


class BackoffSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Backoff as a user writes it: every key optional."""

    initial_ms: NonNegative | None = None
    multiplier: Annotated[float, msgspec.Meta(ge=1.0)] | None = None
    max_ms: NonNegative | None = None


class Assignment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``__assignment`` policy envelope as submitted; absent keys take route defaults."""

    model: Annotated[str, msgspec.Meta(min_length=1, pattern=r"\S")] | None = None
    max_tokens: Positive | None = None
    max_cost_usd: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    timeout_ms: Positive | None = None
    ttl_ms: Positive | None = None
    max_attempts: Positive | None = None
    backoff: BackoffSpec | None = None
    bypass: list[str] = msgspec.field(default_factory=list)
    key: FlowKey | None = None  # the tenant, user, repository... flow limits count per key
    priority: Priority | None = None  # 0-9, default 5; higher is admitted first


class ResolvedAssignment(msgspec.Struct, frozen=True):
    """An assignment with every key decided (defaults applied, ceilings checked)."""

    model: str
    max_tokens: int
    max_cost_usd: float
    timeout_ms: int
    ttl_ms: int
    max_attempts: int
    backoff: Backoff
    key: str | None = None
    priority: int = DEFAULT_PRIORITY
    # the models ``ctx.llm`` may call for this task (the route's ceiling); empty: any model
    allowed_models: tuple[str, ...] = ()


class TaskMessage(msgspec.Struct, frozen=True):
    """What a user publishes to ``orchestrator.execute.0`` (docs/design.md §3)."""

    route: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    task_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


class Usage(msgspec.Struct, frozen=True, omit_defaults=True):
    """Resources an attempt consumed; summed across attempts by the dispatcher."""

    tokens: int = 0
    cost_usd: float = 0.0
    duration_ms: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            tokens=self.tokens + other.tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 9),
            duration_ms=round(self.duration_ms + other.duration_ms, 3),
        )


class WorkOrder(msgspec.Struct, frozen=True):
    """One attempt of a task, sent by the dispatcher to the task's route."""

    task_id: str
    route: str
    attempt: int
    payload: dict[str, Any]
    assignment: ResolvedAssignment
    submitted_at: float  # unix seconds, when the task entered the bus
    deadline: float  # unix seconds, submitted_at + ttl
    correlation_id: str
    causation_id: str | None = None
    usage_so_far: Usage = Usage()
    not_before: float = 0.0  # unix seconds; retries wait for their backoff
    version: str | None = None
    cohort: str | None = None
    # flow control: the slot this attempt holds (``cogo.streams.flow``), released when its
    # result is handled, and how long admission held it back (part of its queue wait)
    flow_slot: str | None = None
    held_ms: float = 0.0
    # an earlier attempt may have written to the task's output (ctx.emit): the dispatcher
    # then closes it with an end marker when the task ends
    emitted: bool = False
    # the submitter's W3C traceparent (cogo.tracing): the task span's parent, kept here
    # because retries and flow-control holds re-publish the order without its headers
    traceparent: str | None = None
    # under --auth (cogo.streams.seal): the task's token (guards its message ids), the key of
    # its output's MACs, and the dispatcher's seal over everything else in the order
    token: str | None = None
    out_token: str | None = None
    # the ceiling checks a granted __assignment.bypass lifted (re-checked on every retry)
    bypass: tuple[str, ...] = ()
    seal: str | None = None
    # durable agents: how many times this attempt was resumed after a suspension
    resumes: int = 0


class Waiting(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One thing a suspended task waits for: a child (``call``, ``name`` its task id), a
    ``signal`` (``name``) or a ``timer``; ``until`` is when a timer or a signal's timeout is
    due (unix seconds)."""

    kind: str
    name: str = ""
    until: float | None = None


class WorkResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """A worker's report on one attempt, sent to ``orchestrator.results.0`` (``RESULTS``)."""

    order: WorkOrder
    ok: bool
    actor: str
    claimed_at: float
    queue_wait_ms: float
    duration_ms: float
    delivery: int = 1
    result: Any = None
    usage: Usage = Usage()
    error_code: str | None = None
    error: str | None = None
    retryable: bool = True
    version: str | None = None
    detail: Any = None  # the error's structured detail (e.g. the payload field that failed)
    emitted: bool = False  # this attempt wrote to the task's output (ctx.emit)
    # durable agents: the run gave back its worker until one of these arrives
    suspended: list[Waiting] | None = None
    # the run ended because the task was cancelled; children it started and that had not
    # ended (cancelled in turn), and what its ended children's trees spent
    cancelled: bool = False
    children: list[str] | None = None
    tree_usage: Usage | None = None
    durable: bool = False  # the handler used calls, sleeps or signals


def result_subject(route: str) -> str:
    """Where a worker of ``route`` reports: ``results.<route>``."""
    return f"{RESULTS_PREFIX}.{route}"


def route_of_result(subject: str) -> str | None:
    """The route a result's subject speaks for (None: the shared subjects of old workers)."""
    prefix = RESULTS_PREFIX + "."
    return subject[len(prefix) :] if subject.startswith(prefix) else None


encoder = msgspec.json.Encoder()
_task_decoder = msgspec.json.Decoder(TaskMessage)
_ROUTE = re.compile(ROUTE_PATTERN)
MAX_TASK_BYTES = 1024 * 1024  # as the HTTP facade's body limit (cogo.http.state)
_order_decoder = msgspec.json.Decoder(WorkOrder)
_result_decoder = msgspec.json.Decoder(WorkResult)


def new_id() -> str:
    """A fresh random id (uuid4 hex)."""
    return uuid.uuid4().hex


def decode_task(data: bytes) -> TaskMessage:
    """Decode a submitted task; raise MalformedMessage with the field path on error."""
    if len(data) > MAX_TASK_BYTES:
        raise MessageTooLarge(
            f"task message of {len(data)} bytes: a submission is at most {MAX_TASK_BYTES} "
            "bytes, over NATS as over HTTP; put large inputs in the artifact store"
        )
    try:
        task = _task_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MalformedMessage(f"invalid task message: {exc}", detail=str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"task message is not valid JSON: {exc}") from exc
    if not task.route:
        raise MalformedMessage("invalid task message: `route` is empty - at `$.route`")
    if not is_route(task.route):
        # a wildcard (`echo.*.>`) is no subject to publish to: refused before any lookup
        raise MalformedMessage(
            f"invalid task message: `route` {task.route[:200]!r} is not <service>.<role>.<shard>"
            " (letters, digits, '-' or '_'; the shard a number) - at `$.route`"
        )
    if task.task_id is not None and not _valid_id(task.task_id):
        raise MalformedMessage(
            "invalid task message: `task_id` must be 1-200 printable characters without spaces - at `$.task_id`"
        )
    return task


def is_route(value: str) -> bool:
    """Whether ``value`` has the form of a route (and so is a subject without wildcards)."""
    return _ROUTE.match(value) is not None


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= 200 and value.isprintable() and " " not in value


def decode_assignment(payload: dict[str, Any]) -> Assignment:
    """Extract the ``__assignment`` envelope from a payload (absent means all defaults)."""
    raw = payload.get(ASSIGNMENT_KEY)
    if raw is None:
        return Assignment()
    try:
        assignment = msgspec.convert(_integral_floats_as_ints(raw), Assignment)
    except msgspec.ValidationError as exc:
        path = str(exc).replace("`$", f"`$.payload.{ASSIGNMENT_KEY}")
        raise InvalidAssignment(f"invalid __assignment: {path}", detail=path) from exc
    _check_ranges(assignment)
    return assignment


def _integral_floats_as_ints(raw: Any) -> Any:
    """``5.0`` where an integer is expected reads as 5: JSON has one number type, and a
    JSON Schema ``integer`` includes 5.0 (JavaScript clients send it that way, too)."""
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    for key, value in raw.items():
        if isinstance(value, float) and value.is_integer() and key in _INT_FIELDS:
            out[key] = int(value)
        elif key == "backoff" and isinstance(value, dict):
            out[key] = {
                k: int(v) if isinstance(v, float) and v.is_integer() and k != "multiplier" else v
                for k, v in value.items()
            }
    return out


_INT_FIELDS = frozenset({"max_tokens", "timeout_ms", "ttl_ms", "max_attempts", "priority"})


def _check_ranges(a: Assignment) -> None:
    def bad(field: str, why: str) -> InvalidAssignment:
        where = f"$.payload.{ASSIGNMENT_KEY}.{field}"
        return InvalidAssignment(f"invalid __assignment: `{field}` {why} - at `{where}`", detail=where)

    for field in ("max_tokens", "timeout_ms", "ttl_ms", "max_attempts"):
        value = getattr(a, field)
        if value is not None and value <= 0:
            raise bad(field, "must be > 0")
    if a.max_cost_usd is not None and a.max_cost_usd < 0:
        raise bad("max_cost_usd", "must be >= 0")
    if a.model is not None and not a.model.strip():
        raise bad("model", "must not be empty")
    if a.backoff is not None:
        b = a.backoff
        if b.initial_ms is not None and b.initial_ms < 0:
            raise bad("backoff.initial_ms", "must be >= 0")
        if b.multiplier is not None and b.multiplier < 1.0:
            raise bad("backoff.multiplier", "must be >= 1.0")
        if b.max_ms is not None and b.max_ms < 0:
            raise bad("backoff.max_ms", "must be >= 0")


def decode_order(data: bytes) -> WorkOrder:
    """Decode a work order; raise MalformedMessage on error."""
    try:
        return _order_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"invalid work order: {exc}") from exc


def decode_result(data: bytes) -> WorkResult:
    """Decode a worker's result; raise MalformedMessage on error."""
    try:
        return _result_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"invalid work result: {exc}") from exc
