"""The NATS permission matrix: every forbidden subject refused for every user, allowed ones work.

The expected matrix is written out here by hand (not derived from cogo.streams.auth), so a
change that widens or narrows a user's permissions fails this test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import nats
import pytest

import cogo
from cogo.runtime.loader import builtin, declare_apps
from cogo.streams.auth import AuthPlan, accounts_config, credentials
from cogo.streams.connection import connect
from cogo.streams.server import EmbeddedServer
from tests.helpers import EventReader
from tests.upsystem import cogo_up, stop

USERS = ["admin", "client", "dispatcher", "echo", "codegen", "orchestrator", "projector"]

# subject -> users allowed to publish to it
PUBLISH = {
    "orchestrator.execute.0": {"admin", "client", "orchestrator"},
    # workers report on RESULTS, each on its own routes' subjects; the shared subjects are
    # only drained (upgrades)
    "orchestrator.results.0": {"admin"},
    "results.echo.run.0": {"admin", "echo"},
    "results.codegen.generate.0": {"admin", "codegen"},
    # the dispatcher's own queue: its retries (sealed), and signals and cancels of durable
    # tasks from the client and the workflow engine; never an app's
    "orchestrator.retry.0": {"admin", "client", "dispatcher", "orchestrator"},
    "schedules.retry.x.2": {"admin", "dispatcher"},
    "$JS.API.CONSUMER.MSG.NEXT.TASKS.orchestrator-retry-0": {"admin", "dispatcher"},
    # a purge's filter is in its body: nobody but admin may purge the artifacts
    "$JS.API.STREAM.PURGE.OBJ_artifacts": {"admin"},
    "orchestrator.result.0": {"admin"},
    "$JS.API.CONSUMER.MSG.NEXT.RESULTS.orchestrator-results-0": {"admin", "dispatcher"},
    "$JS.API.CONSUMER.MSG.NEXT.TASKS.orchestrator-result-0": {"admin", "dispatcher"},
    "$JS.API.STREAM.PURGE.RESULTS": {"admin", "dispatcher"},
    "$JS.API.STREAM.MSG.DELETE.RESULTS": {"admin", "dispatcher"},
    "echo.run.0": {"admin", "dispatcher"},
    "codegen.generate.0": {"admin", "dispatcher"},
    "events.execute_done.echo.run.0": {"admin", "dispatcher"},
    "events.workflow_started.wf.x.y": {"admin", "orchestrator"},
    "events.artifact_stored.codegen.generate.0": {"admin", "echo", "codegen"},
    "dlq.echo.run.0": {"admin", "dispatcher"},
    "$KV.policies.echo.run.0": {"admin"},
    "$JS.API.STREAM.CREATE.NOPE": {"admin"},
    "$JS.API.STREAM.DELETE.NOPE": {"admin"},
    "$JS.API.STREAM.PURGE.TASKS": {"admin"},
    "$JS.API.CONSUMER.MSG.NEXT.TASKS.echo-run-0": {"admin", "echo"},
    "$JS.API.CONSUMER.MSG.NEXT.TASKS.orchestrator-execute-0": {"admin", "dispatcher"},
    "$JS.API.CONSUMER.MSG.NEXT.TASKS.codegen-generate-0": {"admin", "codegen"},
    "$JS.API.STREAM.MSG.DELETE.TASKS": {"admin", "dispatcher"},
    "$O.artifacts.C.x": {"admin", "codegen"},
    "$JS.API.CONSUMER.CREATE.EVENTS": {"admin", "client", "orchestrator", "projector"},
    # flow control: held tasks, their deletion once admitted, slots and leases
    "flow.echo-run-0.5.kYQ": {"admin", "dispatcher"},
    "$JS.API.STREAM.MSG.DELETE.FLOW": {"admin", "dispatcher"},
    "$KV.flow.slot.echo-run-0.dA.1": {"admin", "dispatcher"},
    # the slot log of the fast path, and its purge below a checkpoint
    "$KV.flow.log.echo-run-0.s1.1": {"admin", "dispatcher"},
    "$JS.API.STREAM.PURGE.KV_flow": {"admin", "dispatcher"},
    "events.execute_throttled.echo.run.0": {"admin", "dispatcher"},
    # the agent runtime: llm_call / step_completed events, task output, the step journal
    "events.llm_call.echo.run.0": {"admin", "echo", "codegen"},
    "events.step_completed.echo.run.0.17": {"admin", "echo", "codegen"},
    "outputs.t-1": {"admin", "dispatcher", "echo", "codegen"},
    # a worker scans only its own routes' journal (the filter is in the subject)
    "$JS.API.CONSUMER.CREATE.EVENTS.j1.events.step_completed.echo.run.0.17": {
        "admin",
        "client",
        "orchestrator",
        "projector",
        "echo",
    },
    "$JS.API.CONSUMER.CREATE.EVENTS.j1.events.execute_done.echo.run.0": {
        "admin",
        "client",
        "orchestrator",
        "projector",
    },
    "$JS.API.CONSUMER.CREATE.OUTPUTS": {"admin", "client"},
    "$JS.API.STREAM.MSG.GET.OUTPUTS": {"admin", "client"},
}
# subject -> users allowed to subscribe to it
SUBSCRIBE = {
    "events.>": {"admin", "client"},
    "echo.run.0": {"admin"},
    "orchestrator.execute.0": {"admin"},
    "_INBOX_client.x": {"admin", "client"},
    "_INBOX_dispatcher.x": {"admin", "dispatcher"},
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.TASKS.echo-run-0": {"admin", "dispatcher"},
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.RESULTS.orchestrator-results-0": {
        "admin",
        "dispatcher",
    },
}


@pytest.fixture
async def secured(data_dir, config):
    plan = AuthPlan.from_decls(builtin().app.declarations())
    passwords = credentials(data_dir, plan.users)
    server = EmbeddedServer(
        data_dir,
        sync="default",
        extra_config=accounts_config(plan, passwords),
        credentials=("admin", passwords["admin"]),
    )
    server.start()
    await server.wait_ready()
    admin = await connect(server.url, "admin", user="admin", password=passwords["admin"])
    await declare_apps(admin.jetstream(), config)
    yield server, passwords
    await admin.close()
    server.stop()


async def _client(server, user: str, password: str, errors: list[str]):
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    return await connect(server.url, f"probe-{user}", user=user, password=password, error_cb=on_error)


async def test_anonymous_and_wrong_password_are_refused(secured):
    server, passwords = secured
    with pytest.raises(Exception):  # noqa: B017 - any auth failure
        await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
    with pytest.raises(Exception):  # noqa: B017
        await nats.connect(server.url, user="client", password="wrong", allow_reconnect=False, max_reconnect_attempts=0)


@pytest.mark.parametrize("user", USERS)
async def test_permission_matrix(secured, user):
    server, passwords = secured
    mismatches = []
    for subject, allowed in PUBLISH.items():
        errors: list[str] = []
        nc = await _client(server, user, passwords[user], errors)
        await nc.publish(subject, b"{}")
        await nc.flush()
        await asyncio.sleep(0.05)
        refused = any(f'publish to "{subject.lower()}"' in e for e in errors)
        if refused == (user in allowed):
            mismatches.append(("publish", subject, "refused" if refused else "allowed"))
        await nc.close()
    for subject, allowed in SUBSCRIBE.items():
        errors = []
        nc = await _client(server, user, passwords[user], errors)
        await nc.subscribe(subject)
        await nc.flush()
        await asyncio.sleep(0.05)
        refused = any(f'subscription to "{subject.lower()}"' in e for e in errors)
        if refused == (user in allowed):
            mismatches.append(("subscribe", subject, "refused" if refused else "allowed"))
        await nc.close()
    assert not mismatches, f"{user}: {mismatches}"


async def secured_up(
    data_dir, config_path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, dict]:
    """`cogo up --auth` on ``data_dir``, once it has written its endpoints."""
    return await cogo_up(data_dir, config_path, "--auth", *extra, env=env)


async def test_secured_system_runs_tasks_end_to_end(tmp_path, config_path):
    """`cogo up --auth`: every actor on its own user; the client user submits and reads."""
    data_dir = tmp_path / "secure"
    proc, info = await secured_up(data_dir, config_path)
    try:
        assert info["nats_user"] == "client"
        assert (data_dir / "credentials.json").stat().st_mode & 0o777 == 0o600
        nc = await connect(info["nats_url"], "client", user="client", password=info["nats_password"])
        js = nc.jetstream()
        ids = []
        for i in range(20):
            tid = f"secure-{i}"
            body = {"task_id": tid, "route": "echo.run.0", "payload": {"fail_times": i % 2}}
            await js.publish("orchestrator.execute.0", json.dumps(body).encode(), headers={"Nats-Msg-Id": tid})
            ids.append(tid)
        got = await EventReader(js).wait_terminal(ids, timeout=30)
        assert all(e.type == "execute_done" for e in got.values())
        # the client user cannot touch what it does not own
        with pytest.raises(Exception):  # noqa: B017
            await js.publish("echo.run.0", b"{}", timeout=1)
        with pytest.raises(Exception):  # noqa: B017
            await js.delete_stream("EVENTS")
        await nc.close()
        await _workflows_under_auth(info, data_dir)
        await _flow_under_auth(info, data_dir)
    finally:
        await asyncio.to_thread(stop, proc)
    logs = "".join(p.read_text() for p in (data_dir / "logs").glob("*.log"))
    assert "violation" not in logs.lower(), [line for line in logs.splitlines() if "violation" in line.lower()]


async def _flow_under_auth(info: dict, data_dir) -> None:
    """The dispatcher's user holds, admits and releases tasks of a flow-controlled route."""
    from cogo.streams.policies import reset_policy, set_policy

    passwords = json.loads((data_dir / "credentials.json").read_text())
    admin = await connect(info["nats_url"], "admin", user="admin", password=passwords["admin"])
    await set_policy(admin.jetstream(), "echo.run.0", {"flow": {"concurrency_per_key": 1}})
    nc = await connect(info["nats_url"], "client", user="client", password=info["nats_password"])
    js = nc.jetstream()
    ids = []
    for i in range(6):
        tid = f"secure-flow-{i}"
        body = {
            "task_id": tid,
            "route": "echo.run.0",
            "payload": {"sleep_ms": 100, "__assignment": {"key": f"k{i % 2}"}},
        }
        await js.publish("orchestrator.execute.0", json.dumps(body).encode(), headers={"Nats-Msg-Id": tid})
        ids.append(tid)
    reader = EventReader(js)
    got = await reader.wait_terminal(ids, timeout=30)
    assert all(e.type == "execute_done" for e in got.values())
    assert sum(e.type == "execute_throttled" for e in reader.events) == 4
    await reset_policy(admin.jetstream(), "echo.run.0")
    await nc.close()
    await admin.close()


