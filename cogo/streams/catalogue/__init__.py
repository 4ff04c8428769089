"""The event catalogue: every event type Cogo appends, and the shape of its ``data``.

One ``msgspec.Struct`` per event type, keyed by the type name in ``CATALOGUE`` (the event's
own ``type`` is the tag: it travels next to ``data``, not inside it). The types are grouped
by domain, one module each: ``tasks`` (a task's life and a durable task's journal),
``agents`` (LLM calls, steps, artifacts, indexed files), ``policies`` (route policies and
rollouts) and ``workflows`` (workflow runs); import every name from this package.

``cogo.streams.events.make_event`` checks every event against this catalogue before it can
reach the stream: an unknown type, a missing required field or a misspelled one fails where
the event is built. Readers turn a decoded event's ``data`` into its struct with
``data_of``, never by key: fields an older producer left out take their defaults. The SQL
views' JSON paths are checked against these structs by ``tests/test_event_catalogue.py``.

A field typed ``Any`` or ``dict[str, Any]`` is free-form on purpose (a worker's result, a
plan, a policy): the catalogue fixes the path to it, not what lies below. Optional fields
default to ``None`` and are left out of the JSON when unset, as producers always did.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import msgspec

from cogo.streams.catalogue import agents, policies, tasks, workflows
from cogo.streams.catalogue.agents import (
    ARTIFACT_STORED,
    FILE_INDEXED,
    FILE_REMOVED,
    LLM_CALL,
    STEP_COMPLETED,
    ArtifactRef,
    CodeFiles,
    IndexedFile,
    LlmCall,
    StepCompleted,
    Symbol,
)
from cogo.streams.catalogue.base import (
    EventData,
)
from cogo.streams.catalogue.policies import (
    POLICY_BYPASSED,
    POLICY_CHANGED,
    ROLLOUT_GATE_EVALUATED,
    ROLLOUT_PAUSED,
    ROLLOUT_PROMOTED,
    ROLLOUT_ROLLED_BACK,
    ROLLOUT_STAGE_CHANGED,
    ROLLOUT_STARTED,
    ROUTE_FORGOTTEN,
    PolicyBypassed,
    PolicyChanged,
    RolloutData,
    RolloutGateEvaluated,
    RolloutPaused,
    RolloutPromoted,
    RolloutRolledBack,
    RolloutStageChanged,
    RolloutStarted,
    RouteForgotten,
)
from cogo.streams.catalogue.tasks import (
    CALL_COMPLETED,
    CALL_STARTED,
    EXECUTE_CANCELLED,
    EXECUTE_DONE,
    EXECUTE_ENQUEUED,
    EXECUTE_FAILED,
    EXECUTE_RESUMED,
    EXECUTE_RETRY,
    EXECUTE_STARTED,
    EXECUTE_SUSPENDED,
    EXECUTE_THROTTLED,
    TASK_SIGNALED,
    TERMINAL_TYPES,
    CallCompleted,
    CallStarted,
    ExecuteCancelled,
    ExecuteDone,
    ExecuteEnqueued,
    ExecuteFailed,
    ExecuteResumed,
    ExecuteRetry,
    ExecuteStarted,
    ExecuteSuspended,
    ExecuteThrottled,
    TaskSignaled,
)
from cogo.streams.catalogue.workflows import (
    GATE_FAILED,
    GATE_PASSED,
    MAP_ITEM_FAILED,
    MAP_ITEM_STARTED,
    MAP_ITEM_SUCCEEDED,
    NODE_FAILED,
    NODE_SKIPPED,
    NODE_STARTED,
    NODE_SUCCEEDED,
    RUN_OUTCOMES,
    WORKFLOW_CANCELLED,
    WORKFLOW_EVENT_TYPES,
    WORKFLOW_FAILED,
    WORKFLOW_SIGNALED,
    WORKFLOW_STARTED,
    WORKFLOW_SUCCEEDED,
    GateEvaluated,
    MapItemEnded,
    MapItemStarted,
    NodeFailed,
    NodeSkipped,
    NodeStarted,
    NodeSucceeded,
    ParentRun,
    RunData,
    RunEnded,
    WorkflowSignaled,
    WorkflowStarted,
)

# every type, in the order of the domains
CATALOGUE: dict[str, type[EventData]] = {
    **tasks.TYPES,
    **agents.TYPES,
    **policies.TYPES,
    **workflows.TYPES,
}
# fields of the event itself a type must carry, beyond event_id/type/at
REQUIRED: dict[str, tuple[str, ...]] = {
    **tasks.REQUIRED,
    **agents.REQUIRED,
    **workflows.REQUIRED,
}

# names of each struct's fields: make_event refuses a dict with any other key
FIELDS: dict[str, frozenset[str]] = {t: frozenset(cls.__struct_fields__) for t, cls in CATALOGUE.items()}
# types whose data may be left out (no required field)
DATA_OPTIONAL = frozenset(t for t, cls in CATALOGUE.items() if len(cls.__struct_defaults__) == len(FIELDS[t]))

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
            raise TypeError(f"{type} data has no field(s) {sorted(unknown)}; {cls.__name__} has {sorted(FIELDS[type])}")
        return msgspec.convert(data, cls)
    raise TypeError(f"{type} data must be a {cls.__name__}, not {data.__class__.__name__}")


def data_of(event: Any, kind: type[D], *, lenient: bool = False) -> D:
    """The data of ``event`` (built here or decoded) as ``kind``, its type's struct or a
    base of it (``RunData`` reads any workflow event); TypeError if the event's type does
    not carry ``kind``, ``msgspec.ValidationError`` if its data does not fit.

    Optional fields an older producer left out take their defaults. ``lenient`` is for
    folds over the whole log: a *required* field it left out (at any depth) reads as its
    type's empty value (``""``, ``0``, ``[]``, ``{}``, None) instead of failing; a value
    of the wrong type still fails.
    """
    cls = CATALOGUE.get(event.type)
    if cls is None or not issubclass(cls, kind):
        raise TypeError(f"a {event.type} event does not carry {kind.__name__}")
    data = event.data
    if isinstance(data, kind):
        return data
    try:
        return msgspec.convert(data or {}, kind)
    except msgspec.ValidationError:
        if not lenient or not isinstance(data, dict | None):
            raise
    return msgspec.convert(_filled(_type_info(kind), data or {}), kind)


@functools.cache
def _type_info(kind: type[EventData]) -> Any:
    return msgspec.inspect.type_info(kind)


def _filled(info: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every required field of the struct ``info`` describes, empty if absent."""
    out = dict(data)
    for f in info.fields:
        if f.encode_name not in out:
            if f.required:
                out[f.encode_name] = _empty(f.type)
            continue
        value = out[f.encode_name]
        nested = _struct_of(f.type)
        if nested is not None and isinstance(value, dict):
            out[f.encode_name] = _filled(nested, value)
    return out


