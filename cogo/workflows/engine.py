"""The node engine: given a plan and a run's state, what happens next.

``decide`` is a pure function of (plan, state, now): it returns the next actions (events to
append, tasks to submit, child runs to start; see ``cogo.workflows.actions``). The
orchestrator carries them out, folds each appended event into the state, and calls
``decide`` again until nothing is left to do. Every id is deterministic, so deciding twice
(after a crash, on a second orchestrator, or racing a timer) appends nothing twice, and a
node attempt gets exactly one outcome even if a timeout and a match race.

Node semantics:

- a node starts when every node in its ``after`` finished well (succeeded, or skipped by
  its ``when``); if one failed it is skipped, unless ``always`` is set;
- Publish / Notify submit ``<run>:<node>:<attempt>`` to ``orchestrator.execute.0`` and
  succeed with ``execute_done``'s result (or at once with ``wait: false``);
- Wait succeeds with the matched event (or ``{"value": ...}`` of its condition) and fails
  with ``workflow.wait_timeout`` at its deadline, which is stored in ``node_started``;
- Signal succeeds with the data of the first ``workflow_signaled`` of its name (sent
  before or after it started) and fails with ``workflow.signal_timeout`` at its deadline;
- Workflow starts a child run and succeeds when it succeeds (``workflow.child_failed``
  otherwise); Map runs its inner node per item (``cogo.workflows.fanout``);
- Gate records ``gate_passed`` / ``gate_failed`` with the verdict;
- Retry runs its node again after ``backoff`` (``retry_at`` is stored in ``node_failed``);
- the run ends when every node is final: failed if any node failed.
"""

from __future__ import annotations

from typing import Any

from cogo.errors import (
    ChildFailed,
    CogoError,
    ConditionUnmet,
    ExpressionError,
    GateFailed,
    SignalTimeout,
    WaitTimeout,
)
from cogo.streams.catalogue import (
    EXECUTE_DONE,
    GATE_FAILED,
    GATE_PASSED,
    NODE_STARTED,
    ExecuteDone,
    data_of,
)
from cogo.streams.events import Event, iso
from cogo.workflows import fanout
from cogo.workflows.actions import (
    Action,
    Append,
    StartChild,
    Submit,
    cancelled_event,
    child_error,
    child_result,
    child_start,
    event,
    failed,
    run_outcome,
    skipped,
    started_event,
    succeeded,
    task_id_of,
    task_message,
)
from cogo.workflows.definition import (
    GateNode,
    MapNode,
    NotifyNode,
    PublishNode,
    RetryNode,
    SignalNode,
    WaitNode,
    WorkflowNode,
    executed,
)
from cogo.workflows.expressions import evaluate, render
from cogo.workflows.nodes import (
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    NodeState,
    timestamp,
)
from cogo.workflows.planner import Plan
from cogo.workflows.run import RunState

__all__ = [
    "Action",
    "Append",
    "StartChild",
    "Submit",
    "cancelled_event",
    "decide",
    "matches",
    "next_wakeup",
    "restarts",
    "resubmissions",
    "running_children",
    "started_event",
    "task_id_of",
    "wait_filter",
]


def decide(plan: Plan, state: RunState, now: float, actor: str) -> list[Action]:
    """The next actions for this run (empty when it has to wait for something)."""
    if not state.started or state.finished:
        return []
    for node in plan.nodes:
        current = state.nodes[node.node_id]
        if current.status == PENDING:
            actions = _consider(plan, node, state, now, actor)
        elif current.status == RUNNING:
            actions = _check(node, current, state, now, actor)
        elif current.status == RETRYING and now >= (current.retry_at or 0):
            actions = _start(node, current.attempt + 1, state, now, actor)
        else:
            continue
        if actions:
            return actions
    if all(n.final for n in state.nodes.values()):
        return [Append(run_outcome(state, now, actor))]
    return []


def next_wakeup(plan: Plan, state: RunState) -> float | None:
    """The earliest time ``decide`` must run again without any new input (a deadline)."""
    if state.finished:
        return None
    times = []
    for node in state.nodes.values():
        if node.status == RETRYING and node.retry_at:
            times.append(node.retry_at)
        elif node.status == RUNNING and node.deadline:
            times.append(node.deadline)
    return min(times) if times else None


def resubmissions(state: RunState, now: float, window_s: float) -> list[Submit]:
    """Submissions to repeat when a run is resumed.

    The orchestrator may have died between appending ``node_started`` (or
    ``map_item_started``) and publishing the task. Publishing again with the same
    ``Nats-Msg-Id`` is dropped by JetStream inside the duplicate window, so it is only done
    while the window still covers the original.
    """
    out = []
    for node in state.nodes.values():
        if node.status != RUNNING:
            continue
        task = node.inputs.task if node.inputs else None
        started = node.attempt_started
        if task and started and now - started < window_s * 0.9:
            out.append(Submit(task))
        for item in node.items.values():
            task = item.inputs.task if item.inputs else None
            began = timestamp(item.started_at)
            if item.status == RUNNING and task and began and now - began < window_s * 0.9:
                out.append(Submit(task))
    return out


