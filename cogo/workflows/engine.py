"""The node engine: given a plan and a run's state, what happens next.

``decide`` is a pure function of (plan, state, now): it returns the next actions: events to
append and tasks to submit. The orchestrator executes them, folds each appended event into
the state, and calls ``decide`` again until nothing is left to do. Every event id is
deterministic (``<run>:<node>:started:<attempt>``, ``<run>:<node>:outcome:<attempt>``,
``<run>:outcome``), so deciding twice (after a crash, or racing a timer) appends nothing
twice, and a node attempt gets exactly one outcome even if a timeout and a match race.

Node semantics:

- a node starts when every node in its ``after`` finished well (succeeded, or skipped by
  its ``when``); if one failed it is skipped, unless ``always`` is set;
- Publish / Notify submit ``<run>:<node>:<attempt>`` to ``orchestrator.execute.0`` and
  succeed with ``execute_done``'s result (or at once with ``wait: false``);
- Wait succeeds with the matched event (or ``{"value": ...}`` of its condition) and fails
  with ``workflow.wait_timeout`` at its deadline, which is stored in ``node_started``;
- Gate records ``gate_passed`` / ``gate_failed`` with the verdict;
- Retry runs its node again after ``backoff`` (``retry_at`` is stored in ``node_failed``);
- the run ends when every node is final: failed if any node failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cogo.errors import (
    ConditionUnmet,
    ExpressionError,
    GateFailed,
    WaitTimeout,
)
from cogo.streams.envelope import ASSIGNMENT_KEY
from cogo.streams.events import EXECUTE_DONE, Event, iso, make_event
from cogo.workflows.definition import (
    GateNode,
    NotifyNode,
    PublishNode,
    RetryNode,
    WaitNode,
    executed,
)
from cogo.workflows.expressions import evaluate, render
from cogo.workflows.planner import Plan
from cogo.workflows.run import (
    FAILED,
    GATE_FAILED,
    GATE_PASSED,
    NODE_FAILED,
    NODE_SKIPPED,
    NODE_STARTED,
    NODE_SUCCEEDED,
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    WORKFLOW_CANCELLED,
    WORKFLOW_FAILED,
    WORKFLOW_STARTED,
    WORKFLOW_SUCCEEDED,
    NodeState,
    RunState,
    timestamp,
)


@dataclass(frozen=True)
class Append:
    """Append this event to the log (then fold it into the run)."""

    event: Event


@dataclass(frozen=True)
class Submit:
    """Publish this TaskMessage to the executor dispatcher (``Nats-Msg-Id = task_id``)."""

    task: dict[str, Any]


Action = Append | Submit


def task_id_of(run_id: str, node_id: str, attempt: int) -> str:
    return f"{run_id}:{node_id}:{attempt}"


def started_event(plan: Plan, run_id: str, actor: str) -> Event:
    """``workflow_started``: the plan travels in the event, so the log alone can resume it."""
    return make_event(
        WORKFLOW_STARTED,
        event_id=f"{run_id}:started",
        correlation_id=run_id,
        actor=actor,
        data={"run_id": run_id, "workflow_id": plan.workflow_id, "plan": plan.to_json()},
    )


def cancelled_event(state: RunState, actor: str, reason: str | None = None) -> Event:
    # shares the id of the run's other outcomes: a run ends once, whichever comes first
    return _event(
        WORKFLOW_CANCELLED,
        state,
        actor,
        event_id=f"{state.run_id}:outcome",
        error_code="workflow.cancelled",
        error=reason or "cancelled",
        data={},
    )


def decide(plan: Plan, state: RunState, now: float, actor: str) -> list[Action]:
    """The next actions for this run (empty when it has to wait for something)."""
    if not state.started or state.finished:
        return []
    for node in plan.nodes:
        current = state.nodes[node.id]
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
        return [Append(_outcome(state, now, actor))]
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

    The orchestrator may have died between appending ``node_started`` and publishing the
    task. Publishing again with the same ``Nats-Msg-Id`` is dropped by JetStream inside
    the duplicate window, so it is only done while the window still covers the original.
    """
    out = []
    for node in state.nodes.values():
        task = node.inputs.get("task")
        started = node.attempt_started
        if node.status == RUNNING and task and started and now - started < window_s * 0.9:
            out.append(Submit(task))
    return out


def wait_filter(state: RunState, node_id: str) -> dict[str, Any] | None:
    """The event filter of a running Wait node (as recorded in its node_started)."""
    node = state.nodes.get(node_id)
    if node is None or node.status != RUNNING:
        return None
    return node.inputs.get("event")


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


# -- pending nodes -----------------------------------------------------------------------


