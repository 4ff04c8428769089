"""Issue 21's limits, attacked from outside: a real ``cogo up --auth`` with the sample app,
and the app's NATS user driven through plain nats-py, as an attacker holding its password.

Secrets are private from their first byte; version grants are bounded and rate-limited; a
replay never rolls a rollout back; the small items (routes with wildcards, oversized
payloads, stream look-ups) end in clear errors, never in a crashed handler.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

import cogo
from cogo.errors import VersionGrantRefused
from cogo.streams.auth import GRANT_BURST, MAX_VERSIONS_PER_ROUTE, AuthPlan
from tests.helpers import SUITE_CONFIG, wait_until
from tests.upsystem import START_TIMEOUT_S, start_up, stop

# a small DuckDB pool, so the memory test stays small on a shared machine
SMALL_POOL = """
[duckdb]
memory_limit = "256MB"
"""
POOL_BYTES = 256 * 1024 * 1024


class Secure:
    """The running ``cogo up --auth`` of this module."""

    def __init__(self, proc: Any, info: dict[str, Any], data_dir: Path) -> None:
        self.proc, self.info, self.data_dir = proc, info, data_dir
        self.passwords: dict[str, str] = json.loads((data_dir / "credentials.json").read_text())

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.info["http_url"],
            timeout=60,
            headers={"Authorization": f"Bearer {self.info['api_token']}"},
        )

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and VmHWM (its peak) of the ``cogo up`` process (facade and projector)."""
        lines = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    async def as_user(self, user: str) -> nats.NATS:
        """A plain nats-py connection as ``user`` (no Cogo code on the attacker's side)."""
        return await nats.connect(
            self.info["nats_url"],
            user=user,
            password=self.passwords[user],
            allow_reconnect=False,
            error_cb=_ignore,
            inbox_prefix=f"_INBOX_{user}",
        )


async def _ignore(exc: Exception) -> None:
    return None  # permission violations are the point of these tests


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("secure")
    config = root / "cogo.toml"
    config.write_text(SUITE_CONFIG + SMALL_POOL)
    data_dir = root / "data"
    proc = start_up(data_dir, config, "--auth", "--app", "tests.sample_apps:app")
    deadline = time.monotonic() + START_TIMEOUT_S
    info = None
    while info is None and time.monotonic() < deadline:
        try:
            found = json.loads((data_dir / "endpoints.json").read_text())
            info = found if found.get("pid") == proc.pid else None
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise AssertionError(f"cogo up exited:\n{stop(proc)}")
        time.sleep(0.1)
    if info is None:
        raise AssertionError(f"cogo up did not start:\n{stop(proc)}")
    yield Secure(proc, info, data_dir)
    stop(proc)


# -- 7. secrets and version grants ---------------------------------------------------------


def test_every_secret_in_the_data_dir_is_private(secure: Secure) -> None:
    for name in ("nats.conf", "credentials.json", "endpoints.json", "grants.json"):
        path = secure.data_dir / name
        if name == "grants.json" and not path.exists():
            continue
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert secure.passwords["admin"] in (secure.data_dir / "nats.conf").read_text()


def test_a_private_file_is_never_wider_even_over_an_old_one(tmp_path: Path) -> None:
    from cogo.streams.server import server_config

    old = tmp_path / "nats.conf"
    old.write_text("left by an older release")
    old.chmod(0o644)
    server_config(old, "default", "\n# secret\n")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert "# secret" in old.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["nats.conf"]  # no temporary file left


async def test_an_app_cannot_mint_versioned_consumers_without_bound(secure: Secure) -> None:
    user = "app-sample"
    nc = await secure.as_user(user)
    answers = []
    try:
        for n in range(GRANT_BURST + 4):
            body = json.dumps({"route": "sample.boom.0", "version": f"x{n}"}).encode()
            reply = await nc.request(f"cogo.control.version.{user}", body, timeout=30)
            answers.append(json.loads(reply.data))
        # asking again for a version already granted is free
        again = json.dumps({"route": "sample.boom.0", "version": "x0"}).encode()
        repeat = json.loads((await nc.request(f"cogo.control.version.{user}", again, 30)).data)
    finally:
        await nc.close()
    granted = [a for a in answers if a["ok"]]
    refused = [a for a in answers if not a["ok"]]
    assert len(granted) == GRANT_BURST, answers
    assert {a["code"] for a in refused} == {"auth.version_refused"}, refused
    assert "ask again in" in refused[0]["error"]
    assert repeat["ok"] is True
    admin = await secure.as_user("admin")
    try:
        names = [c.name async for c in _consumers(admin.jetstream(), "TASKS")]
    finally:
        await admin.close()
    made = [n for n in names if n.startswith("sample-boom-0-")]
    assert len(made) == GRANT_BURST, made  # a refused grant leaves no consumer behind


