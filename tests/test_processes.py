"""Real processes: `cogo run` workers killed mid-task, poison messages, `cogo up` restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time

import httpx
import nats.errors

from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.connection import connect
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID, encoder, new_id
from tests.helpers import EventReader, running, submit, wait_until
from tests.upsystem import cogo, cogo_up, stop


async def test_killed_worker_is_reclaimed_and_task_finishes_once(nats_server, js, config, config_path):
    args = ["run", "echo", "--nats-url", nats_server.url, "--config", str(config_path)]
    first = cogo(*args)
    async with running(nats_server.url, config, ExecutorDispatcher):
        tid = await submit(js, payload={"sleep_ms": 3000, "result": "survived"})

        async def claimed() -> bool:
            info = await js.consumer_info("TASKS", "echo-run-0")
            return info.num_ack_pending == 1

        await wait_until(claimed, 20, "the worker claimed the task", interval=0.05)
        await asyncio.sleep(0.3)
        first.send_signal(signal.SIGKILL)  # dies holding the message
        first.wait(10)
        second = cogo(*args)
        try:
            reader = EventReader(js)
            done = (await reader.wait_terminal([tid], timeout=30))[tid]
            await asyncio.sleep(0.5)
            await reader.poll()
        finally:
            await asyncio.to_thread(stop, second)
    assert done.type == "execute_done" and done.data["result"] == "survived"
    assert len(reader.terminal()[tid]) == 1
    # one execute_started for the attempt however many workers held it (one event id)
    types = [e.type for e in reader.of(tid)]
    assert types == ["execute_enqueued", "execute_started", "execute_done"]
    assert done.attempt == 1  # same attempt, redelivered by JetStream after ack_wait
    assert done.actor.endswith(f":{second.pid}")


async def test_poison_message_dead_letters_while_others_flow(nats_server, js, config, config_path):
    """A task that kills its worker every time is dead-lettered after max_deliver (3)."""
    args = ["run", "echo", "--nats-url", nats_server.url, "--config", str(config_path)]
    env = {"COGO_ECHO_ALLOW_EXIT": "1"}
    worker = cogo(*args, env=env)
    restarts = 0
    async with running(nats_server.url, config, ExecutorDispatcher) as (dispatcher,):
        poison = await submit(js, payload={"exit_process": True})
        await asyncio.to_thread(worker.wait, 10)  # the first delivery killed it
        good: list[str] = []
        reader = EventReader(js)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if worker.poll() is not None:  # a supervisor's job: restart the dead worker
                restarts += 1
                worker = cogo(*args, env=env)
            if len(good) < 20:  # other work keeps arriving meanwhile
                good.append(await submit(js, payload={"result": len(good)}))
            await reader.poll(wait=0.1)
            if len(good) == 20 and {poison, *good} <= reader.terminal().keys():
                break
        await asyncio.to_thread(stop, worker)
    terminal = reader.terminal()
    assert terminal[poison][0].type == "execute_failed"
    assert terminal[poison][0].error_code == "dead_letter"
    assert all(terminal[g][0].type == "execute_done" for g in good)
    assert restarts >= 2  # it really killed the worker up to max_deliver times
    assert dispatcher.counters["dead_lettered"] == 1
    dlq = await js.get_msg("DLQ", 1)
    assert dlq.headers["Cogo-Error-Code"] == "dead_letter"
    assert dlq.headers["Cogo-Original-Subject"] == "echo.run.0"
    info = await js.stream_info("TASKS")
    assert info.state.messages == 0  # nothing left blocking the queue


async def test_cogo_up_twice_keeps_events_and_serves_http(tmp_path, config_path):
    data_dir = tmp_path / "up"
    proc, info = await cogo_up(data_dir, config_path)
    try:
        assert info["nats_url"].startswith("nats://127.0.0.1:")
        assert (data_dir / "endpoints.json").stat().st_mode & 0o777 == 0o600
        headers = {"Authorization": f"Bearer {info['api_token']}"}
        async with httpx.AsyncClient(base_url=info["http_url"], timeout=10) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
            assert (await http.post("/api/tasks", json={"route": "echo.run.0"})).status_code == 401
            r = await http.post("/api/tasks", json={"route": "echo.run.0", "payload": {"result": 1}}, headers=headers)
            assert r.status_code == 202, r.text
            first_id = r.json()["task_id"]
        nc = await connect(info["nats_url"], "test")
        reader = EventReader(nc.jetstream())
        await reader.wait_terminal([first_id])
        await nc.close()
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert not (data_dir / "endpoints.json").exists()

    proc, info = await cogo_up(data_dir, config_path)
    try:
        nc = await connect(info["nats_url"], "test")
        js = nc.jetstream()
        second_id = await submit(js, payload={"result": 2})
        reader = EventReader(js)
        got = await reader.wait_terminal([first_id, second_id])
        assert got[first_id].type == got[second_id].type == "execute_done"
        await nc.close()
    finally:
        stop(proc)


async def test_thousand_mixed_tasks_through_cogo_up(tmp_path, config_path):
    """The issue's acceptance run: 1,000 tasks straight to orchestrator.execute.0 with nats-py."""
    proc, info = await cogo_up(tmp_path / "up", config_path)
    try:
        nc = await connect(info["nats_url"], "test")
        js = nc.jetstream()
        expected: dict[str, tuple[str, str | None]] = {}
        futures = []
        for i in range(1000):
            tid = new_id()
            kind = i % 4
            if kind == 0:
                payload, want = {"result": i}, ("execute_done", None)
            elif kind == 1:
                payload = {"fail_times": 2, "__assignment": {"backoff": {"initial_ms": 50}}}
                want = ("execute_done", None)
            elif kind == 2:
                payload, want = (
                    {"__assignment": {"model": "gpt-9"}},
                    ("execute_failed", "policy.model_not_allowed"),
                )
            else:
                payload, want = (
                    {"__assignment": {"max_attempts": 50}},
                    ("execute_failed", "policy.max_attempts_exceeded"),
                )
            expected[tid] = want
            body = {"task_id": tid, "route": "echo.run.0", "payload": payload}
            futures.append(await js.publish_async(EXECUTE_SUBJECT, encoder.encode(body), headers={MSG_ID: tid}))
        await asyncio.gather(*futures)
        reader = EventReader(js)
        await reader.wait_terminal(expected, timeout=120)
        await asyncio.sleep(1)
        await reader.poll()
        terminal = reader.terminal()
        for tid, (kind, code) in expected.items():
            assert len(terminal[tid]) == 1
            assert terminal[tid][0].type == kind and terminal[tid][0].error_code == code
        retries = [e for e in reader.events if e.type == "execute_retry"]
        assert len(retries) == 500  # 250 flaky tasks x 2 failed attempts
        await nc.close()

        # the projection agrees, through the running instance
        expected_counts = {"execute_enqueued": 1000, "execute_retry": 500, "execute_failed": 500, "execute_done": 500}
        counts: dict = {}
        for _ in range(100):
            out = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "cogo",
                    "sql",
                    "--json",
                    "--data-dir",
                    str(tmp_path / "up"),
                    "SELECT type, count(*) AS n FROM bus_events GROUP BY 1",
                ],
                capture_output=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stderr
            counts = {row[0]: row[1] for row in json.loads(out.stdout)["rows"]}
            if counts == expected_counts:
                break
            await asyncio.sleep(0.2)
        assert counts == expected_counts
        headers = {"Authorization": f"Bearer {info['api_token']}"}
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers) as http:
            latency = (await http.get("/api/metrics/bus/latency", params={"route": "echo.run.0"})).json()
        (echo,) = [r for r in latency["routes"] if r["route"] == "echo.run.0"]
        assert (
            echo["count"] == 1000
            and echo["retries"] == 500
            and echo["failures"] == 500
            and echo["queue_wait_ms"]["p90"] >= echo["queue_wait_ms"]["p50"]
        )
    finally:
        stop(proc)


async def test_reclaim_lists_consumers_and_dead_letters_stranded(nats_server, js, config, config_path):
    # a message that exhausted max_deliver while no dispatcher listened for the advisory
    tid = new_id()
    async with running(nats_server.url, config, ExecutorDispatcher):
        await submit(js, payload={"exit_process": True}, task_id=tid)
        await asyncio.sleep(0.5)
    sub = await js.pull_subscribe_bind(durable="echo-run-0", stream="TASKS")
    for _ in range(config.bus.max_deliver):
        msgs = await sub.fetch(1, timeout=5)
        await msgs[0].nak()
    with contextlib.suppress(nats.errors.TimeoutError):
        await sub.fetch(1, timeout=1)  # the server now gives up on it (no redelivery)
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "cogo",
            "reclaim",
            "--dead-letter",
            "--nats-url",
            nats_server.url,
            "--config",
            str(config_path),
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    report = json.loads(out.stdout)
    echo = next(c for c in report["consumers"] if c["route"] == "echo.run.0")
    assert [s["seq"] for s in echo["stranded"]] and echo["dead_lettered"] == 1
    reader = EventReader(js)
    failed = (await reader.wait_terminal([tid]))[tid]
    assert failed.error_code == "dead_letter"
