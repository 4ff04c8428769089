"""Workflows end to end, in-process: dispatcher, echo, notifier and orchestrator on a real
nats-server; every node type, gates that fail, cancellation, Wait timeouts."""

from __future__ import annotations

import json
from typing import Any

from cogo.agents.echo import EchoActor
from cogo.agents.notifier import SIGNATURE_HEADER, TIMESTAMP_HEADER, NotifierActor, sign
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.runtime.workflow_engine import CancelRun, WorkflowEngine, send_command
from tests.helpers import EventReader, running
from tests.workflow_support import Webhook, start_run, wait_run

SECRET = "test-webhook-secret"

EVERY_NODE_TYPE: dict[str, Any] = {
    "id": "everyNodeType",
    "parameters": {
        "n": {"type": "integer", "default": 2},
        "webhook_url": {"type": "string", "required": True},
    },
    "defaults": {"assignment": {"max_attempts": 2}},
    "nodes": [
        {
            "id": "first",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"result": {"count": "${params.n}", "items": ["a", "b"]}},
        },
        {
            "id": "second",
            "type": "retry",
            "max_attempts": 3,
            "backoff": {"initial_ms": 200, "multiplier": 2.0, "max_ms": 1000},
            # the first attempt "fails" its condition, so the node runs twice
            "until": "nodes.second.attempt >= 2",
            "node": {
                "type": "publish",
                "route": "echo.run.0",
                "payload": {"result": {"from": "${nodes.first.task_id}"}},
            },
        },
        {
            "id": "first_seen",
            "type": "wait",
            "event": {"type": "execute_done", "task_id": "${nodes.first.task_id}"},
            "timeout_ms": 5000,
        },
        {
            "id": "settled",
            "type": "wait",
            "condition": "nodes.second.status == 'succeeded'",
            "timeout_ms": 2000,
        },
        {
            "id": "check",
            "type": "gate",
            "condition": "nodes.first.result.count == params.n and len(nodes.first.result['items']) == 2",
        },
        {"id": "tell", "type": "notify", "url": "${params.webhook_url}", "message": "all done"},
    ],
}


async def test_every_node_type(nats_server, js, config, webhook: Webhook, monkeypatch):
    monkeypatch.setenv("COGO_WEBHOOK_SECRET", SECRET)
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        async with running(nats_server.url, config, NotifierActor):
            run_id = await start_run(js, config, EVERY_NODE_TYPE, webhook_url=webhook.url)
            state = await wait_run(js, run_id)
    assert state.status == "succeeded", state.view()
    nodes = state.nodes
    assert {n.id: n.status for n in nodes.values()} == dict.fromkeys(
        ["first", "second", "first_seen", "settled", "check", "tell"], "succeeded"
    )
    assert nodes["first"].result == {"count": 2, "items": ["a", "b"]}
    # Retry: two attempts, the second after the backoff, each its own task
    second = nodes["second"]
    assert [a.status for a in second.attempts] == ["failed", "succeeded"]
    assert second.attempts[0].error_code == "workflow.condition_unmet"
    assert [a.task_id for a in second.attempts] == [f"{run_id}:second:1", f"{run_id}:second:2"]
    assert second.result == {"from": f"{run_id}:first:1"}
    # Wait on an event: the matched execute_done is the result
    assert nodes["first_seen"].result["task_id"] == f"{run_id}:first:1"
    assert nodes["check"].verdict == "passed"
    assert state.view()["gates"]["check"]["verdict"] == "passed"
    # Notify reached the receiver once, signed
    assert len(webhook.requests) == 1
    request = webhook.requests[0]
    stamp = request["headers"][TIMESTAMP_HEADER]
    assert request["headers"][SIGNATURE_HEADER] == sign(SECRET.encode(), stamp, request["raw"])
    body = json.loads(request["raw"])
    assert body["run_id"] == run_id and body["message"] == "all done"
    assert body["gates"] == {"check": "passed"}
    # sent while the Notify node itself runs: the run has not succeeded yet (issue 14)
    assert body["status"] == "running" and state.status == "succeeded"

    reader = EventReader(js)
    await reader.poll()
    enqueued: dict[str, int] = {}
    for event in reader.events:
        if event.type == "execute_enqueued" and event.correlation_id == run_id:
            enqueued[event.task_id or ""] = enqueued.get(event.task_id or "", 0) + 1
    assert enqueued == {
        f"{run_id}:first:1": 1,
        f"{run_id}:second:1": 1,
        f"{run_id}:second:2": 1,
        f"{run_id}:tell:1": 1,
    }
    kinds = [e.type for e in reader.events if e.correlation_id == run_id]
    assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_succeeded"
    assert "gate_passed" in kinds