def _consider(plan: Plan, node: Any, state: RunState, now: float, actor: str) -> list[Action]:
    upstream = [state.nodes[name] for name in node.after or []]
    if any(not dep.final for dep in upstream):
        return []
    healthy = all(
        dep.status == SUCCEEDED or (dep.status == SKIPPED and dep.skip_reason == "condition")
        for dep in upstream
    )
    if not healthy and not node.always:
        return [Append(_skipped(state, node.id, "upstream", actor))]
    if node.when is not None:
        try:
            run_it = bool(evaluate(node.when, state.context()))
        except ExpressionError as exc:
            return _start(node, 1, state, now, actor, broken=exc)
        if not run_it:
            return [Append(_skipped(state, node.id, "condition", actor))]
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
            task = _task(inner, node.id, attempt, state, context, started_id)
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
        elif isinstance(inner, GateNode):
            inputs["condition"] = inner.condition
    except ExpressionError as exc:
        started = _event(NODE_STARTED, state, actor, event_id=started_id, attempt=attempt,
                         data=inputs)  # fmt: skip
        # a template that cannot be rendered will not render next attempt either
        return [Append(started), Append(_failed(state, node, attempt, now, actor, exc.code,
                                                str(exc), retryable=False))]  # fmt: skip
    started = _event(NODE_STARTED, state, actor, event_id=started_id, attempt=attempt, data=inputs)
    return [Append(started), *actions]


def _task(
    inner: PublishNode | NotifyNode,
    node_id: str,
    attempt: int,
    state: RunState,
    context: dict[str, Any],
    causation_id: str,
) -> dict[str, Any]:
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
        "task_id": task_id_of(state.run_id, node_id, attempt),
        "route": inner.route,
        "payload": payload,
        "correlation_id": state.run_id,
        "causation_id": causation_id,
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
            result = (outcome.data or {}).get("result")
            return _succeeded(state, node, current, now, actor, result, cause=outcome.event_id)
        return [Append(_failed(state, node, attempt, now, actor,
                               outcome.error_code or "worker.error",
                               outcome.error or "task failed", cause=outcome.event_id))]  # fmt: skip
    if isinstance(inner, GateNode):
        return [Append(_gate(state, node, inner, attempt, now, actor))]
    if isinstance(inner, WaitNode):
        if inner.event is not None:
            match = state.matches.get((node.id, attempt))
            if match is not None:
                return _succeeded(state, node, current, now, actor, match,
                                  cause=match.get("event_id"))  # fmt: skip
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
            what = f"event {current.inputs.get('event')}" if inner.event else inner.condition
            error = f"no {what} within {inner.timeout_ms} ms"
            if last_error:
                error += f" (last: {last_error})"
            return [Append(_failed(state, node, attempt, now, actor, WaitTimeout.code, error))]
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
            failed = _failed(state, node, attempt, now, actor, ConditionUnmet.code, error,
                             cause=cause, result=result)  # fmt: skip
            return [Append(failed)]
    started = current.attempt_started
    return [
        Append(
            _event(
                NODE_SUCCEEDED,
                state,
                actor,
                event_id=f"{state.run_id}:{node.id}:outcome:{attempt}",
                attempt=attempt,
                causation_id=cause,
                duration_ms=round((now - started) * 1000.0, 3) if started else None,
                data={"node_id": node.id, "task_id": current.task_id, "result": result},
            )
        )
    ]


def _failed(
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
    return _event(
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


def _gate(
    state: RunState, node: Any, gate: GateNode, attempt: int, now: float, actor: str
) -> Event:
    try:
        passed = bool(evaluate(gate.condition, state.context()))
        error = None if passed else f"condition {gate.condition!r} is false"
    except ExpressionError as exc:
        passed, error = False, f"condition {gate.condition!r} could not be evaluated: {exc}"
    return _event(
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


def _skipped(state: RunState, node_id: str, reason: str, actor: str) -> Event:
    return _event(
        NODE_SKIPPED,
        state,
        actor,
        event_id=f"{state.run_id}:{node_id}:skipped",
        data={"node_id": node_id, "reason": reason},
    )


def _outcome(state: RunState, now: float, actor: str) -> Event:
    started = timestamp(state.started_at)
    duration_ms = round((now - started) * 1000.0, 3) if started else None
    failed = [n for n in state.nodes.values() if n.status == FAILED]
    data: dict[str, Any] = {"failed_nodes": [n.id for n in failed]}
    if failed:
        first = failed[0]
        return _event(
            WORKFLOW_FAILED,
            state,
            actor,
            event_id=f"{state.run_id}:outcome",
            error_code=first.error_code,
            error=f"node {first.id} failed: {first.error}",
            duration_ms=duration_ms,
            data=data,
        )
    return _event(
        WORKFLOW_SUCCEEDED,
        state,
        actor,
        event_id=f"{state.run_id}:outcome",
        duration_ms=duration_ms,
        data=data,
    )


def _event(type: str, state: RunState, actor: str, *, event_id: str, **fields: Any) -> Event:
    data = {"run_id": state.run_id, "workflow_id": state.workflow_id, **(fields.pop("data", {}))}
    return make_event(
        type, event_id=event_id, correlation_id=state.run_id, actor=actor, data=data, **fields
    )
