"""``cogo workflow ...`` against a real facade (uvicorn on 127.0.0.1) found through
``<data-dir>/endpoints.json``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import uvicorn

from cogo import cli
from cogo.agents.echo import EchoActor
from cogo.cli.workflows import parameters_of
from cogo.endpoints import Endpoints, write_endpoints
from cogo.http import orchestrator as orchestrator_routes
from cogo.http.app import create_app
from cogo.http.state import AppState
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.runtime.workflow_engine import WorkflowEngine
from cogo.streams.policies import PolicyStore
from cogo.streams.server import free_port
from tests.helpers import running

DEFINITION: dict[str, Any] = {
    "id": "cliDemo",
    "parameters": {"sleep_ms": {"type": "integer", "default": 0}},
    "nodes": [
        {
            "id": "work",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"sleep_ms": "${params.sleep_ms}", "result": {"ok": True}},
        },
        {"id": "check", "type": "gate", "condition": "nodes.work.result.ok"},
    ],
}


async def _cli(capsys: Any, *argv: str) -> tuple[int, str]:
    """Run ``cogo ...`` (blocking httpx) in a thread; stdout, or stderr on failure."""
    code = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out if code == 0 else captured.err


async def test_workflow_commands(nats_server, nc, js, config, data_dir, tmp_path, capsys):
    policies = PolicyStore(js)
    await policies.start()
    state = AppState(nc=nc, config=config, policies=policies, data_dir=data_dir, api_token="tok")
    port = free_port()
    app = create_app(state, extra_routes=orchestrator_routes.routes)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    for _ in range(250):  # uvicorn has no "started" event to await
        if server.started:
            break
        await asyncio.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    write_endpoints(data_dir, Endpoints(nats_url=nats_server.url, http_url=url, api_token="tok"))
    definition = tmp_path / "cli.json"
    definition.write_text(json.dumps(DEFINITION))
    common = ["--data-dir", str(data_dir)]
    try:
        async with (
            running(nats_server.url, config, ExecutorDispatcher, EchoActor),
            running(nats_server.url, config, WorkflowEngine, data_dir=data_dir),
        ):
            code, out = await _cli(
                capsys,
                "workflow",
                "run",
                "--file",
                str(definition),
                "-p",
                "sleep_ms=10",
                "--run-id",
                "cli-run-1",
                "--wait",
                "--timeout",
                "20",
                *common,
            )
            assert code == 0, out
            final = json.loads(out)  # one JSON document: the final state
            assert final["runId"] == "cli-run-1" and final["status"] == "succeeded"

            code, out = await _cli(capsys, "workflow", "state", "cli-run-1", *common)
            assert code == 0 and json.loads(out)["gates"]["check"]["verdict"] == "passed"

            code, out = await _cli(capsys, "workflow", "list", *common)
            assert code == 0 and "cli-run-1" in out and "succeeded" in out

            code, out = await _cli(
                capsys,
                "workflow",
                "run",
                "--file",
                str(definition),
                "-p",
                "sleep_ms=2000",
                "--run-id",
                "cli-run-2",
                *common,
            )
            assert code == 0
            for _ in range(100):  # the start is queued until the orchestrator takes it
                code, out = await _cli(capsys, "workflow", "cancel", "cli-run-2", *common)
                if code == 0:
                    break
                await asyncio.sleep(0.1)
            assert code == 0 and json.loads(out)["status"] == "cancelling"

            code, err = await _cli(capsys, "workflow", "plan", "indexing", *common)
            assert code == 2 and "parameters.path: field required" in err

            # a human gate: the run waits until `cogo workflow signal` approves it
            gated = tmp_path / "gated.json"
            gated.write_text(json.dumps(GATED))
            code, out = await _cli(capsys, "workflow", "run", "--file", str(gated), "--run-id", "cli-gated", *common)
            assert code == 0 and json.loads(out)["runId"] == "cli-gated"
            for _ in range(100):  # 404 until the orchestrator has taken the start command
                code, out = await _cli(
                    capsys, "workflow", "signal", "cli-gated", "approve", "--data", '{"approved": true}', *common
                )
                if code == 0:
                    break
                await asyncio.sleep(0.1)
            assert code == 0 and json.loads(out)["node"] == "approve"
            code, err = await _cli(capsys, "workflow", "signal", "cli-gated", "nope", *common)
            assert code == 2 and "404" in err and "no signal node named 'nope'" in err
            for _ in range(100):
                code, out = await _cli(capsys, "workflow", "state", "cli-gated", *common)
                if json.loads(out)["status"] == "succeeded":
                    break
                await asyncio.sleep(0.1)
            assert json.loads(out)["nodes"][0]["result"] == {"approved": True}

            # schedules: every second, fired by the orchestrator holding the scheduler lease
            code, err = await _cli(capsys, "schedule", "add", "tick", "cliDemo", "--cron", "not a cron", *common)
            assert code == 2 and "422" in err and "cron" in err
            (data_dir / "workflows").mkdir(exist_ok=True)
            (data_dir / "workflows" / "cliDemo.json").write_text(json.dumps(DEFINITION))
            code, out = await _cli(capsys, "schedule", "add", "tick", "cliDemo", "--every", "1", *common)
            assert code == 0 and json.loads(out)["interval_s"] == 1, out
            for _ in range(150):
                code, out = await _cli(capsys, "schedule", "list", "--json", *common)
                if json.loads(out)[0]["fired"] >= 2:
                    break
                await asyncio.sleep(0.1)
            listed = json.loads(out)[0]
            assert listed["fired"] >= 2 and listed["lastRunId"].startswith("tick:20")
            code, out = await _cli(capsys, "schedule", "list", *common)
            assert code == 0 and "tick" in out and "every 1s" in out
            code, out = await _cli(capsys, "schedule", "delete", "tick", *common)
            assert code == 0 and json.loads(out)["deleted"] is True
            code, err = await _cli(capsys, "schedule", "delete", "tick", *common)
            assert code == 2 and "404" in err and "[schedule.not_found]" in err  # its own code

            (data_dir / "workflows" / "broken.toml").write_text("id = ")
            # an expression planning refuses: listed with its error, not as loaded
            (data_dir / "workflows" / "sneaky.json").write_text(
                json.dumps({"id": "sneaky", "nodes": [{"id": "g", "type": "gate", "condition": "__import__('os')"}]})
            )
            code, out = await _cli(capsys, "workflow", "defs", "--json", *common)
            broken = [w for w in json.loads(out) if w["id"] == "broken"]
            assert code == 0 and broken and "TOMLDecodeError" in broken[0]["error"]
            sneaky = [w for w in json.loads(out) if w["id"] == "sneaky"]
            assert "nodes.0.condition" in sneaky[0]["error"]
            code, out = await _cli(capsys, "workflow", "defs", *common)  # a table
            assert code == 0 and out.startswith("approveMerge") and "sneaky" not in out
    finally:
        server.should_exit = True
        await serving
        await policies.stop()


GATED: dict[str, Any] = {
    "id": "cliGated",
    "nodes": [
        {"id": "approve", "type": "signal"},
        {"id": "check", "type": "gate", "condition": "nodes.approve.result.approved == true"},
    ],
}


def test_parameters_parse_json_or_text():
    class Args:
        params = '{"a": 1}'
        param = ["n=3", "flag=true", "name=repo", 'obj={"x": [1]}', "path=/tmp/x"]

    assert parameters_of(Args()) == {  # type: ignore[arg-type]
        "a": 1,
        "n": 3,
        "flag": True,
        "name": "repo",
        "obj": {"x": [1]},
        "path": "/tmp/x",
    }
    Args.param = ["novalue"]
    with pytest.raises(Exception, match="KEY=VALUE"):
        parameters_of(Args())  # type: ignore[arg-type]
