"""Fault injection: real processes killed, stopped and restarted under load; nothing lost.

Each test is bounded (a few hundred tasks, tens of seconds) and checks the ledger: every
acknowledged submission ends in exactly one terminal event, no attempt is forwarded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cogo.agents.echo import EchoActor
from cogo.config import load_config
from cogo.http.app import create_app
from cogo.http.state import AppState
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.runtime.loader import declare_apps
from cogo.streams.catalogue import WORKFLOW_SIGNALED
from cogo.streams.cluster import LocalCluster
from cogo.streams.connection import connect
from cogo.streams.events import EventLog, make_event
from cogo.streams.policies import PolicyStore
from cogo.streams.server import EmbeddedServer, free_port, nats_server_binary
from tests.faults.ledger import Ledger, Loader
from tests.helpers import EventReader, running, submit, wait_until
from tests.upsystem import cogo, cogo_run, spawn, terminate


async def _drain(reader: EventReader, ledger: Ledger, timeout: float = 60) -> dict:
    await reader.wait_terminal(ledger.acknowledged, timeout=timeout)
    await asyncio.sleep(1.0)  # let any duplicate show up before judging
    await reader.poll()
    return ledger.verdict(reader)


def _assert_clean(report: dict) -> None:
    assert report["acknowledged"] > 0
    assert report["lost"] == 0, report
    assert report["duplicated_terminal"] == 0, report
    assert report["duplicated_attempts"] == 0, report


@pytest.fixture
def durable_server(data_dir: Path):
    # fsync before every ack: a SIGKILLed server must not lose acknowledged writes
    server = EmbeddedServer(data_dir, sync="always")
    server.start()
    yield server
    server.stop()


async def test_nats_server_sigkill_under_load(durable_server, config, config_path):
    await durable_server.wait_ready()
    nc = await connect(durable_server.url, "faults")
    js = nc.jetstream()
    await declare_apps(js, config)
    args = ["--nats-url", durable_server.url, "--config", str(config_path)]
    procs = [cogo("run", "dispatcher", *args), cogo("run", "echo", *args)]
    ledger = Ledger("nats-server SIGKILL + restart on the same store")
    try:
        load = asyncio.create_task(Loader(js, ledger, count=400, rate=100).run(deadline_s=60))
        await asyncio.sleep(1.5)
        durable_server.kill()
        ledger.fault_at = time.time()
        await asyncio.sleep(1.0)
        durable_server.start()  # same port, same store
        await durable_server.wait_ready()
        await load
        reader = EventReader(js)
        report = await _drain(reader, ledger, timeout=90)
    finally:
        for proc in procs:
            # shown when the test fails: what each actor process said
            print(f"--- {proc.args[3:5]}:\n{(await terminate(proc))[-4000:]}")
        await nc.close()
    _assert_clean(report)
    assert ledger.publish_errors > 0  # the fault really hit the submitters


async def test_an_actor_started_while_jetstream_is_away_waits_for_it(data_dir, config_path):
    """A plain nats-server (no JetStream) answers connections but not `$JS.API`: the actors
    wait for JetStream instead of dying in their start-up declarations, and once a real
    server is up on the same port they declare their routes and run tasks."""
    port = free_port()
    plain = spawn([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)], log=data_dir / "plain-nats.log")
    url = f"nats://127.0.0.1:{port}"
    logs = {name: data_dir / f"{name}.log" for name in ("dispatcher", "echo")}
    procs = []
    server = None
    try:
        for name, log in logs.items():
            procs.append(cogo_run(name, url, "--config", str(config_path), log=log))

        def said() -> dict[str, str]:
            return {n: log.read_text()[-3000:] for n, log in logs.items()}

        def all_say(text: str) -> Any:
            async def check() -> bool:
                assert all(p.poll() is None for p in procs), said()
                return all(text in log.read_text() for log in logs.values())

            return check

        await wait_until(all_say("did not answer while starting"), 60, said)
        plain.terminate()
        plain.wait(10)
        server = EmbeddedServer(data_dir, port, sync="default")
        server.start()
        await server.wait_ready()
        nc = await connect(server.url, "check")
        try:
            js = nc.jetstream()
            await wait_until(all_say("started (app"), 60, said)
            ids = [await submit(js, payload={"result": i}) for i in range(5)]
            events = await EventReader(js).wait_terminal(ids, timeout=60)
            assert {e.type for e in events.values()} == {"execute_done"}
        finally:
            await nc.close()
    finally:
        for proc in procs:
            await terminate(proc)
        if plain.poll() is None:
            plain.kill()
        if server is not None:
            server.stop()


async def test_dispatcher_sigkill_under_load(nats_server, js, config, config_path):
    args = ["--nats-url", nats_server.url, "--config", str(config_path)]
    dispatcher = cogo("run", "dispatcher", *args)
    echo = cogo("run", "echo", *args)
    ledger = Ledger("dispatcher SIGKILL mid-work")
    payload = {"fail_times": 1, "__assignment": {"backoff": {"initial_ms": 50}}}
    try:
        load = asyncio.create_task(Loader(js, ledger, count=400, rate=150, payload=payload).run())
        await asyncio.sleep(1.5)
        dispatcher.send_signal(signal.SIGKILL)
        ledger.fault_at = time.time()
        await asyncio.to_thread(dispatcher.wait, 10)
        await asyncio.sleep(0.5)
        dispatcher = cogo("run", "dispatcher", *args)
        await load
        reader = EventReader(js)
        report = await _drain(reader, ledger)
    finally:
        await terminate(dispatcher)
        await terminate(echo)
    _assert_clean(report)
    retried = [e for e in reader.events if e.type == "execute_retry"]
    assert len({e.task_id for e in retried}) == len(ledger.acknowledged)  # each retried once


async def test_worker_sigkill_under_load(nats_server, js, config, config_path):
    args = ["--nats-url", nats_server.url, "--config", str(config_path)]
    workers = [cogo("run", "echo", *args) for _ in range(2)]
    ledger = Ledger("echo worker SIGKILL mid-task")
    async with running(nats_server.url, config, ExecutorDispatcher):
        try:
            load = asyncio.create_task(Loader(js, ledger, count=300, rate=150, payload={"sleep_ms": 200}).run())
            await asyncio.sleep(1.0)
            workers[0].send_signal(signal.SIGKILL)  # dies holding claimed messages
            ledger.fault_at = time.time()
            await load
            reader = EventReader(js)
            report = await _drain(reader, ledger)
        finally:
            for w in workers:
                await terminate(w)
    _assert_clean(report)


async def test_stopped_worker_late_result_is_fenced(nats_server, js, config, config_path):
    """SIGSTOP a worker past ack_wait; another redoes the task; the resumed one is fenced."""
    args = ["--nats-url", nats_server.url, "--config", str(config_path), "--concurrency", "1"]
    zombie = cogo("run", "echo", *args)
    async with running(nats_server.url, config, ExecutorDispatcher):
        await asyncio.sleep(1.0)  # the zombie is up and fetching
        tid = await submit(js, payload={"sleep_ms": 600, "result": "once"})
        for _ in range(100):
            info = await js.consumer_info("TASKS", "echo-run-0")
            if info.num_ack_pending == 1:
                break
            await asyncio.sleep(0.02)
        zombie.send_signal(signal.SIGSTOP)
        await asyncio.sleep(config.bus.ack_wait_s + 0.5)  # its claim lapses
        async with running(nats_server.url, config, EchoActor):
            reader = EventReader(js)
            done = (await reader.wait_terminal([tid]))[tid]
            zombie.send_signal(signal.SIGCONT)
            await asyncio.sleep(2.0)  # the zombie finishes and reports its late result
            await reader.poll()
        out = await terminate(zombie)
    assert done.type == "execute_done" and not done.actor.endswith(f":{zombie.pid}")
    assert len(reader.terminal()[tid]) == 1
    assert "fenced off" in out, out


async def test_lost_publish_ack_retried_with_same_id(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor) as (_, echo):
        tid = await submit(js, payload={"result": 1})
        # the client never saw that ack, so it sends the same task again
        again = await js.publish(
            "orchestrator.execute.0",
            json.dumps({"task_id": tid, "route": "echo.run.0", "payload": {"result": 1}}).encode(),
            headers={"Nats-Msg-Id": tid},
        )
        assert again.duplicate
        reader = EventReader(js)
        await reader.wait_terminal([tid])
        await asyncio.sleep(0.5)
        await reader.poll()
    assert [e.type for e in reader.of(tid)] == ["execute_enqueued", "execute_done"]
    assert echo.counters["succeeded"] == 1


async def test_full_event_log_refuses_submissions(tmp_path, data_dir):
    path = tmp_path / "small.toml"
    path.write_text("[events]\nmax_bytes = 262144\n")
    config = load_config(path)
    server = EmbeddedServer(data_dir, sync="default")
    server.start()
    try:
        await server.wait_ready()
        nc = await connect(server.url, "faults")
        js = nc.jetstream()
        await declare_apps(js, config)
        log = EventLog(js)
        with contextlib.suppress(Exception):  # fill the log until it refuses appends
            for n in range(200):
                filler = {"run_id": "filler", "name": "filler", "signal_id": str(n), "data": "x" * 4000}
                await log.append(make_event(WORKFLOW_SIGNALED, correlation_id="filler", data=filler))
        policies = PolicyStore(js)
        await policies.start()
        state = AppState(nc=nc, config=config, policies=policies, data_dir=data_dir)
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://cogo") as http:
            r = await http.post("/api/tasks", json={"route": "echo.run.0"})
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "bus.backpressure" and r.json()["detail"]
        info = await js.stream_info("TASKS")
        assert info.state.messages == 0  # refused, not accepted-and-dropped
        await policies.stop()
        await nc.close()
    finally:
        server.stop()


async def test_cluster_node_sigkill_under_load(tmp_path, config):
    cluster = LocalCluster(tmp_path / "cluster", 3, sync="default")
    cluster.start()
    try:
        await cluster.wait_ready()
        from msgspec.structs import replace

        config3 = replace(config, bus=replace(config.bus, replicas=3))
        nc = await connect(cluster.url, "faults")
        js = nc.jetstream()
        for _ in range(50):  # the meta leader may still be settling
            try:
                await declare_apps(js, config3)
                break
            except Exception:
                await asyncio.sleep(0.2)
        ledger = Ledger("3-node cluster, one node SIGKILLed")
        async with running(cluster.url, config3, ExecutorDispatcher, EchoActor):
            load = asyncio.create_task(Loader(js, ledger, count=300, rate=100).run(deadline_s=60))
            await asyncio.sleep(1.0)
            cluster.nodes[0].kill()
            ledger.fault_at = time.time()
            await load
            reader = EventReader(js)
            report = await _drain(reader, ledger, timeout=90)
        info = await js.stream_info("EVENTS")
        assert info.config.num_replicas == 3
        await nc.close()
    finally:
        cluster.stop()
    _assert_clean(report)
