"""The projector against a real nats-server and real DuckDB files.

Events come from the real dispatcher and echo actor (in-process), or, for volume, from
synthetic events shaped like theirs appended straight to EVENTS.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import msgspec
import pytest
from nats.js.errors import NotFoundError

from cogo.agents.echo import EchoActor
from cogo.bench.projections import fill, synthetic_events
from cogo.errors import ProjectionBusy
from cogo.http.app import create_app
from cogo.http.metrics import routes as metric_routes
from cogo.http.state import AppState
from cogo.projections import histogram, rollups
from cogo.projections import store as store_module
from cogo.projections.projector import consumer_name
from cogo.projections.replay import replay_offline
from cogo.projections.store import connect, db_path, schema_files
from cogo.runtime.base import publish_dead_letter
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.policies import PolicyStore
from cogo.streams.topology import ensure_topology
from tests.helpers import EventReader, projecting, running, submit, wait_until
from tests.upsystem import cogo

RESULT_TYPES = ("execute_done", "execute_retry", "execute_failed")


async def workload(nats_server: Any, js: Any, config: Any) -> EventReader:
    """Real tasks through the dispatcher and echo: successes, retries, failures, a violation."""
    payloads: list[dict[str, Any]] = []
    for i in range(24):
        payloads.append({"sleep_ms": (i * 7) % 40, "tokens": 10 + i, "cost_usd": 0.001})
    payloads += [{"fail_times": 1, "tokens": 5}, {"fail_times": 2, "sleep_ms": 5}]
    payloads += [
        {"fail_always": "permanent"},
        {"fail_always": True, "__assignment": {"max_attempts": 2}},
    ]
    payloads += [{"__assignment": {"model": "not-a-model"}}]  # policy violation: no attempt
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        ids = [await submit(js, payload=p) for p in payloads]
        reader = EventReader(js)
        await reader.wait_terminal(ids, timeout=20)
    await reader.poll()
    return reader


async def dead_letter(js: Any, n: int) -> None:
    for seq in range(1, n + 1):
        await publish_dead_letter(
            js,
            subject="echo.run.0",
            data=b'{"task_id": "dead-%d", "route": "echo.run.0"}' % seq,
            seq=1000 + seq,
            deliveries=3,
            code="dead_letter",
            reason="gave up after 3 deliveries",
            actor="dispatcher@test:1",
        )


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table and view of the projection, in a stable order."""
    queries = {
        "bus_events": "SELECT * FROM bus_events ORDER BY seq",
        "dlq_messages": "SELECT * FROM dlq_messages ORDER BY seq",
        "checkpoint": "SELECT * FROM projector_checkpoint ORDER BY stream",
        "task_latency": "SELECT * FROM task_latency ORDER BY task_id",
        "latency_by_route": "SELECT * FROM latency_by_route ORDER BY ALL",
        "latency_by_minute": "SELECT * FROM latency_by_minute ORDER BY ALL",
        "failure_trend": "SELECT * FROM failure_trend ORDER BY ALL",
        "event_counts": "SELECT * FROM event_counts ORDER BY ALL",
        "cohort_latency": "SELECT * FROM cohort_latency ORDER BY ALL",
        **{
            table: f"SELECT * FROM {table} ORDER BY ALL"
            for table in [
                *(f.table(g) for f in rollups.FAMILIES for g in rollups.GRAINS),
                "rollup_run_tasks",
                "rollup_gate_failures",
                "workflow_runs",
                "rollup_state",
            ]
        },
    }
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {name: con.execute(sql).fetchall() for name, sql in queries.items()}
    finally:
        con.close()


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), written out."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def app_for(nc: Any, js: Any, config: Any, data_dir: Path, projector: Any = None) -> Any:
    state = AppState(nc=nc, config=config, policies=PolicyStore(js), data_dir=data_dir, projector=projector)
    return create_app(state, extra_routes=metric_routes)