def _struct_of(t: Any) -> Any:
    """The struct a field holds (directly or as an optional), else None."""
    mi = msgspec.inspect
    if isinstance(t, mi.StructType):
        return t
    if isinstance(t, mi.UnionType):
        structs = [x for x in t.types if isinstance(x, mi.StructType)]
        return structs[0] if len(structs) == 1 else None
    return None


def _empty(t: Any) -> Any:
    mi = msgspec.inspect
    empties = {mi.StrType: "", mi.IntType: 0, mi.FloatType: 0.0, mi.BoolType: False}
    for kind, value in empties.items():
        if isinstance(t, kind):
            return value
    if isinstance(t, mi.DictType):
        return {}
    if isinstance(t, mi.ListType):
        return []
    if isinstance(t, mi.StructType):
        return _filled(t, {})
    return None  # Any, or a union with None


__all__ = [
    "ARTIFACT_STORED",
    "ArtifactRef",
    "CALL_COMPLETED",
    "CALL_STARTED",
    "CATALOGUE",
    "CallCompleted",
    "CallStarted",
    "CodeFiles",
    "DATA_OPTIONAL",
    "EXECUTE_CANCELLED",
    "EXECUTE_DONE",
    "EXECUTE_ENQUEUED",
    "EXECUTE_FAILED",
    "EXECUTE_RESUMED",
    "EXECUTE_RETRY",
    "EXECUTE_STARTED",
    "EXECUTE_SUSPENDED",
    "EXECUTE_THROTTLED",
    "EventData",
    "ExecuteCancelled",
    "ExecuteDone",
    "ExecuteEnqueued",
    "ExecuteFailed",
    "ExecuteResumed",
    "ExecuteRetry",
    "ExecuteStarted",
    "ExecuteSuspended",
    "ExecuteThrottled",
    "FIELDS",
    "FILE_INDEXED",
    "FILE_REMOVED",
    "GATE_FAILED",
    "GATE_PASSED",
    "GateEvaluated",
    "IndexedFile",
    "LLM_CALL",
    "LlmCall",
    "MAP_ITEM_FAILED",
    "MAP_ITEM_STARTED",
    "MAP_ITEM_SUCCEEDED",
    "MapItemEnded",
    "MapItemStarted",
    "NODE_FAILED",
    "NODE_SKIPPED",
    "NODE_STARTED",
    "NODE_SUCCEEDED",
    "NodeFailed",
    "NodeSkipped",
    "NodeStarted",
    "NodeSucceeded",
    "POLICY_BYPASSED",
    "POLICY_CHANGED",
    "ParentRun",
    "PolicyBypassed",
    "PolicyChanged",
    "REQUIRED",
    "ROLLOUT_GATE_EVALUATED",
    "ROLLOUT_PAUSED",
    "ROLLOUT_PROMOTED",
    "ROLLOUT_ROLLED_BACK",
    "ROLLOUT_STAGE_CHANGED",
    "ROLLOUT_STARTED",
    "ROUTE_FORGOTTEN",
    "RUN_OUTCOMES",
    "RolloutData",
    "RolloutGateEvaluated",
    "RolloutPaused",
    "RolloutPromoted",
    "RolloutRolledBack",
    "RolloutStageChanged",
    "RolloutStarted",
    "RouteForgotten",
    "RunData",
    "RunEnded",
    "STEP_COMPLETED",
    "StepCompleted",
    "Symbol",
    "TASK_SIGNALED",
    "TERMINAL_TYPES",
    "TaskSignaled",
    "UnknownEventType",
    "WORKFLOW_CANCELLED",
    "WORKFLOW_EVENT_TYPES",
    "WORKFLOW_FAILED",
    "WORKFLOW_SIGNALED",
    "WORKFLOW_STARTED",
    "WORKFLOW_SUCCEEDED",
    "WorkflowSignaled",
    "WorkflowStarted",
    "checked_data",
    "data_of",
    "data_type",
]