async def _consumers(js: Any, stream: str) -> Any:
    for info in await js.consumers_info(stream):
        yield info


def test_versions_of_a_route_are_bounded_and_grants_rate_limited() -> None:
    plan = AuthPlan(workers={"app-a": ["a.b.0", "a.c.0"]})
    now = 1000.0
    for n in range(MAX_VERSIONS_PER_ROUTE):
        assert plan.grant_version("app-a", f"a.b.0.v{n}", now=now + 100 * n)
    with pytest.raises(VersionGrantRefused, match="none is idle"):
        plan.grant_version("app-a", "a.b.0.late", now=now + 10_000)
    assert plan.grant_version("app-a", "a.c.0.v1", now=now + 10_000)  # another route's own
    assert not plan.grant_version("app-a", "a.b.0.v0", now=now + 10_000)  # held already
    plan.revoke_version("app-a", "a.b.0.v0")
    assert plan.grant_version("app-a", "a.b.0.late", now=now + 10_000)
    fast = AuthPlan(workers={"app-f": ["f.b.0"]})
    for n in range(GRANT_BURST):
        fast.grant_version("app-f", f"f.b.0.v{n}", now=now)
    with pytest.raises(VersionGrantRefused, match="ask again in 60 s"):
        fast.grant_version("app-f", "f.b.0.next", now=now)
    assert fast.grant_version("app-f", "f.b.0.next", now=now + 61)


# -- 10. SQL within its time limit and its memory pool --------------------------------------


async def test_sql_answers_within_its_pool_and_keeps_nothing(secure: Secure) -> None:
    async with secure.http() as http:
        assert (await http.post("/api/sql", json={"sql": "SELECT 1"})).status_code == 200
        before = secure.memory_kb()["VmRSS"]
        secure.reset_peak()
        done = asyncio.Event()

        async def ping() -> None:  # the facade keeps answering while DuckDB works
            while not done.is_set():
                assert (await http.get("/healthz")).status_code == 200
                await asyncio.sleep(0.05)

        pinger = asyncio.create_task(ping())
        answers = []
        for sql, timeout_s in [
            ("SELECT list(range::DOUBLE) l FROM range(16000000)", 2),
            ("SELECT list(range) FROM range(40000000)", 10),
        ]:
            answer = await http.post("/api/sql", json={"sql": sql, "timeout_s": timeout_s})
            answers.append((answer.status_code, answer.json()))
        done.set()
        await pinger
        peak = secure.memory_kb()["VmHWM"]
    for status, body in answers:
        if status == 200:  # cut while it was fetched, never converted whole
            assert body["truncated_by"] == "max_bytes" and body["rows"] == [], body
        else:
            assert status == 400 and body["code"] in ("sql.timeout", "sql.rejected"), body
    growth = (peak - before) * 1024
    # DuckDB's pool plus the process's own working set; Python objects of the answer were
    # over a gigabyte here before
    assert growth < POOL_BYTES + 300 * 2**20, growth

    async def released() -> bool:
        return secure.memory_kb()["VmRSS"] < before + 100 * 1024

    await wait_until(released, 30, lambda: f"memory kept after the queries: {secure.memory_kb()}")


# -- 11. the smaller ones ------------------------------------------------------------------

OUTPUT_CHUNKS, CHUNK_CHARS, READERS = 1000, 4000, 60


async def _publish_output(secure: Secure, task_id: str) -> None:
    """A finished task's 4 MB output, as its worker and dispatcher would have written it
    (each message with the task's output MAC: readers under --auth show nothing else)."""
    from cogo.streams.outputs import Output, encode_output, output_subject
    from cogo.streams.seal import MAC_HEADER, OutputVerifier, output_mac

    verifier = OutputVerifier(str(secure.info["output_key"]))
    out_token = verifier.out_token(task_id)
    admin = await secure.as_user("admin")
    js = admin.jetstream()
    subject = output_subject(task_id)
    acks = []
    for seq in range(1, OUTPUT_CHUNKS + 1):
        chunk = Output(task_id=task_id, attempt=1, at="2026-12-05T00:00:00Z", seq=seq, data="x" * CHUNK_CHARS)
        data = encode_output(chunk)
        acks.append(await js.publish_async(subject, data, headers={MAC_HEADER: output_mac(out_token, data)}))
    end = Output(task_id=task_id, attempt=1, at="2026-12-05T00:00:01Z", end=True, status="succeeded")
    data = encode_output(end)
    acks.append(await js.publish_async(subject, data, headers={MAC_HEADER: output_mac(out_token, data)}))
    await asyncio.gather(*acks)
    await admin.close()


