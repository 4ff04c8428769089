"""Signal, map and workflow (child run) nodes end to end, in-process: dispatcher, echo and
orchestrator on a real nats-server; plan-time refusals (cycles, items that are not a list)."""

from __future__ import annotations

from typing import Any

import pytest

from cogo.agents.echo import EchoActor
from cogo.errors import InvalidParameters, InvalidWorkflow
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.runtime.workflow_engine import CancelRun, SignalRun, WorkflowEngine, send_command
from cogo.workflows.definition import Catalog
from cogo.workflows.expressions import evaluate
from cogo.workflows.planner import plan_workflow
from tests.helpers import EventReader, running
from tests.workflow_support import APPROVAL, CHILD, catalog_plan, start_run, wait_run


def _running(node: str) -> Any:
    return lambda s: node in s.nodes and s.nodes[node].status == "running"


async def test_signal_early_late_and_timeout(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        # early: sent while `work` still runs, so before the signal node started
        early = await start_run(js, config, APPROVAL, sleep_ms=1500)
        await wait_run(js, early, until=_running("work"))
        await send_command(
            js, SignalRun(run_id=early, name="approve", signal_id="s1", data={"approved": True, "by": "ada"})
        )
        # a second signal of the same name is kept in the log, but the first one counts
        await send_command(
            js, SignalRun(run_id=early, name="approve", signal_id="s2", data={"approved": False, "by": "eve"})
        )
        # late: sent once the node waits
        late = await start_run(js, config, APPROVAL)
        await wait_run(js, late, until=_running("approve"))
        await send_command(
            js, SignalRun(run_id=late, name="approve", signal_id="s1", data={"approved": False, "by": "bob"})
        )
        timed_out = await start_run(js, config, APPROVAL, timeout_ms=300)
        early_state = await wait_run(js, early)
        late_state = await wait_run(js, late)
        timeout_state = await wait_run(js, timed_out)
    assert early_state.status == "succeeded", early_state.view()
    assert early_state.nodes["approve"].result == {"approved": True, "by": "ada"}
    assert early_state.nodes["merge"].result == {"merged_by": "ada"}
    assert [s["signal_id"] for s in early_state.signals["approve"]] == ["s1", "s2"]
    reader = EventReader(js)
    await reader.poll()
    kinds = [(e.type, (e.data or {}).get("node_id")) for e in reader.events if e.correlation_id == early]
    assert kinds.index(("workflow_signaled", None)) < kinds.index(("node_started", "approve"))
    # the first signal is the result; the gate on it fails the run
    assert late_state.status == "failed"
    assert late_state.nodes["approve"].result == {"approved": False, "by": "bob"}
    assert late_state.nodes["approved"].verdict == "failed"
    assert timeout_state.nodes["approve"].error_code == "workflow.signal_timeout"
    assert timeout_state.status == "failed"


MAPPED: dict[str, Any] = {
    "id": "mapped",
    "parameters": {"items": {"type": "array", "required": True}, "allow": {"type": "boolean", "default": False}},
    "nodes": [
        {
            "id": "each",
            "type": "map",
            "items": "${params.items}",
            "max_parallel": 2,
            "allow_failures": "${params.allow}",
            "node": {
                "type": "publish",
                "route": "echo.run.0",
                "payload": {
                    "sleep_ms": "${item.sleep}",
                    "fail_always": "${item.fail}",
                    "result": {"i": "${index}", "name": "${item.name}"},
                    "__assignment": {"max_attempts": 1},
                },
            },
        },
        {"id": "count", "type": "gate", "condition": "len(nodes.each.result) == len(params.items)"},
    ],
}


def _items(n: int, fail: int | None = None) -> list[dict[str, Any]]:
    # later items finish first, so item order in the result is not completion order
    return [{"name": f"n{i}", "sleep": 50 * (n - i), "fail": "permanent" if i == fail else None} for i in range(n)]


async def test_map_results_in_order_bounded_and_failures(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        ok = await start_run(js, config, MAPPED, items=_items(6))
        tolerant = await start_run(js, config, MAPPED, items=_items(4, fail=1), allow=True)
        strict = await start_run(js, config, MAPPED, items=_items(4, fail=1))
        empty = await start_run(js, config, MAPPED, items=[])
        states = {r: await wait_run(js, r) for r in (ok, tolerant, strict, empty)}
    state = states[ok]
    assert state.status == "succeeded", state.view()
    assert state.nodes["each"].result == [{"i": i, "name": f"n{i}"} for i in range(6)]
    reader = EventReader(js)
    await reader.poll()
    live, most = 0, 0
    for e in reader.events:  # log order: never more than max_parallel items running
        if e.correlation_id == ok and e.type == "map_item_started":
            live += 1
            most = max(most, live)
        elif e.correlation_id == ok and e.type in ("map_item_succeeded", "map_item_failed"):
            live -= 1
    assert most == 2
    tasks = sorted(e.task_id for e in reader.events if e.type == "execute_enqueued" and e.correlation_id == ok)
    assert tasks == [f"{ok}:each:1:{i}" for i in range(6)]
    assert states[tolerant].status == "succeeded"
    assert states[tolerant].nodes["each"].result[1] is None
    assert states[tolerant].nodes["each"].result[2] == {"i": 2, "name": "n2"}
    failed = states[strict]
    assert failed.status == "failed" and failed.nodes["each"].error_code == "worker.permanent"
    assert "item 1 failed" in (failed.nodes["each"].error or "")
    assert states[empty].status == "succeeded" and states[empty].nodes["each"].result == []


async def test_child_runs_links_and_cancel_cascade(nats_server, js, config, workflows_dir):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        plan = catalog_plan(config, "parent")
        from cogo.runtime.workflow_engine import StartRun

        await send_command(js, StartRun(run_id="p1", plan=plan.to_json()))
        done = await wait_run(js, "p1")
        held = catalog_plan(config, "parent", hold=True)
        await send_command(js, StartRun(run_id="p2", plan=held.to_json()))
        await wait_run(js, "p2:one:1", until=_running("hold"))
        await send_command(js, CancelRun(run_id="p2", reason="stop it"))
        cancelled = await wait_run(js, "p2")
        child = await wait_run(js, "p2:one:1")
    assert done.status == "succeeded", done.view()
    one = done.nodes["one"]
    assert one.result == {
        "runId": "p1:one:1",
        "workflowId": "child",
        "status": "succeeded",
        "errorCode": None,
        "error": None,
    }
    assert [r["runId"] for r in done.nodes["many"].result] == [f"p1:many:1:{i}" for i in range(3)]
    assert done.view()["children"] == ["p1:one:1", *[f"p1:many:1:{i}" for i in range(3)]]
    first = await wait_run(js, "p1:many:1:0")
    assert first.nodes["greet"].result == {"hello": "a"}
    assert first.parent == {"runId": "p1", "nodeId": "many", "workflowId": "parent", "ancestry": ["parent"], "index": 0}
    assert cancelled.status == "cancelled"
    assert child.status == "cancelled" and "parent run p2 cancelled" in (child.error or "")
    assert child.parent is not None and child.parent["runId"] == "p2"


def test_plan_refuses_cycles_and_items_that_are_not_lists(config, workflows_dir):
    clean = Catalog.for_data_dir(None).load()
    definitions = dict(clean)
    looped = dict(CHILD, nodes=[*CHILD["nodes"], {"id": "back", "type": "workflow", "workflowId": "parent"}])
    definitions["child"] = looped
    with pytest.raises(InvalidWorkflow) as cycle:
        plan_workflow(definitions["parent"], {}, config.route_policy, definitions)
    loc_types = {(tuple(e["loc"]), e["type"]) for e in cycle.value.detail}
    assert (("definition", "nodes", 0, "workflowId"), "workflow.cycle") in loc_types
    assert any("parent -> child -> parent" in e["msg"] for e in cycle.value.detail)
    selfish = {
        "id": "selfish",
        "nodes": [{"id": "me", "type": "workflow", "workflowId": "selfish"}],
    }
    with pytest.raises(InvalidWorkflow, match="cannot be planned"):
        plan_workflow(selfish, {}, config.route_policy, {**definitions, "selfish": selfish})
    with pytest.raises(InvalidWorkflow) as missing:
        plan_workflow(
            {"id": "x", "nodes": [{"id": "w", "type": "workflow", "workflowId": "nope"}]},
            {},
            config.route_policy,
            definitions,
        )
    assert missing.value.detail[0]["type"] == "workflow.not_found"
    with pytest.raises(InvalidWorkflow) as params:
        plan_workflow(
            {
                "id": "x",
                "nodes": [{"id": "w", "type": "workflow", "workflowId": "child", "parameters": {"nam": "typo"}}],
            },
            {},
            config.route_policy,
            clean,
        )
    assert {tuple(e["loc"])[-2:] for e in params.value.detail} >= {("parameters", "name"), ("parameters", "nam")}
    # items known at plan time and not a list: the parameters' fault
    with pytest.raises(InvalidParameters) as typed:  # a declared array: the parameter check
        plan_workflow(MAPPED, {"items": {"not": "a list"}}, config.route_policy)
    assert typed.value.detail[0]["loc"] == ["parameters", "items"]
    untyped = dict(MAPPED, parameters={**MAPPED["parameters"], "items": {"type": "any"}})
    with pytest.raises(InvalidParameters) as items:  # the map's own check
        plan_workflow(untyped, {"items": {"not": "a list"}}, config.route_policy)
    assert items.value.code == "workflow.parameters_invalid"
    assert items.value.detail[0]["loc"] == ["definition", "nodes", 0, "items"]
    assert "got an object" in items.value.detail[0]["msg"]
    with pytest.raises(InvalidParameters):
        plan_workflow(dict(untyped, nodes=[dict(MAPPED["nodes"][0], items="abc")]), {}, config.route_policy)
    # read from another node: only known when the map starts
    later = dict(MAPPED["nodes"][0], items="${nodes.first.result}", after=["first"])
    first = {"id": "first", "type": "publish", "route": "echo.run.0", "payload": {}}
    plan_workflow(
        {"id": "later", "parameters": MAPPED["parameters"], "nodes": [first, later]}, {"items": []}, config.route_policy
    )


async def test_map_items_that_turn_out_not_a_list(nats_server, js, config):
    definition = {
        "id": "lateItems",
        "nodes": [
            {"id": "first", "type": "publish", "route": "echo.run.0", "payload": {"result": "text"}},
            {
                "id": "each",
                "type": "map",
                "items": "${nodes.first.result}",
                "node": {"type": "publish", "route": "echo.run.0", "payload": {}},
            },
        ],
    }
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        state = await wait_run(js, await start_run(js, config, definition))
    assert state.status == "failed"
    assert state.nodes["each"].error_code == "workflow.parameters_invalid"
    assert "must be a list, got a string" in (state.nodes["each"].error or "")


def test_conditions_accept_json_literals():
    context = {"params": {"ok": True, "gone": None, "no": False}}
    assert evaluate("params.ok == true and params.gone == null", context) is True
    assert evaluate("params.no == false", context) is True
    assert evaluate("params.ok is true", context) is True
    assert evaluate("[true, false, null]", context) == [True, False, None]
    assert evaluate("True == true", context) is True
