"""The projector against a real nats-server and real DuckDB files.

Events come from the real dispatcher and echo actor (in-process), or, for volume, from
synthetic events shaped like theirs appended straight to EVENTS.
"""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

from cogo.bench.projections import fill, synthetic_events
from cogo.projections import histogram
from cogo.projections import store as store_module
from cogo.projections.store import schema_files
from tests.helpers import projecting
from tests.projection_support import RESULT_TYPES, app_for, dead_letter, quantile, workload

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