# -- projection contents -------------------------------------------------------------


async def test_projects_every_event_once_with_its_columns(nats_server, nc, js, config, data_dir):
    reader = await workload(nats_server, js, config)
    await dead_letter(js, 2)
    async with projecting(nc, config, data_dir) as projector:
        await projector.wait_caught_up()
        rows = await projector.store.read(
            lambda cur: cur.execute(
                'SELECT seq, event_id, type, "at", task_id, route, attempt, queue_wait_ms, '
                "duration_ms, tokens, error_code, raw->>'$.event_id' FROM bus_events ORDER BY seq"
            ).fetchall()
        )
        tasks = await projector.store.read(
            lambda cur: cur.execute(
                "SELECT task_id, status, attempts, retries, error_code, queue_wait_ms, duration_ms FROM task_latency"
            ).fetchall()
        )
        dlq = await projector.store.read(
            lambda cur: cur.execute(
                "SELECT original_seq, error_code, deliveries, task_id FROM dlq_messages ORDER BY seq"
            ).fetchall()
        )
        stats = projector.stats()
        # both feeds read through the fast intake path, not nats-py's per-message one
        assert all(state.feed is not None and state.feed.direct for state in projector.streams.values())
    events = reader.events
    assert len(rows) == len(events)
    assert len({r[0] for r in rows}) == len(rows)
    for row, event in zip(rows, events, strict=True):
        assert row[1] == event.event_id == row[11]
        assert row[2] == event.type and row[4] == event.task_id and row[5] == event.route
        assert row[3] == dt.datetime.strptime(event.at, "%Y-%m-%dT%H:%M:%S.%fZ")
        assert (row[6], row[7], row[8], row[10]) == (
            event.attempt,
            event.queue_wait_ms,
            event.duration_ms,
            event.error_code,
        )
        assert row[9] == (event.usage.tokens if event.usage else None)
    by_task = {t[0]: t for t in tasks}
    terminal = {tid: evs[0] for tid, evs in reader.terminal().items()}
    assert set(by_task) == set(terminal)
    for task_id, event in terminal.items():
        status = "done" if event.type == "execute_done" else "failed"
        assert by_task[task_id][1] == status
        assert by_task[task_id][4] == event.error_code
        retries = [e for e in reader.of(task_id) if e.type == "execute_retry"]
        assert by_task[task_id][3] == len(retries)
        if event.duration_ms is not None:
            assert by_task[task_id][2] == event.attempt
            assert by_task[task_id][6] == event.duration_ms
    assert {t[1] for t in tasks} == {"done", "failed"}
    assert any(t[3] == 2 for t in tasks)  # fail_times=2: two retries, then done
    assert dlq == [(1001, "dead_letter", 3, "dead-1"), (1002, "dead_letter", 3, "dead-2")]
    assert stats["streams"]["EVENTS"]["lag"] == 0
    assert stats["streams"]["EVENTS"]["applied_seq"] == rows[-1][0]


async def test_malformed_messages_are_kept_not_fatal(nc, js, data_dir, config):
    await js.publish("events.junk", b"not json at all")
    await js.publish("events.junk", b'{"pretty":\n  "printed"}')
    await js.publish("events.junk", b"[1, 2, 3]")
    await js.publish("events.junk", b'{"event_id": "x", "type": "odd", "attempt": "three", "at": "?"}')
    async with projecting(nc, config, data_dir) as projector:
        await projector.wait_caught_up()
        rows = await projector.store.read(
            lambda cur: cur.execute('SELECT seq, type, attempt, "at", raw FROM bus_events ORDER BY seq').fetchall()
        )
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert rows[0][1] is None and rows[0][4] == '"not json at all"'
    assert rows[1][4] == '{"pretty":   "printed"}'
    assert rows[2][1] is None
    assert rows[3][1:4] == ("odd", None, None)


