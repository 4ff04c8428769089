"""Map nodes: the inner ``publish`` or ``workflow`` node once per item, bounded parallelism.

``items`` is rendered when the node starts and stored in its ``node_started`` (``items``),
so a resumed run, or another orchestrator, sees the same list. Each item gets
``map_item_started`` (its task or child run) and one outcome, ``map_item_succeeded`` /
``map_item_failed``; items start in index order, at most ``max_parallel`` running at once.
The node succeeds with the inner results in item order. Without ``allow_failures`` the
first failed item stops new items from starting and, once the running ones ended, fails
the node with that item's error code; with it, a failed item's slot is ``null``.

Inside the inner node, templates read ``${item}`` and ``${index}`` besides the run.
"""

from __future__ import annotations

import json
from typing import Any

from cogo.errors import ChildFailed, CogoError, InvalidParameters
from cogo.streams.catalogue import (
    EXECUTE_DONE,
    MAP_ITEM_FAILED,
    MAP_ITEM_STARTED,
    MAP_ITEM_SUCCEEDED,
    ExecuteDone,
    data_of,
)
from cogo.streams.events import Event
from cogo.workflows import actions as act
from cogo.workflows.definition import MAX_MAP_ITEMS, MapNode, PublishNode, WorkflowNode
from cogo.workflows.expressions import render
from cogo.workflows.nodes import FAILED, RUNNING, SUCCEEDED, ItemState, NodeState
from cogo.workflows.run import RunState

# the rendered items travel in node_started: keep that event well under NATS' 1 MiB payload
MAX_ITEMS_BYTES = 256 * 1024
ITEM_NAMES = frozenset({"item", "index"})