async def _read_sse(http: httpx.AsyncClient, task_id: str, headers: dict | None = None, pause_every: int = 0) -> dict:
    """Read a task's SSE stream to its end; ``pause_every``: a slow reader, pausing a moment
    every so many lines (the facade must not buffer what it cannot send yet)."""
    chunks, events, ids = 0, [], []
    lines = 0
    async with http.stream("GET", f"/api/tasks/{task_id}/stream", headers=headers) as response:
        if response.status_code != 200:
            return {"status": response.status_code, "body": json.loads(await response.aread())}
        async for line in response.aiter_lines():
            lines += 1
            if pause_every and lines % pause_every == 0:
                await asyncio.sleep(0.05)
            if line.startswith("id: "):
                ids.append(int(line[4:]))
            if line.startswith("event: "):
                events.append(line[7:])
                chunks += line == "event: chunk"
    return {"status": 200, "chunks": chunks, "last": events[-1] if events else None, "ids": ids}


async def test_many_readers_of_a_large_output_all_get_its_end(secure: Secure) -> None:
    task_id = "big-output-1"
    await _publish_output(secure, task_id)
    async with secure.http() as http:
        results = await asyncio.gather(
            *(_read_sse(http, task_id, pause_every=200 if n % 2 else 0) for n in range(READERS))
        )
    summary = [(r["status"], r.get("chunks"), r.get("last")) for r in results]
    assert summary == [(200, OUTPUT_CHUNKS, "end")] * READERS, summary
    log = (secure.data_dir / "up.log").read_text(errors="replace")
    assert "unhandled error on GET /api/tasks" not in log, log[-3000:]


async def test_a_last_event_id_past_64_bits_is_a_clear_400(secure: Secure) -> None:
    task_id = "big-output-2"
    await _publish_output(secure, task_id)
    async with secure.http() as http:
        for bad in (str(2**64 - 1), str(2**64), str(2**64 + 5), "1" * 40):
            result = await _read_sse(http, task_id, headers={"Last-Event-ID": bad})
            assert result["status"] == 400, (bad, result)
            assert result["body"]["code"] == "request.number_out_of_range", result
        whole = await _read_sse(http, task_id, headers={"Last-Event-ID": "not-ours"})
        assert (whole["chunks"], whole["last"]) == (OUTPUT_CHUNKS, "end")
        resume = str(whole["ids"][-2])  # a client that saw all but the last chunk
        rest = await _read_sse(http, task_id, headers={"Last-Event-ID": resume})
        assert (rest["chunks"], rest["last"]) == (1, "end"), rest