def test_fast_and_checked_inserts_write_the_same_rows(tmp_path):
    # every body valid JSON (so the fast statement does not fall back), of every shape
    bodies = [
        b"[1, 2, 3]",
        b'"a string"',
        b"5",
        b"null",
        b"{}",
        b"true",
        b'{"event_id": "x", "type": "odd", "attempt": "three", "at": "?"}',
        b'{"type": "t", "attempt": 99999999999, "usage": {}, "data": {"deadline": 3}}',
        b'{"type": "t", "usage": {"tokens": 5}, "at": "2026-01-02T03:04:05.678901Z"}',
        b' {"type": "padded", "error": "caf\\u00e9 \\ud83d\\ude00", "data": {"x": [1, {}]}}',
        b'{"type": "unicode \\u00fc", "route": "r\\u0000", "cohort": null}',
    ] + [body for _, body, _ in synthetic_events(50)]
    seqs = list(range(1, len(bodies) + 1))
    tables = []
    for name, sql in (("fast", store_module._INSERT_EVENTS_FAST), ("checked", store_module._INSERT_EVENTS)):
        store = store_module.ProjectionStore(tmp_path / f"{name}.duckdb", readers=0)
        store.open_sync()
        try:
            # no subjects known ('' each): every body's word stands
            params = [seqs, store_module.join_bodies(bodies), "\n" * (len(bodies) - 1)]
            assert store._apply("EVENTS", seqs[-1], sql, params) == len(bodies)
            tables.append(store.con.execute("SELECT * FROM bus_events ORDER BY seq").fetchall())
        finally:
            store.close_sync()
            store.shutdown()
    assert tables[0] == tables[1]
    assert tables[0][0][2] is None and tables[0][0][-1] == '"[1, 2, 3]"'


async def test_schema_files_run_in_name_order():
    names = [name for name, _ in schema_files()]
    assert names == sorted(names) and names[0] == "00_schema.sql"


# -- exactly once ----------------------------------------------------------------------


def _spawn_projector(url: str, data_dir: Path, batch: int) -> subprocess.Popen[bytes]:
    env = {"COGO_PROJECTOR_BATCH": str(batch)}
    args = ("-v", "run", "projector", "--nats-url", url, "--data-dir", str(data_dir))
    return cogo(*args, env=env, log=data_dir / "projector.log")


def _log(data_dir: Path) -> str:
    return (data_dir / "projector.log").read_text(errors="replace")[-4000:]


async def _ack_floor(js: Any, data_dir: Path) -> int:
    try:
        info = await js.consumer_info("EVENTS", consumer_name(data_dir), timeout=1)
    except (NotFoundError, TimeoutError):
        return 0
    return int(info.ack_floor.stream_seq or 0)


async def _forget_consumer(js: Any, data_dir: Path) -> None:
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer("EVENTS", consumer_name(data_dir))


async def test_exactly_once_across_kill_9(nats_server, js, data_dir):
    total = 40_000  # ~0.5 s of work at these batch sizes: the kills land mid-stream
    await fill(js, synthetic_events(total))
    rng = random.Random(11)
    kills_mid_stream = 0
    floor = 0
    for _ in range(4):
        await _forget_consumer(js, data_dir)  # so the floor we watch is this child's
        child = _spawn_projector(nats_server.url, data_dir, batch=rng.choice([97, 250, 400]))
        deadline = time.monotonic() + 15
        # (a child that finds everything applied has nothing to show: no wait then)
        while floor < total and await _ack_floor(js, data_dir) <= floor and child.poll() is None:
            assert time.monotonic() < deadline, "projector made no progress"
            await asyncio.sleep(0.01)
        await asyncio.sleep(rng.uniform(0.0, 0.15))  # somewhere mid-batch or mid-commit
        floor = await _ack_floor(js, data_dir)
        child.send_signal(signal.SIGKILL)
        await asyncio.to_thread(child.wait)
        kills_mid_stream += 0 < floor < total
    assert kills_mid_stream >= 2, "the kills should land while the projector is mid-stream"
    await _forget_consumer(js, data_dir)
    child = _spawn_projector(nats_server.url, data_dir, batch=1000)
    deadline = time.monotonic() + 20
    while await _ack_floor(js, data_dir) < total:
        assert child.poll() is None, _log(data_dir)
        assert time.monotonic() < deadline, "projector did not catch up"
        await asyncio.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    try:
        assert await asyncio.to_thread(child.wait, 30) == 0, _log(data_dir)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail(f"projector did not stop on SIGTERM:\n{_log(data_dir)}")
    con = duckdb.connect(str(db_path(data_dir)), read_only=True)
    try:
        count, seqs, ids, low, high = con.execute(
            "SELECT count(*), count(DISTINCT seq), count(DISTINCT event_id), min(seq), max(seq) FROM bus_events"
        ).fetchone()
        checkpoint = con.execute("SELECT last_seq FROM projector_checkpoint WHERE stream = 'EVENTS'").fetchone()[0]
    finally:
        con.close()
    assert (count, seqs, ids, low, high, checkpoint) == (total, total, total, 1, total, total)