def kind_of(value: Any) -> str:
    return {
        dict: "an object",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def check_items(items: Any, where: str) -> list[Any]:
    """``items`` if it is a usable list; InvalidParameters (``workflow.parameters_invalid``)
    saying what it is otherwise."""
    if not isinstance(items, list):
        raise InvalidParameters(f"items of {where} must be a list, got {kind_of(items)}")
    if len(items) > MAX_MAP_ITEMS:
        raise InvalidParameters(f"items of {where}: {len(items)} items, at most {MAX_MAP_ITEMS}")
    if len(json.dumps(items, default=str)) > MAX_ITEMS_BYTES:
        raise InvalidParameters(f"items of {where} take more than {MAX_ITEMS_BYTES} bytes")
    return items


def start_inputs(node: MapNode, context: dict[str, Any]) -> dict[str, Any]:
    """What the map node's ``node_started`` records: the rendered items."""
    items = check_items(render(node.items, context), f"map node {node.id!r}")
    return {"items": items, "count": len(items), "max_parallel": node.max_parallel}


def check(
    node: MapNode, inner: MapNode, current: NodeState, state: RunState, now: float, actor: str
) -> list[act.Action]:
    """The next actions of a running map node: item outcomes, its own outcome, new items."""
    items: list[Any] = (current.inputs.items if current.inputs else None) or []
    attempt = current.attempt
    ended = [
        _item_outcome(state, node.node_id, attempt, inner.node, item, actor)
        for _, item in sorted(current.items.items())
        if item.status == RUNNING
    ]
    outcomes: list[act.Action] = [act.Append(e) for e in ended if e is not None]
    if outcomes:
        return outcomes
    running = sum(1 for i in current.items.values() if i.status == RUNNING)
    failures = sorted((i for i in current.items.values() if i.status == FAILED), key=lambda i: i.index)
    stop = bool(failures) and not inner.allow_failures
    finished = sum(1 for i in current.items.values() if i.final)
    if finished == len(items) or (stop and not running):
        results = [
            current.items[i].result if i in current.items and current.items[i].status == SUCCEEDED else None
            for i in range(len(items))
        ]
        if stop:
            first = failures[0]
            error = f"item {first.index} failed: {first.error}"
            return [
                act.Append(
                    act.failed(
                        state, node, attempt, now, actor, first.error_code or "worker.error", error, result=results
                    )
                )
            ]
        return [act.Append(act.succeeded(state, node.node_id, attempt, now, actor, results))]
    if stop:
        return []
    free = inner.max_parallel - running
    starting = [i for i in range(len(items)) if i not in current.items][: max(0, free)]
    out: list[act.Action] = []
    for index in starting:
        out.extend(_start_item(state, node.node_id, attempt, inner.node, index, items[index], actor))
    return out


def _item_id(state: RunState, node_id: str, attempt: int, index: int) -> str:
    return f"{state.run_id}:{node_id}:{attempt}:item:{index}"


def _item_event(
    type: str,
    state: RunState,
    node_id: str,
    attempt: int,
    index: int,
    actor: str,
    suffix: str,
    **fields: Any,
) -> Event:
    data = {"node_id": node_id, "index": index, **fields.pop("data", {})}
    return act.event(
        type,
        state,
        actor,
        attempt=attempt,
        data=data,
        event_id=f"{_item_id(state, node_id, attempt, index)}:{suffix}",
        **fields,
    )


def _start_item(
    state: RunState,
    node_id: str,
    attempt: int,
    inner: PublishNode | WorkflowNode,
    index: int,
    item: Any,
    actor: str,
) -> list[act.Action]:
    started_id = f"{_item_id(state, node_id, attempt, index)}:started"
    inputs: dict[str, Any] = {}
    action: act.Action
    context = {**state.context(), "item": item, "index": index}
    base = f"{act.task_id_of(state.run_id, node_id, attempt)}:{index}"
    try:
        if isinstance(inner, PublishNode):
            task = act.task_message(inner, base, state, context, started_id)
            inputs.update(task_id=base, route=task["route"], task=task)
            action = act.Submit(task)
        else:
            child = act.child_start(inner, base, state, context, node_id, index)
            inputs.update(
                child_run_id=child.run_id,
                workflow=child.workflow_id,
                child={
                    "run_id": child.run_id,
                    "workflow_id": child.workflow_id,
                    "parameters": child.parameters,
                    "parent": child.parent,
                },
            )
            action = child
    except CogoError as exc:
        begun = _item_event(MAP_ITEM_STARTED, state, node_id, attempt, index, actor, "started")
        over = _item_event(
            MAP_ITEM_FAILED, state, node_id, attempt, index, actor, "outcome", error_code=exc.code, error=exc.message
        )
        return [act.Append(begun), act.Append(over)]
    begun = _item_event(MAP_ITEM_STARTED, state, node_id, attempt, index, actor, "started", data=inputs)
    return [act.Append(begun), action]


def _item_outcome(
    state: RunState,
    node_id: str,
    attempt: int,
    inner: PublishNode | WorkflowNode,
    item: ItemState,
    actor: str,
) -> Event | None:
    index = item.index
    if isinstance(inner, PublishNode):
        if not inner.wait:
            return _item_event(
                MAP_ITEM_SUCCEEDED,
                state,
                node_id,
                attempt,
                index,
                actor,
                "outcome",
                data={"result": {"task_id": item.task_id}},
            )
        outcome = state.task_outcomes.get(item.task_id or "")
        if outcome is None:
            return None
        if outcome.type == EXECUTE_DONE:
            result = data_of(outcome, ExecuteDone, lenient=True).result
            return _item_event(
                MAP_ITEM_SUCCEEDED,
                state,
                node_id,
                attempt,
                index,
                actor,
                "outcome",
                causation_id=outcome.event_id,
                data={"result": result},
            )
        return _item_event(
            MAP_ITEM_FAILED,
            state,
            node_id,
            attempt,
            index,
            actor,
            "outcome",
            causation_id=outcome.event_id,
            error_code=outcome.error_code or "worker.error",
            error=outcome.error or "task failed",
        )
    child = item.child_run_id or ""
    ended = state.child_outcomes.get(child)
    if ended is None:
        return None
    result = act.child_result(child, ended)
    if ended.get("status") == SUCCEEDED:
        return _item_event(
            MAP_ITEM_SUCCEEDED,
            state,
            node_id,
            attempt,
            index,
            actor,
            "outcome",
            causation_id=ended.get("event_id"),
            data={"result": result},
        )
    return _item_event(
        MAP_ITEM_FAILED,
        state,
        node_id,
        attempt,
        index,
        actor,
        "outcome",
        causation_id=ended.get("event_id"),
        error_code=ChildFailed.code,
        error=act.child_error(child, ended),
        data={"result": result},
    )
