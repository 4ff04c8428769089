"""Cancellation and signals over every door (``Client``, HTTP, CLI) on a real nats-server: a
tree of a suspended parent, suspended children and a running one ends ``cancelled`` at every
node, the running handler gets ``CancelledError``; idempotent, 404 unknown, 409 finished."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

import cogo
from cogo.http import dashboard
from tests import durable_apps
from tests.durable_apps import RUNS
from tests.helpers import facade, wait_until


@pytest.fixture
def cogo_apps():
    return [durable_apps.app]


@pytest.fixture
def cogo_config():
    return "[runtime]\nsuspend_after_ms = 50\n\n[actors]\nstarted_event_after_ms = 100\n"


@pytest.fixture
async def http(cogo_env):
    nc, data_dir, routes = cogo_env.client.nc, cogo_env.data_dir, dashboard.routes
    async with facade(nc, cogo_env.config, data_dir, extra_routes=routes, projector=cogo_env.projector) as client:
        yield client


async def status_of(env, task_id: str) -> str | None:
    try:
        return (await env.client.status(task_id)).status
    except cogo.errors.TaskNotFound:
        return None


async def test_cancelling_a_tree_ends_every_task_in_it(cogo_env, http):
    handle = await cogo_env.client.submit("dur.tree.0", {})
    root = handle.task_id
    nodes = [f"{root}/x", f"{root}/y", f"{root}/slow"]

    async def settled() -> bool:
        states = [await status_of(cogo_env, t) for t in [root, *nodes]]
        return states == ["suspended", "suspended", "suspended", "running"]

    await wait_until(settled, 60, "the tree never reached suspended/suspended/suspended/running")
    # the dashboard shows the suspended tree: the children under their parent
    board = (await http.get("/api/dashboard")).json()
    shown = {t["task_id"]: t for t in board["suspended"]}
    assert shown[root]["depth"] == 0 and shown[root]["parent_id"] is None
    assert {shown[c]["parent_id"] for c in nodes[:2]} == {root}
    assert {shown[c]["depth"] for c in nodes[:2]} == {1} and nodes[2] not in shown
    await cogo_env.client.cancel(root, "test")
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=30)
    assert failed.value.code == "task.cancelled"
    for node in nodes:
        final = await cogo_env.client.handle(node, None).wait(timeout=30)
        assert final.status == "cancelled" and final.error_code == "task.cancelled", final
    # the running handler got CancelledError at its await; nothing ran again
    assert RUNS[f"slow-cancelled:{root}/slow"] == 1 and RUNS[f"slow:{root}/slow"] == 1
    # idempotent: again is fine, and changes nothing
    await cogo_env.client.cancel(root)
    events = await cogo_env.events(root)
    assert [e["type"] for e in events].count("execute_cancelled") == 1
    assert not [e for e in events if e["type"] in ("execute_done", "execute_failed")]


async def test_signal_and_cancel_over_http(cogo_env, http):
    handle = await cogo_env.client.submit("dur.signal.0", {})
    tid = handle.task_id
    await wait_until(lambda: _is(cogo_env, tid, "suspended"), 30, "never suspended")
    r = await http.post(f"/api/tasks/{tid}/signals/go", json={"data": {"by": "http"}})
    assert r.status_code == 202, r.text
    assert await handle.result(timeout=30) == {"got": {"by": "http"}}
    r = await http.post(f"/api/tasks/{tid}/signals/go", json={"data": 1})
    assert r.status_code == 409 and r.json()["code"] == "task.finished"
    r = await http.post(f"/api/tasks/{tid}/cancel")
    assert r.status_code == 409
    r = await http.post("/api/tasks/nope/signals/go", json={})
    assert r.status_code == 404 and r.json()["code"] == "task.not_found"
    r = await http.post("/api/tasks/nope/cancel")
    assert r.status_code == 404
    r = await http.post(f"/api/tasks/{tid}/signals/go", json={"data": 1, "extra": 2})
    assert r.status_code == 422
    # a suspended task is cancelled at once; GET shows it
    other = await cogo_env.client.submit("dur.signal.0", {})
    await wait_until(lambda: _is(cogo_env, other.task_id, "suspended"), 30, "never suspended")
    task = (await http.get(f"/api/tasks/{other.task_id}")).json()
    assert task["waiting_for"] == [{"kind": "signal", "name": "go"}] and task["children"] == []
    # the dashboard lists it among the suspended tasks
    board = (await http.get("/api/dashboard")).json()
    (row,) = [t for t in board["suspended"] if t["task_id"] == other.task_id]
    assert row["waiting_for"] == [{"kind": "signal", "name": "go"}] and row["depth"] == 0
    r = await http.post(f"/api/tasks/{other.task_id}/cancel", json={"reason": "no longer"})
    assert r.status_code == 202
    final = await other.wait(timeout=30)
    assert final.status == "cancelled" and "no longer" in (final.error or "")
    assert (await http.post(f"/api/tasks/{other.task_id}/cancel")).status_code == 202


async def test_signal_and_cancel_from_the_cli(cogo_env):
    handle = await cogo_env.client.submit("dur.signal.0", {})
    tid = handle.task_id
    await wait_until(lambda: _is(cogo_env, tid, "suspended"), 30, "never suspended")
    cli = [sys.executable, "-m", "cogo"]
    bad = await asyncio.to_thread(
        subprocess.run,
        [*cli, "signal", "--nats-url", cogo_env.url, tid, "go", "--data", "{nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "request.invalid" in bad.stderr and "Traceback" not in bad.stderr
    ok = await asyncio.to_thread(
        subprocess.run,
        [*cli, "signal", "--nats-url", cogo_env.url, tid, "go", "--data", '{"via": "cli"}'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sent"] is True
    assert await handle.result(timeout=30) == {"got": {"via": "cli"}}
    gone = await asyncio.to_thread(
        subprocess.run,
        [*cli, "cancel", "--nats-url", cogo_env.url, tid],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 2 and "task.finished" in gone.stderr


async def _is(env, task_id: str, wanted: str) -> bool:
    return await status_of(env, task_id) == wanted


async def test_cancelling_a_workflow_run_cancels_the_tasks_it_started(cogo_env):
    from cogo.runtime.components import components
    from cogo.runtime.workflow_engine import CancelRun, send_command
    from tests.workflow_support import start_run, wait_run

    await cogo_env.startup.run_agent(components.get("orchestrator"))
    js = cogo_env.client.nc.jetstream()
    plan = {
        "id": "durableWait",
        "nodes": [
            {"id": "ask", "type": "publish", "route": "dur.signal.0", "payload": {}},
        ],
    }
    run_id = await start_run(js, cogo_env.config, plan)
    state = await wait_run(js, run_id, until=lambda s: s.nodes.get("ask") and s.nodes["ask"].task_id)
    task_id = state.nodes["ask"].task_id
    await wait_until(lambda: _is(cogo_env, task_id, "suspended"), 30, "never suspended")
    await send_command(js, CancelRun(run_id=run_id, reason="stop"))
    final = await cogo_env.client.handle(task_id, "dur.signal.0").wait(timeout=30)
    assert final.status == "cancelled" and "stop" in (final.error or "")
    assert (await wait_run(js, run_id)).status == "cancelled"


async def test_a_queued_child_of_a_cancelled_parent_never_runs(cogo_env):
    from cogo.runtime.loader import declare_apps

    js = cogo_env.client.nc.jetstream()
    await declare_apps(js, cogo_env.config, [durable_apps.queued])  # no worker yet
    handle = await cogo_env.client.submit("dur.parent.0", {"topics": ["q"], "route": "durq.child.0"})
    child = f"{handle.task_id}/q"
    await wait_until(lambda: _is(cogo_env, handle.task_id, "suspended"), 30, "never suspended")
    assert await status_of(cogo_env, child) == "queued"
    await cogo_env.client.cancel(handle.task_id)
    final = await cogo_env.client.handle(child, "durq.child.0").wait(timeout=30)
    assert final.status == "cancelled"
    # its worker starts now and finds it in the queue: it is dropped, not run
    await cogo_env.startup.run_agent(durable_apps.queued.agents["queued_child"])
    assert (await handle.wait(timeout=30)).status == "cancelled"

    async def consumed() -> bool:
        info = await js.consumer_info("TASKS", "durq-child-0")
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_until(consumed, 30, "the queued child was never taken")
    assert RUNS[f"queued:{child}"] == 0
    events = await cogo_env.events(child)
    assert [e["type"] for e in events].count("execute_cancelled") == 1
    assert "execute_done" not in [e["type"] for e in events]