FAILING_GATE: dict[str, Any] = {
    "id": "failingGate",
    "parameters": {"webhook_url": {"type": "string", "default": None}},
    "nodes": [
        {
            "id": "work",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"result": {"verdict": "fail"}},
        },
        {"id": "verdict", "type": "gate", "condition": "nodes.work.result.verdict == 'pass'"},
        {"id": "after_gate", "type": "publish", "route": "echo.run.0", "payload": {}},
        {
            "id": "report",
            "type": "notify",
            "always": True,
            "when": "params.webhook_url",
            "url": "${params.webhook_url}",
        },
    ],
}


async def test_failing_gate_records_failed_verdict(nats_server, js, config, webhook, monkeypatch):
    monkeypatch.setenv("COGO_WEBHOOK_SECRET", SECRET)
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        async with running(nats_server.url, config, NotifierActor):
            run_id = await start_run(js, config, FAILING_GATE, webhook_url=webhook.url)
            state = await wait_run(js, run_id)
            quiet_id = await start_run(js, config, FAILING_GATE)
            quiet = await wait_run(js, quiet_id)
    assert state.status == "failed"
    assert state.error_code == "workflow.gate_failed"
    gate = state.nodes["verdict"]
    assert gate.status == "failed" and gate.verdict == "failed"
    assert state.view()["gates"]["verdict"]["verdict"] == "failed"
    # downstream of a failure is skipped; an `always` Notify still reports it
    assert state.nodes["after_gate"].status == "skipped"
    assert state.nodes["after_gate"].skip_reason == "upstream"
    assert state.nodes["report"].status == "succeeded"
    body = json.loads(webhook.requests[0]["raw"])
    assert body["status"] == "failed" and body["gates"] == {"verdict": "failed"}
    # without a webhook_url the Notify is skipped by its `when`
    assert quiet.status == "failed"
    assert quiet.nodes["report"].status == "skipped"
    assert quiet.nodes["report"].skip_reason == "condition"
    assert len(webhook.requests) == 1


WAITING: dict[str, Any] = {
    "id": "waiting",
    "parameters": {"timeout_ms": {"type": "integer", "default": 60000}},
    "nodes": [
        {
            "id": "never",
            "type": "wait",
            "timeout_ms": "${params.timeout_ms}",
            "event": {"type": "never_happens"},
        },
        {"id": "unreached", "type": "publish", "route": "echo.run.0", "payload": {}},
    ],
}


async def test_wait_timeout_fails_the_run(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        run_id = await start_run(js, config, WAITING, timeout_ms=500)
        state = await wait_run(js, run_id, timeout=10)
    assert state.status == "failed"
    never = state.nodes["never"]
    assert never.status == "failed" and never.error_code == "workflow.wait_timeout"
    assert state.nodes["unreached"].status == "skipped"


async def test_cancel_a_run(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        run_id = await start_run(js, config, WAITING)
        await wait_run(js, run_id, until=lambda s: s.nodes.get("never") and s.nodes["never"].status == "running")
        await send_command(js, CancelRun(run_id=run_id, reason="test says stop"))
        state = await wait_run(js, run_id, timeout=10)
    assert state.status == "cancelled"
    assert state.error == "test says stop"
    assert {n.status for n in state.nodes.values()} == {"cancelled"}
