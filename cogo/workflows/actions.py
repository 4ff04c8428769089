"""What the engine asks the orchestrator to do, and the events and messages it carries.

``decide`` (``cogo.workflows.engine``) returns actions: ``Append`` an event to the log,
``Submit`` a task to the executor dispatcher, ``StartChild`` a child run. Every id here is
deterministic, so an action carried out twice (after a crash, by a second orchestrator
that took the run over, or racing a timer) changes nothing the second time:

    task            <run>:<node>:<attempt>              Nats-Msg-Id of the submission
    map item task   <run>:<node>:<attempt>:<index>
    child run       <run>:<node>:<attempt>[:<index>]    its StartRun is ``<child>:start``
    node events     <run>:<node>:started:<n>, <run>:<node>:outcome:<n>
    item events     <run>:<node>:<n>:item:<index>:started / :outcome
    run outcome     <run>:outcome                       one per run, whichever comes first
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cogo.errors import ExpressionError, InvalidWorkflow, WorkflowCycle
from cogo.streams.catalogue import (
    NODE_FAILED,
    NODE_SKIPPED,
    NODE_SUCCEEDED,
    WORKFLOW_CANCELLED,
    WORKFLOW_FAILED,
    WORKFLOW_STARTED,
    WORKFLOW_SUCCEEDED,
)
from cogo.streams.envelope import ASSIGNMENT_KEY
from cogo.streams.events import Event, iso, make_event
from cogo.workflows.definition import RUN_ID, NotifyNode, PublishNode, RetryNode, WorkflowNode
from cogo.workflows.expressions import render
from cogo.workflows.nodes import FAILED, timestamp
from cogo.workflows.planner import Plan
from cogo.workflows.run import RunState

MAX_RUN_ID = 255


@dataclass(frozen=True)
class Append:
    """Append this event to the log (then fold it into the run)."""

    event: Event


@dataclass(frozen=True)
class Submit:
    """Publish this TaskMessage to the executor dispatcher (``Nats-Msg-Id = task_id``)."""

    task: dict[str, Any]


@dataclass(frozen=True)
class StartChild:
    """Plan ``workflow_id`` with ``parameters`` and start it as run ``run_id``.

    Planning needs the catalog (files) and the route policies, so it is the orchestrator's
    job, not the engine's; a child that cannot be planned ends at once as ``workflow_failed``
    with the planner's error, which its parent then reads like any other child outcome.
    """

    run_id: str
    workflow_id: str
    parameters: dict[str, Any]
    # {"runId", "nodeId", "index", "workflowId", "ancestry": [workflow ids, root first]}
    parent: dict[str, Any]


Action = Append | Submit | StartChild


def task_id_of(run_id: str, node_id: str, attempt: int) -> str:
    return f"{run_id}:{node_id}:{attempt}"


def started_event(plan: Plan, run_id: str, actor: str, parent: dict[str, Any] | None = None) -> Event:
    """``workflow_started``: the plan travels in the event, so the log alone can resume it."""
    data: dict[str, Any] = {"run_id": run_id, "workflow_id": plan.workflow_id, "plan": plan.to_json()}
    if parent:
        data["parent"] = parent
    return make_event(
        WORKFLOW_STARTED,
        event_id=f"{run_id}:started",
        correlation_id=run_id,
        actor=actor,
        data=data,
    )


def cancelled_event(state: RunState, actor: str, reason: str | None = None) -> Event:
    # shares the id of the run's other outcomes: a run ends once, whichever comes first
    return event(
        WORKFLOW_CANCELLED,
        state,
        actor,
        event_id=f"{state.run_id}:outcome",
        error_code="workflow.cancelled",
        error=reason or "cancelled",
        data={},
    )


def unplannable_event(child: StartChild, actor: str, exc: Exception) -> Event:
    """The outcome of a child run that could not even be planned (it never started)."""
    code = getattr(exc, "code", "workflow.invalid")
    detail = getattr(exc, "detail", None) or []
    text = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    message = getattr(exc, "message", str(exc))
    return make_event(
        WORKFLOW_FAILED,
        event_id=f"{child.run_id}:outcome",
        correlation_id=child.run_id,
        actor=actor,
        error_code=code,
        error=f"{message}: {text}" if text else message,
        data={"run_id": child.run_id, "workflow_id": child.workflow_id, "parent": child.parent, "failed_nodes": []},
    )


def event(type: str, state: RunState, actor: str, *, event_id: str, **fields: Any) -> Event:
    """A workflow event of ``state``'s run (``data.run_id`` / ``data.workflow_id`` set)."""
    data = {"run_id": state.run_id, "workflow_id": state.workflow_id, **(fields.pop("data", {}))}
    return make_event(type, event_id=event_id, correlation_id=state.run_id, actor=actor, data=data, **fields)


def succeeded(
    state: RunState,
    node_id: str,
    attempt: int,
    now: float,
    actor: str,
    result: Any,
    cause: str | None = None,
) -> Event:
    current = state.nodes[node_id]
    started = current.attempt_started
    return event(
        NODE_SUCCEEDED,
        state,
        actor,
        event_id=f"{state.run_id}:{node_id}:outcome:{attempt}",
        attempt=attempt,
        causation_id=cause,
        duration_ms=round((now - started) * 1000.0, 3) if started else None,
        data={"node_id": node_id, "task_id": current.task_id, "result": result},
    )


