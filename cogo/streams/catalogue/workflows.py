"""A workflow run's events (``cogo.workflows.run`` folds them): its start, its nodes, its
map items, its signals and its outcome."""

from __future__ import annotations

from typing import Any

import msgspec

from cogo.streams.catalogue.base import EventData

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
    WORKFLOW_STARTED,
    NODE_STARTED,
    NODE_SUCCEEDED,
    NODE_FAILED,
    NODE_SKIPPED,
    GATE_PASSED,
    GATE_FAILED,
    WORKFLOW_SIGNALED,
    MAP_ITEM_STARTED,
    MAP_ITEM_SUCCEEDED,
    MAP_ITEM_FAILED,
    *RUN_OUTCOMES,
)


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


TYPES: dict[str, type[EventData]] = {
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
REQUIRED: dict[str, tuple[str, ...]] = {
    **{t: ("correlation_id",) for t in WORKFLOW_EVENT_TYPES},
    **{t: ("error_code", "error") for t in (WORKFLOW_FAILED, WORKFLOW_CANCELLED)},
}