async def test_agent_runtime_under_auth(tmp_path, config_path, chat_server):
    """An app's agents under `cogo up --auth`: steps journaled and replayed (the journal scan
    on the app's own user), output streamed to the client user with the dispatcher's end
    marker, an LLM call recorded; no permission violation anywhere."""
    data_dir = tmp_path / "secure"
    proc, info = await secured_up(
        data_dir,
        config_path,
        "--app",
        "tests.runtime_apps:app",
        env={"COGO_LLM_BASE_URL": chat_server.url, "COGO_LLM_API_KEY": "k"},
    )
    try:
        async with cogo.Client(info["nats_url"], user="client", password=info["nats_password"]) as client:
            steps = await client.submit("rt.steps.0", {"fail_until": 2})
            result = await steps.result(timeout=60)
            assert result["a"]["run"] == 1 and result["b"]["run"] == 1  # a replayed
            speak = await client.submit("rt.speak.0", {"lines": 2, "fail_until": 2})
            chunks = [(c.attempt, c.seq) async for c in speak.stream()]
            assert chunks == [(1, 1), (1, 2), (2, 1), (2, 2)]
            talk = await client.submit("rt.talk.0", {"prompt": "hi"})
            # its llm_call event is appended before the reply returns: refused, it would fail
            assert (await talk.result(timeout=60))["content"] == "ok"
            assert chat_server.calls == 1 and (await talk.status()).usage["tokens"] == 15
    finally:
        await asyncio.to_thread(stop, proc)
    logs = "".join(p.read_text() for p in (data_dir / "logs").glob("*.log"))
    assert "violation" not in logs.lower(), [line for line in logs.splitlines() if "violation" in line.lower()]