def failed(
    state: RunState,
    node: Any,
    attempt: int,
    now: float,
    actor: str,
    code: str,
    error: str,
    *,
    retryable: bool = True,
    cause: str | None = None,
    result: Any = None,
) -> Event:
    current = state.nodes[node.id]
    data: dict[str, Any] = {"node_id": node.id, "task_id": current.task_id}
    if result is not None:
        data["result"] = result
    if retryable and isinstance(node, RetryNode) and attempt < node.max_attempts:
        retry_at = now + node.backoff.delay_ms(attempt) / 1000.0
        data.update(retry_at=retry_at, retry_at_iso=iso(retry_at))
    started = current.attempt_started
    return event(
        NODE_FAILED,
        state,
        actor,
        event_id=f"{state.run_id}:{node.id}:outcome:{attempt}",
        attempt=attempt,
        causation_id=cause,
        error_code=code,
        error=error,
        duration_ms=round((now - started) * 1000.0, 3) if started else None,
        data=data,
    )


def skipped(state: RunState, node_id: str, reason: str, actor: str) -> Event:
    return event(
        NODE_SKIPPED,
        state,
        actor,
        event_id=f"{state.run_id}:{node_id}:skipped",
        data={"node_id": node_id, "reason": reason},
    )


def run_outcome(state: RunState, now: float, actor: str) -> Event:
    started = timestamp(state.started_at)
    duration_ms = round((now - started) * 1000.0, 3) if started else None
    failures = [n for n in state.nodes.values() if n.status == FAILED]
    data: dict[str, Any] = {"failed_nodes": [n.id for n in failures]}
    if failures:
        first = failures[0]
        return event(
            WORKFLOW_FAILED,
            state,
            actor,
            event_id=f"{state.run_id}:outcome",
            error_code=first.error_code,
            error=f"node {first.id} failed: {first.error}",
            duration_ms=duration_ms,
            data=data,
        )
    return event(
        WORKFLOW_SUCCEEDED,
        state,
        actor,
        event_id=f"{state.run_id}:outcome",
        duration_ms=duration_ms,
        data=data,
    )


def task_message(
    inner: PublishNode | NotifyNode,
    task_id: str,
    state: RunState,
    context: dict[str, Any],
    causation_id: str,
) -> dict[str, Any]:
    """The TaskMessage a Publish/Notify node (or map item) submits; ExpressionError if its
    templates cannot be rendered."""
    if isinstance(inner, PublishNode):
        payload = dict(render(inner.payload, context))
    else:
        url = render(inner.url, context)
        if not url:
            raise ExpressionError("notify node has no url")
        body = state.summary()
        if inner.message:
            body["message"] = render(inner.message, context)
        payload = {"url": url, "body": body}
    if inner.assignment:
        payload[ASSIGNMENT_KEY] = inner.assignment
    return {
        "task_id": task_id,
        "route": inner.route,
        "payload": payload,
        "correlation_id": state.run_id,
        "causation_id": causation_id,
    }


def child_start(
    inner: WorkflowNode,
    child_run_id: str,
    state: RunState,
    context: dict[str, Any],
    node_id: str,
    index: int | None = None,
) -> StartChild:
    """The child run a workflow node (or map item) starts; ExpressionError if its templates
    cannot be rendered, WorkflowCycle if the child is an ancestor of this run."""
    workflow_id = render(inner.workflowId, context)
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ExpressionError(f"workflowId rendered to {workflow_id!r}, not a workflow id")
    parameters = render(inner.parameters, context)
    ancestry = [*((state.parent or {}).get("ancestry") or []), state.workflow_id or ""]
    if workflow_id in ancestry:
        chain = " -> ".join([*ancestry, workflow_id])
        raise WorkflowCycle(f"workflow {workflow_id!r} is already running above: {chain}")
    if len(child_run_id) > MAX_RUN_ID:
        raise InvalidWorkflow(f"child run id longer than {MAX_RUN_ID} characters (nested too deep)")
    if not re.fullmatch(RUN_ID, child_run_id):
        raise InvalidWorkflow(f"child run id {child_run_id!r} does not match {RUN_ID}")
    parent: dict[str, Any] = {
        "runId": state.run_id,
        "nodeId": node_id,
        "workflowId": state.workflow_id,
        "ancestry": ancestry,
    }
    if index is not None:
        parent["index"] = index
    return StartChild(child_run_id, workflow_id, dict(parameters), parent)


def child_result(child_run_id: str, ended: dict[str, Any]) -> dict[str, Any]:
    """What a workflow node (or map item) holds as the result of its child run."""
    return {
        "runId": child_run_id,
        "workflowId": ended.get("workflow_id"),
        "status": ended.get("status"),
        "errorCode": ended.get("error_code"),
        "error": ended.get("error"),
    }


def child_error(child_run_id: str, ended: dict[str, Any]) -> str:
    reason = ended.get("error") or ended.get("status")
    code = f" [{ended['error_code']}]" if ended.get("error_code") else ""
    return f"child run {child_run_id} {ended.get('status')}{code}: {reason}"
