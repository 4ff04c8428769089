"""The workflow HTTP routes, in-process (httpx + ASGITransport) against a real bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cogo.actors.dispatcher import ExecutorDispatcher
from cogo.actors.echo import EchoActor
from cogo.actors.orchestrator import Orchestrator
from cogo.http import orchestrator as orchestrator_routes
from cogo.http.app import AppState, create_app
from cogo.streams.policies import PolicyStore
from tests.helpers import running

TOKEN = "t0ken"


@pytest.fixture
async def client(nc, js, config, data_dir) -> AsyncIterator[httpx.AsyncClient]:
    policies = PolicyStore(js)
    await policies.start()
    state = AppState(nc=nc, config=config, policies=policies, data_dir=data_dir, api_token=TOKEN)
    app = create_app(state, extra_routes=orchestrator_routes.routes)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://cogo", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as http:
        yield http
    await policies.stop()


ECHO_GATED: dict[str, Any] = {
    "id": "echoGated",
    "parameters": {"verdict": {"type": "string", "required": True, "enum": ["pass", "fail"]}},
    "nodes": [
        {"id": "work", "type": "publish", "route": "echo.run.0",
         "payload": {"result": {"verdict": "${params.verdict}", "artifacts": ["x/report.json"]}}},
        {"id": "verdict", "type": "gate", "condition": "nodes.work.result.verdict == 'pass'"},
    ],
}  # fmt: skip


async def test_plan_builtin_and_field_errors(client):
    ok = await client.post(
        "/api/orchestrator/plan",
        json={"workflowId": "codeBuildTest", "parameters": {
            "repo": "/tmp/r", "change": {"generator": "edits", "edits": []},
            "build_cmd": "true", "test_cmd": "true", "assignment": {"timeout_ms": 120000}}},
    )  # fmt: skip
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

    misshapen = dict(ECHO_GATED, nodes=[
        {"id": "w", "type": "wait", "timeout_ms": 10},
        {"id": "x", "type": "teleport"},
        {"id": "bad id", "type": "gate", "condition": "True"},
    ])  # fmt: skip
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

    bad = dict(ECHO_GATED, nodes=[
        {"id": "work", "type": "publish", "route": "no.such.route", "payload": {}},
        {"id": "g", "type": "gate", "condition": "__import__('os').system('true')"},
        {"id": "p", "type": "publish", "route": "echo.run.0", "after": ["later"],
         "assignment": {"max_tokens": 10**9}, "payload": {"x": "${nodes.later.result}"}},
        {"id": "later", "type": "gate", "condition": "nodes.p.result.x == 1"},
    ])  # fmt: skip
    invalid = await client.post(
        "/api/orchestrator/plan", json={"definition": bad, "parameters": {"verdict": "pass"}}
    )
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
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, Orchestrator):
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
    assert ok["gates"] == {"verdict": {"verdict": "passed", "condition":
                                       "nodes.work.result.verdict == 'pass'", "error": None}}  # fmt: skip
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
    assert metrics["durationMs"]["p50"] > 0 and metrics["durationMs"]["p90"] >= metrics[
        "durationMs"]["p50"]  # fmt: skip
    assert len(metrics["recentRuns"]) == 2
    assert not_found.status_code == 404
    assert finished_cancel.status_code == 409