SECURED_WORKFLOW = {
    "id": "securedFlow",
    "nodes": [
        {
            "id": "each",
            "type": "map",
            "items": [1, 2],
            "max_parallel": 2,
            "node": {"type": "publish", "route": "echo.run.0", "payload": {"result": "${item}"}},
        },
        {"id": "ok", "type": "signal"},
        {"id": "child", "type": "workflow", "workflowId": "securedChild"},
    ],
}
SECURED_CHILD = {
    "id": "securedChild",
    "nodes": [{"id": "one", "type": "publish", "route": "echo.run.0", "payload": {"result": "c"}}],
}


async def _workflows_under_auth(info: dict, data_dir) -> None:
    """The orchestrator's user can lease partitions, fire schedules and start children."""
    import httpx

    folder = data_dir / "workflows"
    folder.mkdir(exist_ok=True)
    for definition in (SECURED_WORKFLOW, SECURED_CHILD):
        (folder / f"{definition['id']}.json").write_text(json.dumps(definition))
    headers = {"Authorization": f"Bearer {info['api_token']}"}
    async with httpx.AsyncClient(base_url=info["http_url"], headers=headers, timeout=20) as http:
        run = (await http.post("/api/workflows/execute", json={"workflowId": "securedFlow"})).json()["runId"]
        created = await http.post(
            "/api/schedules", json={"id": "secured", "workflowId": "securedChild", "interval_s": 1}
        )
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 30
        while True:
            signal_sent = await http.post("/api/orchestrator/signal", json={"runId": run, "name": "ok"})
            if signal_sent.status_code == 202:
                break
            assert time.monotonic() < deadline, signal_sent.text
            await asyncio.sleep(0.2)
        while True:
            state = (await http.get("/api/orchestrator/state", params={"runId": run})).json()
            fired = (await http.get("/api/schedules")).json()["schedules"][0]["fired"]
            if state.get("status") == "succeeded" and fired >= 1:
                break
            assert time.monotonic() < deadline, (state, fired)
            await asyncio.sleep(0.2)
        assert (await http.delete("/api/schedules/secured")).status_code == 200