def restarts(state: RunState) -> list[StartChild]:
    """Child runs to (re)start when a run is resumed: every running child without an outcome.

    Unlike a task, a child start is safe to repeat at any age: the child's orchestrator
    reads the child's log first and does nothing for a run that started or ended already.
    """
    out = []
    for child_run_id in state.running_children:
        if child_run_id in state.child_outcomes:
            continue
        spec = _child_inputs(state, child_run_id)
        if spec is not None:
            out.append(StartChild(**spec))
    return out


def running_children(state: RunState) -> list[str]:
    """Child runs still running (what a cancel of this run cascades to)."""
    return [c for c in state.running_children if c not in state.child_outcomes]


def wait_filter(state: RunState, node_id: str) -> dict[str, Any] | None:
    """The event filter of a running Wait node (as recorded in its node_started)."""
    node = state.nodes.get(node_id)
    if node is None or node.status != RUNNING:
        return None
    return node.inputs.event if node.inputs else None


def matches(spec: dict[str, Any], event: dict[str, Any], state: RunState) -> bool:
    """Whether ``event`` satisfies a Wait node's (rendered) filter."""
    types = spec.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if event.get("type") not in types:
        return False
    for key in ("route", "task_id", "correlation_id"):
        if spec.get(key) is not None and event.get(key) != spec[key]:
            return False
    where = spec.get("where")
    if where:
        try:
            return bool(evaluate(where, {**state.context(), "event": event}))
        except ExpressionError:
            return False
    return True


def _child_inputs(state: RunState, child_run_id: str) -> dict[str, Any] | None:
    node_id, index = state.running_children[child_run_id]
    node = state.nodes[node_id]
    inputs = node.inputs if index is None else node.items[index].inputs
    return inputs.child if inputs else None


# -- pending nodes -----------------------------------------------------------------------


def _consider(plan: Plan, node: Any, state: RunState, now: float, actor: str) -> list[Action]:
    upstream = [state.nodes[name] for name in node.after or []]
    if any(not dep.final for dep in upstream):
        return []
    healthy = all(
        dep.status == SUCCEEDED or (dep.status == SKIPPED and dep.skip_reason == "condition") for dep in upstream
    )
    if not healthy and not node.always:
        return [Append(skipped(state, node.id, "upstream", actor))]
    if node.when is not None:
        try:
            run_it = bool(evaluate(node.when, state.context()))
        except ExpressionError as exc:
            return _start(node, 1, state, now, actor, broken=exc)
        if not run_it:
            return [Append(skipped(state, node.id, "condition", actor))]
    return _start(node, 1, state, now, actor)


def _start(
    node: Any,
    attempt: int,
    state: RunState,
    now: float,
    actor: str,
    broken: ExpressionError | None = None,
) -> list[Action]:
    inner = executed(node)
    started_id = f"{state.run_id}:{node.id}:started:{attempt}"
    inputs: dict[str, Any] = {"node_id": node.id, "node_type": node.type}
    actions: list[Action] = []
    try:
        if broken is not None:
            raise broken
        context = state.context()
        if isinstance(inner, PublishNode | NotifyNode):
            task_id = task_id_of(state.run_id, node.id, attempt)
            task = task_message(inner, task_id, state, context, started_id)
            inputs.update(task_id=task["task_id"], route=task["route"], task=task)
            actions.append(Submit(task))
        elif isinstance(inner, WaitNode):
            deadline = now + inner.timeout_ms / 1000.0
            inputs.update(deadline=deadline, deadline_at=iso(deadline))
            if inner.event is not None:
                spec = inner.event.model_dump(exclude_none=True)
                where = spec.pop("where", None)
                spec = render(spec, context)
                inputs["event"] = {**spec, "where": where} if where else spec
            else:
                inputs["condition"] = inner.condition
        elif isinstance(inner, SignalNode):
            deadline = now + inner.timeout_ms / 1000.0
            inputs.update(name=inner.signal_name, deadline=deadline, deadline_at=iso(deadline))
        elif isinstance(inner, WorkflowNode):
            child = child_start(inner, task_id_of(state.run_id, node.id, attempt), state, context, node.id)
            inputs.update(child_run_id=child.run_id, workflow=child.workflow_id, child=_child_json(child))
            actions.append(child)
        elif isinstance(inner, MapNode):
            inputs.update(fanout.start_inputs(inner, context))
        elif isinstance(inner, GateNode):
            inputs["condition"] = inner.condition
    except CogoError as exc:  # ExpressionError, WorkflowCycle, InvalidParameters...
        started = event(NODE_STARTED, state, actor, event_id=started_id, attempt=attempt, data=inputs)
        # a template that cannot be rendered will not render next attempt either
        return [
            Append(started),
            Append(failed(state, node, attempt, now, actor, exc.code, exc.message, retryable=False)),
        ]
    started = event(NODE_STARTED, state, actor, event_id=started_id, attempt=attempt, data=inputs)
    return [Append(started), *actions]


