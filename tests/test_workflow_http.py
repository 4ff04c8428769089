"""The workflow HTTP routes, in-process (httpx + ASGITransport) against a real bus."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cogo.agents.echo import EchoActor
from cogo.config import WORKFLOWS_DIR_ENV
from cogo.http import orchestrator as orchestrator_routes
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.runtime.workflow_engine import WorkflowEngine
from tests.helpers import facade, running

TOKEN = "t0ken"


@pytest.fixture
async def client(nc, js, config, data_dir) -> AsyncIterator[httpx.AsyncClient]:
    routes = orchestrator_routes.routes
    async with facade(nc, config, data_dir, token=TOKEN, extra_routes=routes) as http:
        yield http


ECHO_GATED: dict[str, Any] = {
    "id": "echoGated",
    "parameters": {"verdict": {"type": "string", "required": True, "enum": ["pass", "fail"]}},
    "nodes": [
        {
            "id": "work",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"result": {"verdict": "${params.verdict}", "artifacts": ["x/report.json"]}},
        },
        {"id": "verdict", "type": "gate", "condition": "nodes.work.result.verdict == 'pass'"},
    ],
}


async def test_plan_builtin_and_field_errors(client):
    ok = await client.post(
        "/api/orchestrator/plan",
        json={
            "workflowId": "codeBuildTest",
            "parameters": {
                "repo": "/tmp/r",
                "change": {"generator": "edits", "edits": []},
                "build_cmd": "true",
                "test_cmd": "true",
                "assignment": {"timeout_ms": 120000},
            },
        },
    )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["routes"] == ["codegen.generate.0", "code.build-test.0", "notify.webhook.0"]
    nodes = {n["id"]: n for n in body["plan"]["nodes"]}
    assert list(nodes) == ["codegen", "build_test", "verdict", "notify"]
    assert nodes["codegen"]["assignment"] == {"timeout_ms": 120000}
    assert nodes["codegen"]["resolved_assignment"]["timeout_ms"] == 120000
    inner = nodes["build_test"]["node"]
    assert inner["payload"]["edits_task_id"] == "${nodes.codegen.task_id}"
    assert nodes["verdict"]["condition"] == "nodes.build_test.result.verdict == 'pass'"

    missing = await client.post("/api/orchestrator/plan", json={"workflowId": "indexing"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "parameters", "path"]

    unknown = await client.post("/api/orchestrator/plan", json={"workflowId": "nope"})
    assert unknown.status_code == 404

    misshapen = dict(
        ECHO_GATED,
        nodes=[
            {"id": "w", "type": "wait", "timeout_ms": 10},
            {"id": "x", "type": "teleport"},
            {"id": "bad id", "type": "gate", "condition": "True"},
        ],
    )
    shape = await client.post(
        "/api/orchestrator/plan", json={"definition": misshapen, "parameters": {"verdict": "pass"}}
    )
    assert shape.status_code == 422
    locs = [e["loc"][:4] for e in shape.json()["detail"]]
    assert ["body", "definition", "nodes", 0] in locs
    assert ["body", "definition", "nodes", 1] in locs
    assert ["body", "definition", "nodes", 2] in locs
    assert any(
        e["loc"][0:2] == ["body", "parameters"]
        for e in (
            await client.post(
                "/api/orchestrator/plan",
                json={"definition": ECHO_GATED, "parameters": {"verdict": "maybe"}},
            )
        ).json()["detail"]
    )

    bad = dict(
        ECHO_GATED,
        nodes=[
            {"id": "work", "type": "publish", "route": "no.such.route", "payload": {}},
            {"id": "g", "type": "gate", "condition": "__import__('os').system('true')"},
            {
                "id": "p",
                "type": "publish",
                "route": "echo.run.0",
                "after": ["later"],
                "assignment": {"max_tokens": 10**9},
                "payload": {"x": "${nodes.later.result}"},
            },
            {"id": "later", "type": "gate", "condition": "nodes.p.result.x == 1"},
        ],
    )
    invalid = await client.post("/api/orchestrator/plan", json={"definition": bad, "parameters": {"verdict": "pass"}})
    assert invalid.status_code == 422
    errors = {tuple(e["loc"]): e["type"] for e in invalid.json()["detail"]}
    assert errors[("body", "definition", "nodes", 0, "route")] == "route.unknown"
    assert errors[("body", "definition", "nodes", 1, "condition")] == "expression.invalid"
    assert errors[("body", "definition", "nodes", 2, "after")] == "value_error"
    assert errors[("body", "definition", "nodes", 2, "assignment")] == "policy.max_tokens_exceeded"
    assert errors[("body", "definition", "nodes", 2, "payload")] == "value_error"

    unauthorized = await client.get("/api/workflows", headers={"Authorization": "Bearer no"})
    assert unauthorized.status_code == 401
    listed = await client.get("/api/workflows")
    assert {"indexing", "codeBuildTest"} <= {w["id"] for w in listed.json()["workflows"]}


async def _state(client: httpx.AsyncClient, run_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/api/orchestrator/state", params={"runId": run_id})
        if response.status_code == 200 and response.json()["endedAt"]:
            return response.json()  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)


async def test_execute_state_runs_and_metrics(nats_server, client, config, data_dir):
    (data_dir / "workflows").mkdir()
    import json

    (data_dir / "workflows" / "echoGated.json").write_text(json.dumps(ECHO_GATED))
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        started = await client.post(
            "/api/workflows/execute",
            json={"workflowId": "echoGated", "parameters": {"verdict": "pass"}},
        )
        assert started.status_code == 202, started.text
        passing = started.json()["runId"]
        planned = await client.post(
            "/api/orchestrator/plan",
            json={"workflowId": "echoGated", "parameters": {"verdict": "fail"}},
        )
        from_plan = await client.post(
            "/api/orchestrator/execute", json={"plan": planned.json()["plan"], "runId": "r-fail-1"}
        )
        assert from_plan.status_code == 202 and from_plan.json()["runId"] == "r-fail-1"
        again = await client.post(
            "/api/orchestrator/execute", json={"plan": planned.json()["plan"], "runId": "r-fail-1"}
        )
        assert again.json()["duplicate"] is True
        ok = await _state(client, passing)
        failed = await _state(client, "r-fail-1")

        runs = await client.get("/api/orchestrator/runs", params={"workflowId": "echoGated"})
        metrics = (await client.get("/api/metrics/workflows/echoGated")).json()
        not_found = await client.get("/api/orchestrator/state", params={"runId": "nope"})
        finished_cancel = await client.post("/api/orchestrator/cancel", json={"runId": passing})

    assert ok["status"] == "succeeded"
    assert ok["gates"] == {
        "verdict": {"verdict": "passed", "condition": "nodes.work.result.verdict == 'pass'", "error": None}
    }
    assert ok["artifacts"] == [{"node": "work", "key": "x/report.json"}]
    work = ok["nodes"][0]
    assert work["status"] == "succeeded" and work["attempt"] == 1
    assert work["taskId"] == f"{passing}:work:1" and work["startedAt"] and work["endedAt"]
    assert failed["status"] == "failed" and failed["gates"]["verdict"]["verdict"] == "failed"
    assert failed["errorCode"] == "workflow.gate_failed"

    assert runs.status_code == 200
    assert {r["runId"] for r in runs.json()["runs"]} == {passing, "r-fail-1"}
    assert metrics["runs"] == 2 and metrics["succeeded"] == 1 and metrics["failed"] == 1
    assert metrics["gates"] == {"evaluated": 2, "passed": 1, "failed": 1, "passRate": 0.5}
    assert metrics["durationMs"]["p50"] > 0 and metrics["durationMs"]["p90"] >= metrics["durationMs"]["p50"]
    assert len(metrics["recentRuns"]) == 2
    assert not_found.status_code == 404
    assert finished_cancel.status_code == 409


GATED_BY_HUMAN: dict[str, Any] = {
    "id": "gatedByHuman",
    "nodes": [
        {"id": "ask", "type": "signal", "name": "approve", "timeout_ms": 60000},
        {"id": "ok", "type": "gate", "condition": "nodes.ask.result.approved == true"},
    ],
}


async def test_signal_route_statuses(nats_server, client, config, data_dir):
    (data_dir / "workflows").mkdir()
    import json

    (data_dir / "workflows" / "gatedByHuman.json").write_text(json.dumps(GATED_BY_HUMAN))
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        started = await client.post("/api/workflows/execute", json={"workflowId": "gatedByHuman"})
        run_id = started.json()["runId"]
        unknown_run = await client.post("/api/orchestrator/signal", json={"runId": "nope", "name": "approve"})
        deadline = time.monotonic() + 15
        while (await client.get("/api/orchestrator/state", params={"runId": run_id})).status_code == 404:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        unknown_name = await client.post("/api/orchestrator/signal", json={"runId": run_id, "name": "reject"})
        malformed = await client.post("/api/orchestrator/signal", json={"runId": run_id, "name": "no spaces"})
        sent = await client.post(
            "/api/orchestrator/signal",
            json={"runId": run_id, "name": "approve", "data": {"approved": True}, "signalId": "once"},
        )
        again = await client.post(
            "/api/orchestrator/signal",
            json={"runId": run_id, "name": "approve", "data": {"approved": True}, "signalId": "once"},
        )
        final = await _state(client, run_id)
        late = await client.post("/api/orchestrator/signal", json={"runId": run_id, "name": "approve"})
    assert unknown_run.status_code == 404 and "no run" in unknown_run.json()["detail"]
    assert unknown_name.status_code == 404
    assert "no signal node named 'reject' (signals: approve)" in unknown_name.json()["detail"]
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["loc"] == ["body", "name"]
    assert sent.status_code == 202, sent.text
    assert sent.json()["node"] == "ask" and sent.json()["signalId"] == "once"
    assert again.status_code in (202, 409)  # the same signal id: delivered once either way
    assert final["status"] == "succeeded", final
    assert final["nodes"][0]["result"] == {"approved": True} and final["signals"] == ["approve"]
    assert late.status_code == 409 and "already succeeded" in late.json()["detail"]
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"202", "404", "409", "503"} <= set(paths["/api/orchestrator/signal"]["post"]["responses"])


def _workflow_enums(node: Any) -> list[list[str]]:
    """Every ``enum`` of the document that lists workflow ids."""
    if isinstance(node, list):
        return [e for child in node for e in _workflow_enums(child)]
    if not isinstance(node, dict):
        return []
    found = [node["enum"]] if "codeBuildTest" in (node.get("enum") or []) else []
    return found + [e for child in node.values() for e in _workflow_enums(child)]


async def test_openapi_without_its_workflow_enums_says_why(client, monkeypatch, caplog):
    served = (await client.get("/openapi.json")).json()
    assert _workflow_enums(served)  # the catalog's ids, while it loads
    # a workflows directory the catalog cannot even look at (ENAMETOOLONG)
    monkeypatch.setenv(WORKFLOWS_DIR_ENV, "/tmp/" + "w" * 300)
    caplog.set_level(logging.WARNING, logger="cogo.http.openapi")
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert _workflow_enums(response.json()) == []
    assert response.json()["paths"].keys() == served["paths"].keys()
    warnings = [r.getMessage() for r in caplog.records if r.name == "cogo.http.openapi"]
    assert len(warnings) == 1 and "File name too long" in warnings[0], warnings


async def test_schedule_routes(client, data_dir):
    bad_cron = await client.post(
        "/api/schedules",
        json={"id": "nightly", "workflowId": "indexing", "parameters": {"path": "/tmp"}, "cron": "61 * * * *"},
    )
    both = await client.post(
        "/api/schedules", json={"id": "nightly", "workflowId": "indexing", "cron": "0 3 * * *", "interval_s": 5}
    )
    unknown = await client.post("/api/schedules", json={"id": "nightly", "workflowId": "nope", "interval_s": 5})
    unplannable = await client.post("/api/schedules", json={"id": "nightly", "workflowId": "indexing", "interval_s": 5})
    policy = await client.post(
        "/api/schedules", json={"id": "nightly", "workflowId": "indexing", "interval_s": 5, "catchup": "some"}
    )
    body = {
        "id": "nightly",
        "workflowId": "indexing",
        "parameters": {"path": "/tmp"},
        "cron": "0 3 * * *",
        "catchup": "all",
        "max_catchup": 5,
    }
    created = await client.post("/api/schedules", json=body)
    replaced = await client.post("/api/schedules", json={**body, "cron": "30 3 * * *"})
    listed = await client.get("/api/schedules")
    gone = await client.delete("/api/schedules/nightly")
    gone_again = await client.delete("/api/schedules/nightly")
    empty = await client.get("/api/schedules")
    assert bad_cron.status_code == 422 and bad_cron.json()["detail"][0]["loc"] == ["body", "cron"]
    assert "not a valid cron expression" in bad_cron.json()["detail"][0]["msg"]
    assert both.status_code == 422 and "exactly one of" in both.json()["detail"][0]["msg"]
    assert unknown.status_code == 404
    assert unplannable.status_code == 422
    assert unplannable.json()["detail"][0]["loc"] == ["body", "parameters", "path"]
    assert policy.status_code == 422 and policy.json()["detail"][0]["loc"] == ["body", "catchup"]
    assert created.status_code == 201, created.text
    assert created.json()["nextTick"].endswith("T03:00:00Z") and created.json()["fired"] == 0
    assert replaced.status_code == 200 and replaced.json()["nextTick"].endswith("T03:30:00Z")
    assert [s["id"] for s in listed.json()["schedules"]] == ["nightly"]
    assert listed.json()["schedules"][0]["cron"] == "30 3 * * *"
    assert gone.status_code == 200 and gone_again.status_code == 404
    assert empty.json() == {"schedules": [], "count": 0}


async def test_defs_lists_files_that_do_not_load(client, data_dir):
    folder = data_dir / "workflows"
    folder.mkdir()
    (folder / "broken.json").write_text('{"id": "broken", "nodes": [')
    (folder / "misshapen.json").write_text('{"id": "misshapen", "nodes": []}')
    rows = {w["id"]: w for w in (await client.get("/api/workflows")).json()["workflows"]}
    assert "JSONDecodeError" in rows["broken"]["error"] and rows["broken"]["path"].endswith("broken.json")
    assert "nodes" in rows["misshapen"]["error"]
    assert "error" not in rows["codeBuildTest"]