async def test_a_wildcard_route_and_an_oversized_task_fail_at_once(secure: Secure) -> None:
    client = await secure.as_user("client")
    js = client.jetstream()
    wild = json.dumps({"task_id": "wild-1", "route": "echo.*.>", "payload": {}}).encode()
    huge = json.dumps(
        {"task_id": "huge-1", "route": "sample.greet.0", "payload": {"name": "x" * (3 * 2**20 // 2)}}
    ).encode()
    for task_id, body in (("wild-1", wild), ("huge-1", huge)):
        await js.publish("orchestrator.execute.0", body, headers={"Nats-Msg-Id": task_id})
    await client.close()
    async with cogo.Client(data_dir=secure.data_dir) as c:
        wild_end = await c.handle("wild-1", "echo.run.0").wait(timeout=30)
        huge_end = await c.handle("huge-1", "sample.greet.0").wait(timeout=30)
    assert (wild_end.status, wild_end.error_code) == ("failed", "message.malformed")
    assert "is not <service>.<role>.<shard>" in wild_end.error
    assert (huge_end.status, huge_end.error_code) == ("failed", "message.too_large")
    assert "at most 1048576 bytes" in huge_end.error
    admin = await secure.as_user("admin")
    try:
        failed = await admin.jetstream().get_last_msg("EVENTS", "events.execute_failed")
        assert json.loads(failed.data)["task_id"] in ("wild-1", "huge-1")
        wild_events = await admin.jetstream().get_last_msg("EVENTS", "events.execute_failed.>")
        assert "*" not in wild_events.subject
    finally:
        await admin.close()
    log = (secure.data_dir / "logs" / "dispatcher.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-2000:]  # the handler never crashed on them


def test_the_cli_refuses_wildcard_routes_in_one_line(secure: Secure) -> None:
    data = ["--data-dir", str(secure.data_dir)]
    for args in (
        ["policy", "set", "nope.*.>", '{"timeout_ms": 1000}', *data],
        ["policy", "get", "echo.>", *data],
        ["submit", "--route", "echo.*", *data],
        ["routes", "forget", "echo.*.0", *data],
    ):
        done = subprocess.run([sys.executable, "-m", "cogo", *args], capture_output=True, text=True, timeout=60)
        lines = (done.stdout + done.stderr).strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1, (args, done.stdout, done.stderr)
        assert "invalid route" in lines[0] and "Traceback" not in lines[0], lines


async def test_of_concurrent_signals_exactly_one_counts_and_says_so(secure: Secure) -> None:
    definition = {
        "id": "approval",
        "nodes": [
            {"id": "approve", "type": "signal", "name": "approve", "timeout_ms": 60000},
            {
                "id": "done",
                "type": "publish",
                "route": "echo.run.0",
                "payload": {"result": {"by": "${nodes.approve.result.by}"}},
            },
        ],
    }
    async with secure.http() as http:
        started = await http.post("/api/orchestrator/execute", json={"definition": definition, "runId": "sig-run-1"})
        assert started.status_code == 202, started.text

        async def waiting() -> bool:
            state = await http.get("/api/orchestrator/state", params={"runId": "sig-run-1"})
            nodes = state.json().get("nodes", []) if state.status_code == 200 else []
            return any(n["id"] == "approve" and n["status"] == "running" for n in nodes)

        await wait_until(waiting, 30, "the signal node never started")
        answers = await asyncio.gather(
            *(
                http.post(
                    "/api/orchestrator/signal",
                    json={"runId": "sig-run-1", "name": "approve", "data": {"by": f"user-{n}"}},
                )
                for n in range(20)
            )
        )

        async def ended() -> dict | None:
            state = await http.get("/api/orchestrator/state", params={"runId": "sig-run-1"})
            return state.json() if state.json().get("endedAt") else None

        final = await wait_until(ended, 30, "the run never ended")
    counted = [a.json() for a in answers if a.status_code == 202 and not a.json()["duplicate"]]
    assert len(counted) == 1, [(a.status_code, a.json()) for a in answers]
    assert all(a.status_code in (202, 409) for a in answers)
    approve = next(n for n in final["nodes"] if n["id"] == "approve")
    winner = [n for n in range(20) if answers[n].json() == counted[0]]
    assert approve["result"] == {"by": f"user-{winner[0]}"}, (approve, counted)


async def test_an_app_user_cannot_list_streams_or_read_tasks_info(secure: Secure) -> None:
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    nc = await nats.connect(
        secure.info["nats_url"],
        user="app-sample",
        password=secure.passwords["app-sample"],
        inbox_prefix="_INBOX_app-sample",
        allow_reconnect=False,
        error_cb=on_error,
    )
    try:
        subjects = (
            "$JS.API.STREAM.INFO.TASKS",
            "$JS.API.STREAM.NAMES",
            "$JS.API.STREAM.LIST",
            "$JS.API.STREAM.INFO.EVENTS",
        )
        for subject in subjects:
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await nc.request(subject, b"{}", timeout=1)
        # what the app does need still works: its own bucket of artifacts
        info = await nc.request("$JS.API.STREAM.INFO.OBJ_artifacts", b"", timeout=5)
        assert json.loads(info.data)["config"]["name"] == "OBJ_artifacts"
    finally:
        await nc.close()
    for subject in subjects:
        assert any(f'violation for publish to "{subject.lower()}"' in e for e in refused), (subject, refused)


async def test_at_the_bound_the_oldest_idle_version_is_retired(nc, js, config, data_dir) -> None:
    from types import SimpleNamespace

    from cogo.runtime.version_grants import VersionGrants
    from cogo.streams.registry import declare_version

    user, route = "echo", "echo.run.0"
    plan = AuthPlan(workers={user: [route]})
    for n in range(MAX_VERSIONS_PER_ROUTE):
        plan.versions.setdefault(user, []).append(await declare_version(js, config, route, f"v{n}"))
    await js.publish(f"{route}.v0", b"{}")  # v0 still has a task waiting: never retired
    up = SimpleNamespace(auth_plan=plan, nc=nc, data_dir=data_dir)
    grants = VersionGrants(up)  # type: ignore[arg-type]
    await grants._retire_idle_version(user, route)
    assert plan.versions[user] == [f"{route}.v{n}" for n in (0, *range(2, 8))]
    names = {c.name for c in await js.consumers_info("TASKS")}
    assert "echo-run-0-v0" in names and "echo-run-0-v1" not in names
    assert json.loads((data_dir / "grants.json").read_text()) == plan.versions
    await grants._retire_idle_version(user, route)
    assert len(plan.versions[user]) == MAX_VERSIONS_PER_ROUTE - 1  # under the bound: kept