def _child_json(child: StartChild) -> dict[str, Any]:
    return {
        "run_id": child.run_id,
        "workflow_id": child.workflow_id,
        "parameters": child.parameters,
        "parent": child.parent,
    }


# -- running nodes -----------------------------------------------------------------------


def _check(node: Any, current: NodeState, state: RunState, now: float, actor: str) -> list[Action]:
    inner = executed(node)
    attempt = current.attempt
    if isinstance(inner, PublishNode | NotifyNode):
        if not inner.wait:
            return _succeeded(state, node, current, now, actor, {"task_id": current.task_id})
        outcome = state.task_outcomes.get(current.task_id or "")
        if outcome is None:
            return []
        if outcome.type == EXECUTE_DONE:
            result = data_of(outcome, ExecuteDone, lenient=True).result
            return _succeeded(state, node, current, now, actor, result, cause=outcome.event_id)
        return [
            Append(
                failed(
                    state,
                    node,
                    attempt,
                    now,
                    actor,
                    outcome.error_code or "worker.error",
                    outcome.error or "task failed",
                    cause=outcome.event_id,
                )
            )
        ]
    if isinstance(inner, GateNode):
        return [Append(_gate(state, node, inner, attempt, now, actor))]
    if isinstance(inner, SignalNode):
        return _check_signal(node, inner, current, state, now, actor)
    if isinstance(inner, WorkflowNode):
        ended = state.child_outcomes.get(current.child_run_id or "")
        if ended is None:
            return []
        result = child_result(current.child_run_id or "", ended)
        if ended.get("status") == SUCCEEDED:
            return _succeeded(state, node, current, now, actor, result, cause=ended.get("event_id"))
        return [
            Append(
                failed(
                    state,
                    node,
                    attempt,
                    now,
                    actor,
                    ChildFailed.code,
                    child_error(current.child_run_id or "", ended),
                    cause=ended.get("event_id"),
                    result=result,
                )
            )
        ]
    if isinstance(inner, MapNode):
        return fanout.check(node, inner, current, state, now, actor)
    if isinstance(inner, WaitNode):
        return _check_wait(node, inner, current, state, now, actor)
    return []


def _check_signal(
    node: Any, inner: SignalNode, current: NodeState, state: RunState, now: float, actor: str
) -> list[Action]:
    received = state.signals.get(inner.signal_name) or []
    if received:
        first = received[0]
        return _succeeded(state, node, current, now, actor, first["data"], cause=first.get("event_id"))
    if current.deadline is not None and now >= current.deadline:
        error = f"no signal {inner.signal_name!r} within {inner.timeout_ms} ms"
        return [Append(failed(state, node, current.attempt, now, actor, SignalTimeout.code, error))]
    return []


def _check_wait(
    node: Any, inner: WaitNode, current: NodeState, state: RunState, now: float, actor: str
) -> list[Action]:
    if inner.event is not None:
        match = state.matches.get((node.id, current.attempt))
        if match is not None:
            return _succeeded(state, node, current, now, actor, match, cause=match.get("event_id"))
        last_error = None
    else:
        try:
            value = evaluate(inner.condition or "", state.context())
            if value:
                return _succeeded(state, node, current, now, actor, {"value": value})
            last_error = None
        except ExpressionError as exc:  # not readable yet: keep waiting
            last_error = str(exc)
    if current.deadline is not None and now >= current.deadline:
        wanted = current.inputs.event if current.inputs else None
        what = f"event {wanted}" if inner.event else inner.condition
        error = f"no {what} within {inner.timeout_ms} ms"
        if last_error:
            error += f" (last: {last_error})"
        return [Append(failed(state, node, current.attempt, now, actor, WaitTimeout.code, error))]
    return []


def _succeeded(
    state: RunState,
    node: Any,
    current: NodeState,
    now: float,
    actor: str,
    result: Any,
    cause: str | None = None,
) -> list[Action]:
    attempt = current.attempt
    if isinstance(node, RetryNode) and node.until:
        try:
            ok = bool(evaluate(node.until, {**state.context(), "result": result}))
            error = f"until {node.until!r} is false"
        except ExpressionError as exc:
            ok, error = False, f"until {node.until!r}: {exc}"
        if not ok:
            return [
                Append(failed(state, node, attempt, now, actor, ConditionUnmet.code, error, cause=cause, result=result))
            ]
    return [Append(succeeded(state, node.id, attempt, now, actor, result, cause))]


def _gate(state: RunState, node: Any, gate: GateNode, attempt: int, now: float, actor: str) -> Event:
    try:
        passed = bool(evaluate(gate.condition, state.context()))
        error = None if passed else f"condition {gate.condition!r} is false"
    except ExpressionError as exc:
        passed, error = False, f"condition {gate.condition!r} could not be evaluated: {exc}"
    return event(
        GATE_PASSED if passed else GATE_FAILED,
        state,
        actor,
        event_id=f"{state.run_id}:{node.id}:outcome:{attempt}",
        attempt=attempt,
        error_code=None if passed else GateFailed.code,
        error=error,
        data={
            "node_id": node.id,
            "condition": gate.condition,
            "verdict": "passed" if passed else "failed",
        },
    )
