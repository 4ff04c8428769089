"""Fault tests for shared orchestrators: two ``cogo run orchestrator`` processes share the
runs; one is SIGKILLed while runs with map and child-workflow nodes are under way. Every
run finishes, carried on by the survivor, and no task is submitted twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from nats.js.client import JetStreamContext

from cogo.agents.echo import EchoActor
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.connection import connect
from cogo.streams.topology import LEASE_BUCKET, ORCHESTRATOR_PARTITIONS
from cogo.workflows import history
from cogo.workflows.definition import Catalog
from cogo.workflows.inbox import StartRun, send_command
from cogo.workflows.planner import plan_workflow
from tests.helpers import EventReader, running, wait_until
from tests.upsystem import CogoProcess, cogo_up, kill_system, stop
from tests.workflow_support import wait_run

STEP: dict[str, Any] = {
    "id": "step",
    "parameters": {"n": {"type": "integer", "required": True}},
    "nodes": [
        {
            "id": "a",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"sleep_ms": 400, "result": {"n": "${params.n}"}},
        },
        {
            "id": "b",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"sleep_ms": 400, "result": {"twice": "${nodes.a.result.n * 2}"}},
        },
    ],
}

FANOUT: dict[str, Any] = {
    "id": "fanout",
    "nodes": [
        {
            "id": "children",
            "type": "map",
            "items": [1, 2, 3],
            "max_parallel": 2,
            "node": {"type": "workflow", "workflowId": "step", "parameters": {"n": "${item}"}},
        },
        {
            "id": "tasks",
            "type": "map",
            "items": ["x", "y", "z"],
            "max_parallel": 3,
            "node": {"type": "publish", "route": "echo.run.0", "payload": {"sleep_ms": 300, "result": "${item}"}},
        },
        {
            "id": "sum",
            "type": "gate",
            "condition": "len(nodes.children.result) == 3 and nodes.tasks.result == ['x', 'y', 'z']",
        },
    ],
}

RUNS = 8


async def lease_holders(js: JetStreamContext) -> Counter[str]:
    """How many partitions each member holds, from the lease bucket."""
    kv = await js.key_value(LEASE_BUCKET)
    held: Counter[str] = Counter()
    for partition in range(ORCHESTRATOR_PARTITIONS):
        try:
            entry = await kv.get(f"partition.{partition}")
        except Exception:
            continue
        held[json.loads(entry.value or b"{}")["owner"]] += 1
    return held


async def test_sigkill_one_of_two_orchestrators_mid_map_and_children(
    nats_server, js, config, config_path, data_dir, tmp_path: Path
):
    folder = data_dir / "workflows"
    folder.mkdir()
    for definition in (STEP, FANOUT):
        (folder / f"{definition['id']}.json").write_text(json.dumps(definition))
    args = ("run", "orchestrator", "--nats-url", nats_server.url, "--data-dir", str(data_dir))
    args += ("--config", str(config_path))
    first = CogoProcess(*args, log=data_dir / "orchestrator.log")
    second = CogoProcess(*args, log=data_dir / "orchestrator-2.log")
    definitions = Catalog.for_data_dir(data_dir).load()
    plan = plan_workflow(definitions["fanout"], {}, config.route_policy, definitions)
    try:
        async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
            first.start()
            second.start()

            async def shared() -> bool:  # both hold partitions before anything runs
                held = await lease_holders(js)
                return len(held) == 2 and sum(held.values()) == ORCHESTRATOR_PARTITIONS

            await wait_until(shared, 30, "two orchestrators sharing the partitions")
            run_ids = [f"fan-{i}" for i in range(RUNS)]
            for run_id in run_ids:
                await send_command(js, StartRun(run_id=run_id, plan=plan.to_json()))
            reader = EventReader(js)

            async def children_under_way() -> bool:
                await reader.poll(wait=0.05)
                started = {e.correlation_id for e in reader.events if e.type == "workflow_started"}
                return sum(1 for r in started if r and r.count(":") == 3) >= RUNS

            await wait_until(children_under_way, 30, "child runs under way")
            victim = first
            before = {e.correlation_id for e in reader.events if e.actor and e.actor.endswith(f":{victim.process.pid}")}  # type: ignore[union-attr]
            victim.kill()
            killed_at = time.time()
            finals = {}
            for run_id in run_ids:
                finals[run_id] = await wait_finished(js, run_id, timeout=90)
            await reader.poll()
    finally:
        first.stop()
        second.stop()
    survivor = second
    for run_id, state in finals.items():
        assert state.status == "succeeded", (run_id, state.view())
        assert [r["status"] for r in state.nodes["children"].result] == ["succeeded"] * 3
    # every task of every run and child ran once: one enqueue per task id
    enqueued = Counter(e.task_id for e in reader.events if e.type == "execute_enqueued")
    expected = {f"{r}:tasks:1:{i}" for r in run_ids for i in range(3)} | {
        f"{r}:children:1:{i}:{node}:1" for r in run_ids for i in range(3) for node in "ab"
    }
    assert set(enqueued) == expected
    assert set(enqueued.values()) == {1}, [t for t, n in enqueued.items() if n > 1]
    starts = Counter(e.correlation_id for e in reader.events if e.type == "workflow_started")
    assert set(starts.values()) == {1} and len(starts) == RUNS * 4
    # the killed process was driving runs that the survivor then finished
    carried = {
        e.correlation_id
        for e in reader.events
        if e.correlation_id in before
        and e.actor
        and e.actor.endswith(f":{survivor.process.pid}")
        and e.type.startswith(("node_", "map_item_", "workflow_"))
    }  # type: ignore[union-attr]
    assert carried, "the survivor carried on none of the killed orchestrator's runs"
    by_survivor = [e for e in reader.events if e.correlation_id in carried and e.actor]
    by_survivor = [e for e in by_survivor if e.actor.endswith(f":{survivor.process.pid}")]
    assert any(history_time(e.at) > killed_at for e in by_survivor), "no step after the kill"


def history_time(at: str) -> float:
    from cogo.workflows.run import timestamp

    return timestamp(at) or 0.0


async def wait_finished(js: JetStreamContext, run_id: str, timeout: float) -> Any:
    state = await wait_run(js, run_id, timeout)
    assert state.finished, f"run {run_id} did not finish: {state.view()}"
    return state


CHAIN: dict[str, Any] = {
    "id": "chain",
    "nodes": [
        {"id": "one", "type": "publish", "route": "echo.run.0", "payload": {"result": 1}},
        {
            "id": "two",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"sleep_ms": 200, "result": "${nodes.one.result + 1}"},
        },
        {"id": "three", "type": "gate", "condition": "nodes.two.result == 2"},
    ],
}


def _with_workflows(tmp_path: Path, *definitions: dict[str, Any]) -> Path:
    data = tmp_path / "up"
    (data / "workflows").mkdir(parents=True)
    for definition in definitions:
        (data / "workflows" / f"{definition['id']}.json").write_text(json.dumps(definition))
    return data


async def test_second_orchestrator_beside_cogo_up_all_runs_finish(tmp_path, config_path):
    """Issue 14, item 9: `cogo run orchestrator` beside `cogo up` used to leave new runs
    hanging (it acked task events of runs it did not hold). 10 of 10 must finish."""
    data = _with_workflows(tmp_path, CHAIN)
    proc, info = await cogo_up(data, config_path)
    # no --nats-url: it finds the system through the data dir's endpoints.json
    args = ("run", "orchestrator", "--config", str(config_path), "--data-dir", str(data))
    extra = CogoProcess(*args, log=data / "extra.log")
    extra.start()
    nc = await connect(info["nats_url"], "test")
    js = nc.jetstream()
    headers = {"Authorization": f"Bearer {info['api_token']}"}
    try:

        async def shared() -> bool:
            held = await lease_holders(js)
            return len(held) == 2 and sum(held.values()) == ORCHESTRATOR_PARTITIONS

        await wait_until(shared, 60, "cogo up's orchestrator and the extra one sharing partitions")
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers) as http:
            run_ids = []
            for _ in range(10):
                r = await http.post("/api/workflows/execute", json={"workflowId": "chain"})
                assert r.status_code == 202, r.text
                run_ids.append(r.json()["runId"])
        finals = [await wait_finished(js, run_id, timeout=60) for run_id in run_ids]
        reader = EventReader(js)
        await reader.poll()
    finally:
        await nc.close()
        extra.stop()
        stop(proc)
    assert [s.status for s in finals] == ["succeeded"] * 10, [s.view() for s in finals]
    enqueued = Counter(e.task_id for e in reader.events if e.type == "execute_enqueued")
    assert sum(enqueued.values()) == 20 and set(enqueued.values()) == {1}
    drivers = {e.actor for e in reader.events if e.type == "workflow_succeeded"}
    assert any(a and a.endswith(f":{extra.pids[0]}") for a in drivers), drivers  # it did share
    assert len(drivers) == 2


TICK: dict[str, Any] = {
    "id": "tock",
    "nodes": [{"id": "beat", "type": "publish", "route": "echo.run.0", "payload": {"result": 1}}],
}


async def test_schedule_fires_once_per_tick_across_sigkill_of_cogo_up(tmp_path, config_path):
    data = _with_workflows(tmp_path, TICK)
    proc, info = await cogo_up(data, config_path)
    headers = {"Authorization": f"Bearer {info['api_token']}"}
    schedule = {"id": "beat", "workflowId": "tock", "interval_s": 1, "catchup": "all"}
    try:
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers) as http:
            created = await http.post("/api/schedules", json=schedule)
            assert created.status_code == 201, created.text

            async def fired(n: int) -> Any:
                rows = (await http.get("/api/schedules")).json()["schedules"]
                return rows and rows[0]["fired"] >= n and rows[0]

            await wait_until(lambda: fired(3), 30, "three ticks fired")
    finally:
        kill_system(proc, data)
    killed_at = time.time()
    await asyncio.sleep(3.0)  # the system stays down over three ticks
    proc, info = await cogo_up(data, config_path)
    restarted_at = time.time()
    headers = {"Authorization": f"Bearer {info['api_token']}"}
    nc = await connect(info["nats_url"], "test")
    js = nc.jetstream()
    try:
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers) as http:

            async def past_restart() -> Any:
                rows = (await http.get("/api/schedules")).json()["schedules"]
                last = rows[0]["lastRunId"] if rows else None
                return last and history_time(last.split(":", 1)[1]) > restarted_at + 2

            await wait_until(past_restart, 60, "ticks after the restart")
            assert (await http.delete("/api/schedules/beat")).status_code == 200
        listed = await history.list_runs(js, "tock")
        finals = [await wait_finished(js, r.run_id, timeout=60) for r in listed]
        reader = EventReader(js)
        await reader.poll()
    finally:
        await nc.close()
        stop(proc)
    ticks = sorted(history_time(r.run_id.split(":", 1)[1]) for r in listed)
    assert all(r.run_id.startswith("beat:") for r in listed)
    # catchup "all": one run for every second from the first tick to the last, none twice
    assert [b - a for a, b in zip(ticks, ticks[1:], strict=False)] == [1.0] * (len(ticks) - 1)
    assert any(killed_at < t < restarted_at for t in ticks), (killed_at, restarted_at, ticks)
    starts = Counter(e.correlation_id for e in reader.events if e.type == "workflow_started")
    assert set(starts.values()) == {1}
    enqueued = Counter(e.task_id for e in reader.events if e.type == "execute_enqueued")
    assert set(enqueued) == {f"{r.run_id}:beat:1" for r in listed} and set(enqueued.values()) == {1}
    assert {s.status for s in finals} == {"succeeded"}