# -- replay ----------------------------------------------------------------------------


async def test_replay_rebuilds_identical_projection(nats_server, nc, js, config, data_dir, tmp_path):
    await workload(nats_server, js, config)
    await dead_letter(js, 3)
    async with projecting(nc, config, data_dir, batch=7) as projector:
        await projector.wait_caught_up()
        await projector.store.close()  # flush to the file for a read-only snapshot
        before = snapshot(projector.path)
        await projector.store.open()
        seen: list[Any] = []
        result = await projector.rebuild(progress=seen.append)  # while running
        await projector.store.close()
        after = snapshot(projector.path)
        await projector.store.open()
        # ingest resumed on the new file, from its checkpoint
        await js.publish("events.after_replay", b'{"event_id": "late", "type": "late"}')
        await projector.wait_caught_up()
        late = await projector.store.read(
            lambda cur: cur.execute("SELECT count(*) FROM bus_events WHERE type = 'late'").fetchone()
        )
    assert after == before
    assert late == (1,)
    assert result.messages["EVENTS"] == len(before["bus_events"])
    assert result.messages["DLQ"] == 3 and not result.warnings
    assert seen and seen[-1].applied == seen[-1].total
    assert not await asyncio.to_thread(Path(f"{db_path(data_dir)}.replay").exists)

    # and offline, into another data dir, from nothing
    other = tmp_path / "other"
    offline = await replay_offline(nc, other, batch=5000)
    rebuilt = snapshot(db_path(other))
    assert rebuilt["bus_events"][: len(before["bus_events"])] == before["bus_events"]
    assert offline.messages["EVENTS"] == len(before["bus_events"]) + 1


async def test_replay_refuses_a_file_another_process_owns(nats_server, nc, js, data_dir):
    await fill(js, synthetic_events(10))
    child = _spawn_projector(nats_server.url, data_dir, batch=100)
    try:
        deadline = time.monotonic() + 15
        while await _ack_floor(js, data_dir) < 10:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        with pytest.raises(ProjectionBusy, match="in use by another process"):
            await replay_offline(nc, data_dir)
    finally:
        child.send_signal(signal.SIGTERM)
        await asyncio.to_thread(child.wait, 15)


# -- retention -------------------------------------------------------------------------


