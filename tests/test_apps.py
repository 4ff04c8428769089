"""A team's app as real processes: ``cogo up --app``, ``cogo run ... --replicas 2``, HTTP,
``cogo.Client``, plain nats-py, the CLI, policy precedence, ``--auth`` and entry points."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import nats.errors
import nats.js.errors
import pytest

import cogo
from cogo.streams.connection import connect
from cogo.streams.policies import read_record, reset_policy, set_policy
from cogo.testing import merged_toml
from tests.helpers import EventReader, wait_until
from tests.upsystem import cogo as cogo_proc
from tests.upsystem import cogo_up, stop

ROOT = Path(__file__).resolve().parent.parent


def _cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cogo", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


async def test_an_app_under_cogo_up_via_http_client_and_plain_nats(tmp_path, config_path):
    data_dir = tmp_path / "up"
    proc, info = await cogo_up(data_dir, config_path, "--app", "tests.sample_apps:app")
    try:
        headers = {"Authorization": f"Bearer {info['api_token']}"}
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers, timeout=20) as http:
            # HTTP: submit, then the task API
            r = await http.post("/api/tasks", json={"route": "sample.greet.0", "payload": {"name": "http"}})
            assert r.status_code == 202, r.text
            task_id = r.json()["task_id"]
            for _ in range(200):
                task = (await http.get(f"/api/tasks/{task_id}")).json()
                if task.get("status") == "succeeded":
                    break
                await asyncio.sleep(0.05)
            assert task["status"] == "succeeded" and task["result"]["text"] == "hello http"
            assert task["route"] == "sample.greet.0" and task["attempt"] == 1
            assert [e["type"] for e in task["events"]] == ["execute_enqueued", "execute_done"]
            missing = await http.get("/api/tasks/no-such-task")
            assert missing.status_code == 404 and "no events" in missing.json()["detail"]
            unknown = await http.post("/api/tasks", json={"route": "sample.nobody.0"})
            assert unknown.status_code == 422
            assert unknown.json()["detail"][0]["loc"] == ["body", "route"]
            assert "no app declared it" in unknown.json()["detail"][0]["msg"]
        # cogo.Client
        async with cogo.Client(info["nats_url"]) as client:
            handle = await client.submit("sample.greet.0", {"name": "client"})
            assert (await handle.result(timeout=20))["text"] == "hello client"
            bad = await client.submit("sample.greet.0", {"name": 1})
            with pytest.raises(cogo.TaskFailed) as failed:
                await bad.result(timeout=20)
            assert failed.value.code == "payload.invalid"
            retried = await client.submit("sample.flaky.0", {"fail_times": 1})
            assert await retried.result(timeout=20) == {"attempt": 2}
        # plain nats-py
        nc = await connect(info["nats_url"], "plain")
        js = nc.jetstream()
        body = json.dumps({"task_id": "plain-1", "route": "sample.upper.0", "payload": {"text": "plain"}}).encode()
        await js.publish("orchestrator.execute.0", body, headers={"Nats-Msg-Id": "plain-1"})
        done = (await EventReader(js).wait_terminal(["plain-1"]))["plain-1"]
        assert done.type == "execute_done" and done.data["result"] == "PLAIN"
        await nc.close()
        # SQL sees the app's events like any other
        sql = _cli(
            "sql",
            "SELECT type, count(*) FROM bus_events WHERE route = 'sample.flaky.0' GROUP BY 1 ORDER BY 1",
            "--json",
            "--data-dir",
            str(data_dir),
        )
        assert sql.returncode == 0, sql.stderr
        counts = dict(json.loads(sql.stdout)["rows"])
        assert counts["execute_retry"] == 1 and counts["execute_done"] == 1
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    log = (data_dir / "logs" / "sample.greet.log").read_text()
    assert "started (app sample)" in log


async def test_a_running_system_picks_up_an_app_started_with_replicas(tmp_path, config_path):
    data_dir = tmp_path / "up"
    proc, info = await cogo_up(data_dir, config_path)  # no --app: sample's routes do not exist yet
    run = None
    try:
        async with cogo.Client(info["nats_url"]) as client:
            with pytest.raises(cogo.CogoError, match="route.unknown|no app declared"):
                await client.submit("sample.greet.0", {"name": "early"})
            run = cogo_proc(
                "run",
                "tests.sample_apps:app",
                "--agent",
                "greet",
                "--replicas",
                "2",
                "--nats-url",
                info["nats_url"],
                "--config",
                str(config_path),
            )
            pids: set[int] = set()
            deadline = time.monotonic() + 60
            while len(pids) < 2 and time.monotonic() < deadline:
                try:
                    handles = [await client.submit("sample.greet.0", {"name": str(i)}) for i in range(20)]
                except cogo.CogoError:  # not declared yet: the processes are starting
                    await asyncio.sleep(0.2)
                    continue
                for handle in handles:
                    pids.add((await handle.result(timeout=30))["pid"])
            assert len(pids) == 2, pids  # two processes share the route's consumer
            assert run.pid not in pids  # the supervisor itself runs no agent
    finally:
        if run is not None:
            out = stop(run)
            assert run.returncode == 0, out
        stop(proc)


def test_loading_errors_are_one_clear_line_with_exit_2(tmp_path, config_path):
    nope = _cli("run", "nope:app", "--nats-url", "nats://127.0.0.1:1")
    assert nope.returncode == 2
    assert nope.stderr.strip().splitlines() == [
        "cogo: error [app.not_found]: cannot import 'nope' for 'nope:app': no module named "
        "'nope' (looked in the current directory and sys.path; see --app-dir)"
    ]
    no_attr = _cli("run", "tests.sample_apps:missing", "--nats-url", "nats://127.0.0.1:1")
    assert no_attr.returncode == 2 and "has no attribute 'missing'" in no_attr.stderr
    no_agent = _cli("run", "tests.sample_apps:app", "--agent", "zz", "--nats-url", "x")
    assert no_agent.returncode == 2 and "has no agent 'zz'" in no_agent.stderr
    listed = _cli("run", "--help")
    assert "echo" in listed.stdout and "pkg.module:app" in listed.stdout
    # two apps declaring one route: refused at start, naming both, nothing left running
    data_dir = tmp_path / "clash"
    clash = _cli(
        "up",
        "--data-dir",
        str(data_dir),
        "--config",
        str(config_path),
        "--app",
        "tests.sample_apps:app",
        "--app",
        "tests.sample_apps:rival",
    )
    assert clash.returncode == 2, clash.stdout + clash.stderr
    assert "'sample.greet.0'" in clash.stderr
    assert "'sample'" in clash.stderr and "'rival'" in clash.stderr
    assert not (data_dir / "endpoints.json").exists()


async def test_submit_reads_files_and_stdin_and_waits_at_once_when_done(tmp_path, config_path):
    data_dir = tmp_path / "up"
    proc, info = await cogo_up(data_dir, config_path)
    try:
        payload = tmp_path / "payload.json"
        payload.write_text('{"result": "from a file"}')
        base = ["submit", "--route", "echo.run.0", "--data-dir", str(data_dir)]
        first = _cli(*base, "--payload", f"@{payload}", "--task-id", "cli-1", "--wait")
        assert first.returncode == 0, first.stderr
        final = json.loads(first.stdout.splitlines()[-1])
        assert final["status"] == "succeeded" and final["result"] == "from a file"
        piped = _cli(*base, "--payload", "-", "--wait", stdin='{"result": "piped"}')
        assert json.loads(piped.stdout.splitlines()[-1])["result"] == "piped"
        # a duplicate submission makes no new event: an answer can only come from the status
        again = _cli(*base, "--payload", f"@{payload}", "--task-id", "cli-1", "--wait", "--timeout", "30")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout.splitlines()[0])["duplicate"] is True
        assert json.loads(again.stdout.splitlines()[-1])["result"] == "from a file"
        failing = _cli(*base, "--payload", '{"fail_always": "permanent"}', "--wait")
        assert failing.returncode == 1
        assert json.loads(failing.stdout.splitlines()[-1])["error_code"] == "worker.permanent"
        bad = _cli(*base, "--payload", "@/nonexistent.json")
        assert bad.returncode == 2 and "cannot read" in bad.stderr
        status = _cli("status", "cli-1", "--data-dir", str(data_dir))
        assert json.loads(status.stdout)["status"] == "succeeded"
    finally:
        stop(proc)


async def test_policy_precedence_default_agent_toml_runtime(tmp_path, config_path):
    """[policy.default] < @app.agent(policy=) < cogo.toml < cogo policy set, across restarts."""
    # laid over the suite's settings, which have a [policy.default] table of their own
    config_path.write_text(
        merged_toml(
            config_path.read_text(),
            textwrap.dedent("""
        [policy.default]
        ttl_ms = 500000
        max_cost_usd = 0.25

        [policy.routes."sample.greet.0"]
        timeout_ms = 4000
    """),
        )
    )
    data_dir = tmp_path / "up"
    proc, info = await cogo_up(data_dir, config_path, "--app", "tests.sample_apps:app")
    try:
        nc = await connect(info["nats_url"], "test")
        js = nc.jetstream()
        record = await read_record(js, "sample.greet.0")
        policy = record.policy
        assert policy.ttl_ms == 500000 and policy.max_cost_usd == 0.25  # [policy.default]
        assert policy.max_attempts == 2  # the agent's policy=
        assert policy.timeout_ms == 4000  # cogo.toml beats the agent's 5000
        assert (record.app, record.agent) == ("sample", "greet")
        changed = await set_policy(js, "sample.greet.0", {"timeout_ms": 3000})
        assert changed.timeout_ms == 3000  # policy set beats cogo.toml
        with pytest.raises(cogo.CogoError, match="above its ceiling"):
            await set_policy(js, "sample.greet.0", {"ceilings": {"max_timeout_ms": 1000}})
        with pytest.raises(cogo.CogoError, match="route.unknown|no app declared"):
            await set_policy(js, "nobody.here.0", {"timeout_ms": 1})
        await nc.close()
    finally:
        stop(proc)
    # restart: the runtime change survives and is reported as masking the configured value
    proc, info = await cogo_up(data_dir, config_path, "--app", "tests.sample_apps:app")
    try:
        nc = await connect(info["nats_url"], "test")
        js = nc.jetstream()
        assert (await read_record(js, "sample.greet.0")).policy.timeout_ms == 3000
        reset = await reset_policy(js, "sample.greet.0")
        assert reset.timeout_ms == 4000  # back to cogo.toml
        await nc.close()
    finally:
        out = stop(proc)
    assert "keeps timeout_ms=3000 over the configured 4000" in out


async def test_auth_gives_the_app_its_own_user_and_grants_a_canary_version(tmp_path, config_path):
    data_dir = tmp_path / "secure"
    proc, info = await cogo_up(data_dir, config_path, "--auth", "--app", "tests.sample_apps:app")
    canary = None
    try:
        passwords = json.loads((data_dir / "credentials.json").read_text())
        assert "app-sample" in passwords
        async with cogo.Client(data_dir=data_dir) as client:  # the client user, from endpoints
            handle = await client.submit("sample.greet.0", {"name": "secure"})
            assert (await handle.result(timeout=30))["text"] == "hello secure"
        # the app's user may pull its own routes only
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        app_nc = await connect(
            info["nats_url"], "app", user="app-sample", password=passwords["app-sample"], error_cb=on_error
        )
        with pytest.raises(Exception):  # noqa: B017
            await app_nc.jetstream().consumer_info("TASKS", "echo-run-0", timeout=1)
        await app_nc.close()
        # a canary version of the app's agent under --auth: cogo up grants its consumer
        canary = cogo_proc(
            "run",
            "tests.sample_apps:app",
            "--agent",
            "greet",
            "--version",
            "v2",
            "--data-dir",
            str(data_dir),
            "--config",
            str(config_path),
        )
        admin = await connect(info["nats_url"], "admin", user="admin", password=passwords["admin"])
        js = admin.jetstream()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                await js.consumer_info("TASKS", "sample-greet-0-v2")
                break
            except Exception:
                await asyncio.sleep(0.2)
        split = {"route": "sample.greet.0", "candidate": "v2", "percent": 100}

        async def put_split() -> bool:
            # the consumer exists before the grant's reload runs; while the server reloads
            # its accounts, JetStream's API answers "no responders" for a moment
            try:
                kv = await js.key_value("rollouts")
                await kv.put("route.sample.greet.0", json.dumps(split).encode())
            except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
                return False
            return True

        await wait_until(put_split, 30, "the split written after the grant's reload")
        await asyncio.sleep(0.5)  # the dispatcher's watch
        async with cogo.Client(data_dir=data_dir) as client:
            handle = await client.submit("sample.greet.0", {"name": "canary"})
            await handle.result(timeout=30)
            events = await client.status(handle.task_id)
        assert events.events[-1].get("version") == "v2"
        grants = json.loads((data_dir / "grants.json").read_text())
        assert grants == {"app-sample": ["sample.greet.0.v2"]}
        await admin.close()
    finally:
        if canary is not None:
            stop(canary)
        out = stop(proc)
    logs = out + "".join(p.read_text() for p in (data_dir / "logs").glob("*.log"))
    assert "violation" not in logs.lower(), [line for line in logs.splitlines() if "violation" in line.lower()]


async def test_installed_apps_are_found_by_entry_point(tmp_path, nats_server, js):
    site = tmp_path / "site"
    dist = site / "lexicon_agents-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lexicon-agents\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[cogo.apps]\nlexicon = lexicon.agents:app\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "examples" / "agents")])}
    listed = _cli("run", "--help", env=env)
    assert "lexicon" in listed.stdout and "lexicon.agents:app" in listed.stdout
    # `cogo run lexicon` runs the installed app by its entry-point name
    run = cogo_proc("run", "lexicon", "--agent", "count", "--replicas", "1", "--nats-url", nats_server.url, env=env)
    try:
        deadline = time.monotonic() + 60
        record = None
        while record is None and time.monotonic() < deadline:
            try:
                record = await read_record(js, "lexicon.count.0")
            except cogo.CogoError:
                await asyncio.sleep(0.2)
        assert record is not None and record.app == "lexicon"
    finally:
        stop(run)
