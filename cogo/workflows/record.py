"""A workflow run's record: the run-level half of its fold, the one every reader shares.

``RunRecord.apply`` folds a run's start, its outcome, its gate verdicts, the signals its
nodes wait for, the nodes that finished and the artifacts their results name. Two places
apply it, to the same events, so they cannot disagree:

- ``RunState`` (``cogo.workflows.run``) holds one for the run it folds: the orchestrator
  drives runs with it, and ``/api/orchestrator/state`` and ``/runs`` answer from it.
- the projector folds every workflow event it ingests into the run's record and stores it
  as the run's row of ``workflow_runs`` (``cogo.projections.runs``), in the transaction
  that inserts the events; the dashboard and ``/api/metrics/workflows`` read that table.

SQL stores the record and never folds a run itself. The first start and the first outcome
win (in stream order); each event's data is read through its catalogue struct, so an event
an older version wrote reads with the defaults of the fields it lacks.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from cogo.streams.catalogue import (
    GATE_FAILED,
    GATE_PASSED,
    NODE_FAILED,
    NODE_SKIPPED,
    NODE_STARTED,
    NODE_SUCCEEDED,
    RUN_OUTCOMES,
    WORKFLOW_STARTED,
    GateEvaluated,
    NodeFailed,
    NodeSkipped,
    NodeStarted,
    NodeSucceeded,
    RunEnded,
    WorkflowStarted,
    data_of,
)
from cogo.streams.events import Event

log = logging.getLogger(__name__)

# the event types a record folds (the rest of a run's events only move its nodes)
RECORD_TYPES = (
    WORKFLOW_STARTED,
    *RUN_OUTCOMES,
    NODE_STARTED,
    NODE_SUCCEEDED,
    NODE_FAILED,
    NODE_SKIPPED,
    GATE_PASSED,
    GATE_FAILED,
)
_NODE_ENDS = (NODE_SUCCEEDED, NODE_FAILED, NODE_SKIPPED, GATE_PASSED, GATE_FAILED)


class RunRecord(msgspec.Struct, kw_only=True):
    """One run as the run list, the dashboard and the metrics see it (a row of ``workflow_runs``)."""

    run_id: str
    workflow_id: str | None = None
    start_seq: int | None = None  # None until its workflow_started is folded
    started_at: str | None = None
    outcome_seq: int | None = None
    outcome: str | None = None  # the outcome event's type: workflow_succeeded ...
    ended_at: str | None = None
    error_code: str | None = None
    error: str | None = None
    parent_run_id: str | None = None  # the run whose node started this one
    gates: list[str] = []  # "<node id>=<verdict>", in stream order
    artifacts: list[str] = []  # each node result's ``artifacts`` (as JSON), in order
    signals: list[str] = []  # "<node id>=<signal name>" of each signal node started
    over: list[str] = []  # node ids that finished or were skipped, in order
    gates_passed: int = 0
    gates_failed: int = 0

    @property
    def started(self) -> bool:
        return self.start_seq is not None

    @property
    def status(self) -> str | None:
        """``succeeded`` / ``failed`` / ``cancelled`` once the run has an outcome, else None."""
        return RUN_OUTCOMES.get(self.outcome or "")

    def apply(self, event: Event, seq: int) -> None:
        """Fold one event of this run (applying an event twice is the caller's to avoid)."""
        try:
            self._apply(event, seq)
        except (msgspec.ValidationError, TypeError) as exc:  # a body no version wrote
            log.warning("run %s: skipping a %s event: %s", self.run_id, event.type, exc)

    def _apply(self, event: Event, seq: int) -> None:
        kind = event.type
        if kind == WORKFLOW_STARTED:
            started = data_of(event, WorkflowStarted, lenient=True)
            if self.start_seq is None:
                self.start_seq, self.started_at = seq, event.at
                self.workflow_id = started.workflow_id or started.plan.get("workflow_id") or self.workflow_id
                self.parent_run_id = started.parent.runId if started.parent else None
        elif kind in RUN_OUTCOMES:
            ended = data_of(event, RunEnded, lenient=True)
            if self.outcome is None:
                self.outcome, self.outcome_seq, self.ended_at = kind, seq, event.at
                self.error_code, self.error = event.error_code, event.error
            self.workflow_id = self.workflow_id or ended.workflow_id
        elif kind == NODE_STARTED:
            node = data_of(event, NodeStarted, lenient=True)
            if node.node_type == "signal" and node.name is not None:
                self.signals.append(f"{node.node_id}={node.name}")
        elif kind in _NODE_ENDS:
            self._on_node_end(event)

    def _on_node_end(self, event: Event) -> None:
        if event.type in (GATE_PASSED, GATE_FAILED):
            gate = data_of(event, GateEvaluated, lenient=True)
            self.gates.append(f"{gate.node_id}={gate.verdict}")
            if event.type == GATE_PASSED:
                self.gates_passed += 1
            else:
                self.gates_failed += 1
            self.over.append(gate.node_id)
        elif event.type == NODE_SKIPPED:
            self.over.append(data_of(event, NodeSkipped, lenient=True).node_id)
        else:
            ended: NodeSucceeded | NodeFailed = (
                data_of(event, NodeSucceeded, lenient=True)
                if event.type == NODE_SUCCEEDED
                else data_of(event, NodeFailed, lenient=True)
            )
            self.over.append(ended.node_id)
            artifacts = artifacts_of(ended.result)
            if artifacts is not None:
                self.artifacts.append(artifacts)


def artifacts_of(result: Any) -> str | None:
    """The ``artifacts`` a node's result names (as JSON text), or those of the task result a
    Wait node matched (``result.data.result.artifacts``); None when there are none."""
    for holder in (result, _matched_result(result)):
        if isinstance(holder, dict) and holder.get("artifacts") is not None:
            value = holder["artifacts"]
            return value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return None


def _matched_result(result: Any) -> Any:
    """The task result inside a matched ``execute_done`` event (a Wait node's result)."""
    if isinstance(result, dict) and isinstance(result.get("data"), dict):
        return result["data"].get("result")
    return None