async def test_projector_and_replay_survive_aged_out_events(nc, js, config, data_dir, tmp_path):
    await fill(js, synthetic_events(100))
    async with projecting(nc, config, data_dir) as projector:
        await projector.wait_caught_up()
    await fill(js, synthetic_events(200)[100:])  # seqs 101..200, not yet projected
    await js.purge_stream("EVENTS", seq=151)  # retention took 1..150: the checkpoint (100) is older
    async with projecting(nc, config, data_dir) as projector:
        await projector.wait_caught_up()
        stats = projector.stats()["streams"]["EVENTS"]
        rows = await projector.store.read(
            lambda cur: cur.execute("SELECT count(*), min(seq), max(seq) FROM bus_events").fetchone()
        )
    # 1..100 were projected before, then left the stream: the projection lets them go too;
    # 101..150 left before they were projected; 151..200 are projected now
    assert rows == (50, 151, 200)
    assert stats["aged_out"] == 50 and stats["pruned"] == 100
    assert stats["applied_seq"] == 200 and stats["lag"] == 0

    result = await replay_offline(nc, tmp_path / "replayed")
    assert result.first_seq["EVENTS"] == 151
    assert any("starts at sequence 151" in w for w in result.warnings)
    con = connect(db_path(tmp_path / "replayed"), read_only=True)
    try:
        assert con.execute("SELECT count(*), min(seq) FROM bus_events").fetchone() == (50, 151)
    finally:
        con.close()


def _file_bytes(path: Path) -> int:
    wal = Path(f"{path}.wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_max_age_applies_to_the_projection(nc, js, config, data_dir):
    # [events] max_age_s: the stream drops old events, and so does DuckDB, rollups included
    config = msgspec.structs.replace(
        config,
        events=msgspec.structs.replace(config.events, max_age_s=1.0),
        # the server wants the duplicate window inside max_age
        bus=msgspec.structs.replace(config.bus, duplicate_window_s=1.0),
    )
    await ensure_topology(js, config)
    async with projecting(nc, config, data_dir) as projector:
        projector.retention_every_s = 0.1
        await fill(js, synthetic_events(600))
        await projector.wait_caught_up()

        async def counts() -> tuple[int, int]:
            return await projector.store.read(
                lambda cur: cur.execute(
                    "SELECT (SELECT count(*) FROM bus_events), "
                    "(SELECT coalesce(sum(events), 0) FROM rollup_total_events)"
                ).fetchone()
            )

        assert await counts() in ((600, 0), (600, 600))  # the tail may not be folded yet

        async def aged_out() -> bool:
            info = await js.stream_info("EVENTS")
            return info.state.messages == 0 and await counts() == (0, 0)

        await wait_until(aged_out, 20, "events aged out of the stream and the projection")
        assert projector.stats()["streams"]["EVENTS"]["pruned"] == 600


async def test_projection_size_stays_bounded_under_a_stream_of_events(nc, js, config, data_dir):
    # retention keeps the newest `kept` events (as max_age does, without waiting for it):
    # the row count follows the stream's exactly and the file stops growing
    kept, per_round, rounds = 4000, 2000, 14
    events = synthetic_events(per_round * rounds)
    sizes = []
    async with projecting(nc, config, data_dir) as projector:
        projector.retention_every_s = 0.1
        for r in range(rounds):
            await fill(js, events[r * per_round : (r + 1) * per_round])
            await js.purge_stream("EVENTS", keep=kept)
            await projector.wait_caught_up(timeout=60)
            state = (await js.stream_info("EVENTS")).state
            target = (state.messages, state.first_seq)

            async def mirrored(target: tuple[int, int] = target) -> bool:
                row = await projector.store.read(
                    lambda cur: cur.execute("SELECT count(*), min(seq) FROM bus_events").fetchone()
                )
                return row == target

            await wait_until(mirrored, 20, f"round {r}: the projection holds what the stream holds")
            # what the automatic one does at 64 MB of WAL, now; it fails if a reader's result
            # still pins a transaction (ProjectionStore.reader)
            await projector.store.write(lambda: projector.store.con.execute("CHECKPOINT"))
            sizes.append(await asyncio.to_thread(_file_bytes, projector.path))
        totals = await projector.store.read(
            lambda cur: cur.execute(
                "SELECT (SELECT sum(events) FROM rollup_total_events) "
                "+ (SELECT count(*) FROM bus_events WHERE seq > "
                "(SELECT folded_seq FROM rollup_state))"
            ).fetchone()
        )
    assert totals == (kept,)  # the rollups (plus their unfolded tail) follow retention too
    # 28,000 events went through, 4,000 stay: once the freed blocks are reused (by the
    # fourth round) the file stops growing
    assert max(sizes[6:]) <= 1.1 * max(sizes[3:6]), sizes


# -- metrics API -------------------------------------------------------------------------


async def test_latency_api_percentiles_match_the_raw_events(nats_server, nc, js, config, data_dir):
    reader = await workload(nats_server, js, config)
    async with projecting(nc, config, data_dir) as projector:
        await projector.wait_caught_up()
        app = app_for(nc, js, config, data_dir, projector=projector)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cogo") as client:
            response = await client.get("/api/metrics/bus/latency", params={"window": "15m"})
            filtered = await client.get("/api/metrics/bus/latency", params={"route": "nope.run.0", "window": "all"})
            series = await client.get("/api/metrics/bus/latency", params={"bucket": "1m"})
            bad = await client.get(
                "/api/metrics/bus/latency",
                params={"window": "15 minutes", "bucket": "0s", "x": "1"},
            )
            metrics = await client.get("/metrics")
    assert response.status_code == 200, response.text
    body = response.json()
    echo = next(r for r in body["routes"] if r["route"] == "echo.run.0")
    attempts = [e for e in reader.events if e.type in RESULT_TYPES and e.duration_ms is not None]
    assert echo["count"] == len(attempts) > 20
    for key in ("queue_wait_ms", "duration_ms"):
        values = [getattr(e, key) for e in attempts]
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            # histogram percentiles: within the stated relative error of the exact ones
            exact = quantile(values, q)
            assert echo[key][label] == pytest.approx(exact, rel=histogram.RELATIVE_ERROR, abs=histogram.FLOOR_MS), (
                key,
                label,
            )
    assert echo["failures"] == sum(e.type == "execute_failed" for e in reader.events if e.route == "echo.run.0")
    assert echo["retries"] == sum(e.type == "execute_retry" for e in reader.events) >= 4
    assert echo["done"] == sum(e.type == "execute_done" for e in reader.events)
    assert filtered.json()["routes"] == []
    assert series.status_code == 200 and series.json()["series"]
    assert sum(s["count"] for s in series.json()["series"]) == echo["count"]
    assert bad.status_code == 422
    locs = {tuple(d["loc"]) for d in bad.json()["detail"]}
    assert locs == {("query", "window"), ("query", "bucket"), ("query", "x")}

    assert metrics.status_code == 200
    text = metrics.text
    done = sum(e.type == "execute_done" for e in reader.events)
    assert f'cogo_events_total{{type="execute_done",route="echo.run.0"}} {done}' in text
    assert 'cogo_projector_lag_messages{stream="EVENTS"} 0' in text
    assert 'cogo_route_in_flight{route="echo.run.0"} 0' in text
    assert "# TYPE cogo_attempt_duration_seconds summary" in text


async def test_latency_api_without_projector_is_503(nc, js, config, data_dir):
    app = app_for(nc, js, config, data_dir)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as c:
        response = await c.get("/api/metrics/bus/latency")
        metrics = await c.get("/metrics")
    assert response.status_code == 503
    assert metrics.status_code == 200 and "cogo_route_pending" in metrics.text


async def test_replay_over_http_streams_progress(nats_server, nc, js, config, data_dir):
    await fill(js, synthetic_events(3000))
    async with projecting(nc, config, data_dir, batch=500) as projector:
        await projector.wait_caught_up()
        app = app_for(nc, js, config, data_dir, projector=projector)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cogo") as client:
            response = await client.post("/api/projections/replay")
            status = await client.get("/api/projections/status")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["messages"]["EVENTS"] == 3000
    assert any("progress" in line for line in lines)
    assert status.json()["streams"]["EVENTS"]["applied_seq"] == 3000
