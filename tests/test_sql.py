"""Ad-hoc SQL: the sandbox on a real DuckDB file, ``POST /api/sql``, and ``cogo sql`` /
``cogo replay`` against a real ``cogo up``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cogo.bench.projections import fill, synthetic_events
from cogo.errors import SqlInvalid, SqlRejected, SqlTimeout
from cogo.http.app import create_app
from cogo.http.sql import routes as sql_routes
from cogo.http.state import AppState
from cogo.projections.projector import Projector, consumer_name
from cogo.projections.sandbox import run_query
from cogo.projections.store import ProjectionStore
from cogo.streams.connection import connect
from cogo.streams.policies import PolicyStore
from tests.helpers import SUITE_CONFIG, submit
from tests.upsystem import cogo_run, cogo_up, stop


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProjectionStore]:
    store = ProjectionStore(tmp_path / "cogo.duckdb")
    store.open_sync()
    store.con.execute(
        "INSERT INTO bus_events (seq, event_id, type, raw) "
        "SELECT i, 'e' || i, 'execute_done', '{}' FROM range(1, 101) r(i)"
    )
    try:
        yield store
    finally:
        store.close_sync()
        store.shutdown()


def query(store: ProjectionStore, sql: str, **options: Any) -> Any:
    with store.reader() as cursor:
        return run_query(cursor, sql, **options)


ESCAPES = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_json('http://127.0.0.1:9/x.json')",
    "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    "COPY bus_events TO '{tmp}/out.csv'",
    "COPY (SELECT 1) TO '{tmp}/out.csv'",
    "EXPORT DATABASE '{tmp}/export'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "ATTACH ':memory:' AS mem",
    "DETACH cogo",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET VARIABLE x = 1",
    "USE memory",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "CHECKPOINT",
    "VACUUM",
    "CREATE TABLE stolen AS SELECT 1",
    "CREATE VIEW v AS SELECT 1",
    "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "DROP TABLE bus_events",
    "ALTER TABLE bus_events ADD COLUMN x INT",
    "INSERT INTO bus_events (seq) VALUES (1000)",
    "UPDATE bus_events SET type = 'x'",
    "DELETE FROM bus_events",
    "WITH gone AS (DELETE FROM bus_events RETURNING *) SELECT count(*) FROM gone",
    "SELECT 1; DROP TABLE bus_events",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{tmp}/out.csv'",
    "BEGIN TRANSACTION",
    "PREPARE p AS SELECT 1",
    "SELECT * FROM query('COPY (SELECT 1) TO ''{tmp}/q.csv''')",
]


@pytest.mark.parametrize("sql", ESCAPES)
def test_sandbox_rejects_escapes(store, tmp_path, sql):
    with pytest.raises((SqlRejected, SqlInvalid)) as caught:
        query(store, sql.format(tmp=tmp_path))
    assert str(caught.value)
    # nothing changed, nothing written
    assert query(store, "SELECT count(*) FROM bus_events").rows == [[100]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cogo.duckdb", "cogo.duckdb.wal"] or (
        sorted(p.name for p in tmp_path.iterdir()) == ["cogo.duckdb"]
    )


def test_sandbox_messages_say_why(store):
    with pytest.raises(SqlRejected, match="file, network and extension access is disabled"):
        query(store, "SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(SqlRejected, match="only read-only queries.*not COPY"):
        query(store, "COPY bus_events TO 'x.csv'")
    with pytest.raises(SqlRejected, match="one statement at a time"):
        query(store, "SELECT 1; SELECT 2")
    with pytest.raises(SqlRejected, match="read-only"):
        query(store, "WITH d AS (DELETE FROM bus_events RETURNING *) SELECT * FROM d")
    with pytest.raises(SqlInvalid, match='write "at"'):
        query(store, "SELECT max(at) FROM bus_events")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT sum(i) FROM range(1000000000000) r(i)",
        "SELECT count(*) FROM range(1000000) a, range(1000000) b",
    ],
)
def test_sandbox_interrupts_runaway_queries(store, sql):
    # both run for many seconds (the first for hours) unless interrupted: SqlTimeout is
    # raised only by the interrupt
    with pytest.raises(SqlTimeout, match="time limit of 0.5s"):
        query(store, sql, timeout_s=0.5)
    assert query(store, "SELECT 42").rows == [[42]]  # the cursor is still usable


def test_sandbox_reads_caps_rows_and_converts_values(store):
    result = query(store, "SELECT seq FROM bus_events ORDER BY seq", max_rows=10)
    assert result.rows == [[i] for i in range(1, 11)] and result.truncated
    full = query(store, "WITH x AS (SELECT count(*) AS n FROM bus_events) SELECT n FROM x")
    assert full.rows == [[100]] and not full.truncated
    values = query(
        store,
        "SELECT TIMESTAMP '2026-01-02 03:04:05.5' AS t, TIMESTAMPTZ '2026-01-02 03:04:05+00' AS tz,"
        " 1.25::DECIMAL(5,2) AS d, [1, 2] AS l, {'k': 'v'} AS s, 'x'::BLOB AS b, 'nan'::DOUBLE AS n",
    )
    assert values.columns == ["t", "tz", "d", "l", "s", "b", "n"]
    t, tz, d, lst, struct, blob, nan = values.rows[0]
    assert t == "2026-01-02T03:04:05.500000" and tz.startswith("2026-01-02 03:04:05")
    assert (d, lst, struct, blob, nan) == (1.25, [1, 2], {"k": "v"}, "eA==", None)
    assert query(store, "EXPLAIN SELECT * FROM bus_events").columns == [
        "explain_key",
        "explain_value",
    ]
    assert query(store, "FROM task_latency LIMIT 1").columns[0] == "task_id"


# -- POST /api/sql ---------------------------------------------------------------------


async def test_http_sql(nc, js, config, data_dir):
    await fill(js, synthetic_events(50))
    projector = Projector(nc, config, data_dir=data_dir)
    await projector.start()
    try:
        await projector.wait_caught_up()
        state = AppState(nc=nc, config=config, policies=PolicyStore(js), data_dir=data_dir, api_token="t0k")
        state.projector = projector
        app = create_app(state, extra_routes=sql_routes)
        auth = {"Authorization": "Bearer t0k"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cogo") as client:
            ok = await client.post(
                "/api/sql",
                json={"sql": "SELECT type, count(*) AS n FROM bus_events GROUP BY type ORDER BY 1"},
                headers=auth,
            )
            escape = await client.post("/api/sql", json={"sql": "SELECT * FROM read_csv('/etc/passwd')"}, headers=auth)
            ddl = await client.post("/api/sql", json={"sql": "DROP TABLE bus_events"}, headers=auth)
            slow = await client.post(
                "/api/sql",
                json={"sql": "SELECT sum(i) FROM range(1000000000000) r(i)", "timeout_s": 0.3},
                headers=auth,
            )
            invalid = await client.post("/api/sql", json={"sql": "SELEC 1", "max_rows": 0, "extra": 1}, headers=auth)
            not_json = await client.post("/api/sql", content=b"{", headers=auth)
            anonymous = await client.post("/api/sql", json={"sql": "SELECT 1"})
    finally:
        await projector.stop()
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["columns"] == ["type", "n"]
    assert sum(n for _, n in body["rows"]) == 50
    assert escape.status_code == 400 and escape.json()["code"] == "sql.rejected"
    assert "disabled" in escape.json()["detail"]
    assert ddl.status_code == 400 and ddl.json()["code"] == "sql.rejected"
    assert slow.status_code == 400 and slow.json()["code"] == "sql.timeout"
    assert invalid.status_code == 422
    assert {tuple(d["loc"]) for d in invalid.json()["detail"]} == {
        ("body", "max_rows"),
        ("body", "extra"),
    }
    assert not_json.status_code == 400
    assert anonymous.status_code == 401


# -- the CLI against a running `cogo up` ------------------------------------------------


def _cogo(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cogo", *args], capture_output=True, text=True, timeout=timeout)


async def test_cli_sql_and_replay_through_running_cogo_up(tmp_path):
    data_dir = tmp_path / "up"
    data_dir.mkdir()
    (data_dir / "cogo.toml").write_text(SUITE_CONFIG)
    # an empty COGO_API_TOKEN makes `cogo up` generate one: the CLI must send it
    up, endpoints = await cogo_up(data_dir, env={"COGO_API_TOKEN": ""})
    try:
        nc = await connect(endpoints["nats_url"], "test-cli")
        try:
            js = nc.jetstream()
            for i in range(5):
                await submit(js, payload={"result": i, "tokens": 3})
        finally:
            await nc.close()
        count_sql = "SELECT count(*) AS done FROM bus_events WHERE type = 'execute_done'"
        deadline = time.monotonic() + 20
        while True:
            run = await asyncio.to_thread(_cogo, "sql", count_sql, "--json", "--data-dir", str(data_dir))
            assert run.returncode == 0, run.stderr
            result = json.loads(run.stdout)
            if result["rows"] == [[5]]:
                break
            assert time.monotonic() < deadline, result
            await asyncio.sleep(0.3)
        assert result["columns"] == ["done"]

        rejected = await asyncio.to_thread(_cogo, "sql", "COPY bus_events TO '/tmp/x.csv'", "--data-dir", str(data_dir))
        assert rejected.returncode == 2 and "[sql.rejected]" in rejected.stderr

        table = await asyncio.to_thread(
            _cogo,
            "sql",
            "SELECT type, count(*) FROM bus_events GROUP BY 1",
            "--data-dir",
            str(data_dir),
        )
        assert table.returncode == 0 and "execute_done" in table.stdout

        replay = await asyncio.to_thread(_cogo, "replay", "--json", "--data-dir", str(data_dir))
        assert replay.returncode == 0, replay.stderr
        replayed = json.loads(replay.stdout)
        assert replayed["messages"]["EVENTS"] >= 10 and replayed["path"].endswith("cogo.duckdb")
        assert "through the running instance" in replay.stderr
        again = await asyncio.to_thread(_cogo, "sql", count_sql, "--json", "--data-dir", str(data_dir))
        assert json.loads(again.stdout)["rows"] == [[5]]
    finally:
        await asyncio.to_thread(stop, up)
    # stopped: the CLI opens the file read-only itself
    offline = await asyncio.to_thread(_cogo, "sql", count_sql, "--json", "--data-dir", str(data_dir))
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["rows"] == [[5]]


async def test_cli_replay_offline_and_refusal(nats_server, js, tmp_path):
    await fill(js, synthetic_events(300))
    data_dir = tmp_path / "offline"
    args = ["--nats-url", nats_server.url, "--data-dir", str(data_dir)]
    replay = await asyncio.to_thread(_cogo, "replay", "--json", *args)
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["messages"] == {"EVENTS": 300, "DLQ": 0}
    count = await asyncio.to_thread(_cogo, "sql", "SELECT count(DISTINCT seq) FROM bus_events", "--json", *args)
    assert json.loads(count.stdout)["rows"] == [[300]]

    projector = cogo_run("projector", nats_server.url, "--data-dir", str(data_dir), log=data_dir / "projector.log")
    try:
        # the projector holds the file once its consumer exists (it opens the file first);
        # replaying meanwhile would itself hold the file and make the projector give up
        deadline = time.monotonic() + 60  # a loaded machine starts a process slowly
        while True:
            try:
                await js.consumer_info("EVENTS", consumer_name(data_dir))
                break
            except Exception:
                assert projector.poll() is None and time.monotonic() < deadline
                await asyncio.sleep(0.1)
        busy = await asyncio.to_thread(_cogo, "replay", *args)
        assert busy.returncode == 2 and "[projection.busy]" in busy.stderr
        assert "in use by another process" in busy.stderr
    finally:
        projector.send_signal(signal.SIGTERM)
        await asyncio.to_thread(projector.wait, 15)


# -- limits (issue 14, items 1 and 2) ----------------------------------------------------

HEAVY = "SELECT sum(a.range * b.range) FROM range(30000) a, range(30000) b"


@pytest.mark.parametrize("timeout_s", [1e-6, 1e-3])
def test_time_limit_holds_when_it_passes_before_the_query_starts(store, timeout_s):
    # the limit passes while the query is still being bound: one interrupt() would be lost
    for _ in range(3):
        with pytest.raises(SqlTimeout):
            query(store, HEAVY, timeout_s=timeout_s)
    assert query(store, "SELECT 42").rows == [[42]]


SIDE_EFFECTS = [
    "SELECT * FROM checkpoint()",
    "SELECT * FROM force_checkpoint()",
    "SELECT (SELECT count(*) FROM main.checkpoint())",
    'SELECT * FROM "checkpoint"()',
    "EXPLAIN SELECT * FROM checkpoint()",
    "SELECT * FROM query('SELECT * FROM checkpoint()')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    "SELECT * FROM truncate_duckdb_logs()",
    "SELECT * FROM arrow_scan(1, 2, 3)",
    "SELECT setseed(0.5)",
    "SELECT write_log('x')",
    "SELECT sleep_ms(60000)",
    "SELECT * FROM (PIVOT (SELECT 1 AS a) ON a)",
]


@pytest.mark.parametrize("sql", SIDE_EFFECTS)
def test_functions_with_side_effects_are_refused(store, tmp_path, sql):
    wal = tmp_path / "cogo.duckdb.wal"
    store.con.execute("INSERT INTO bus_events (seq, type, raw) VALUES (1000, 'x', '{}')")
    before = wal.stat().st_size
    with pytest.raises(SqlRejected, match="not allowed|side effects|read-only|cannot be checked"):
        query(store, sql)
    assert wal.stat().st_size == before  # no checkpoint folded the WAL into the file


def test_read_only_functions_still_work(store):
    assert query(store, "SELECT count(*) FROM range(10)").rows == [[10]]
    assert query(store, "SHOW TABLES").rows
    assert query(store, "DESCRIBE bus_events").rows
    assert query(store, "SELECT count(*) > 0 FROM duckdb_settings()").rows == [[True]]


def test_answer_is_cut_at_max_bytes(store):
    huge = query(store, "SELECT repeat('x', 100000000)", max_bytes=1024 * 1024)
    assert huge.rows == [] and huge.truncated and huge.truncated_by == "max_bytes"
    many = query(store, "SELECT repeat('x', 1000) FROM range(5000)", max_bytes=100_000)
    assert 90 <= len(many.rows) < 100 and many.truncated_by == "max_bytes"
    rows = query(store, "SELECT * FROM range(20)", max_rows=5)
    assert rows.truncated_by == "max_rows" and len(rows.rows) == 5
    assert query(store, "SELECT 1").truncated_by is None


def test_memory_limit_and_threads_come_from_the_config(tmp_path):
    from cogo.config import DuckdbConfig

    limits = DuckdbConfig(memory_limit="64MB", threads=1, max_temp_directory_size="0KB")
    small = ProjectionStore(tmp_path / "small.duckdb", limits=limits)
    small.open_sync()
    try:
        settings = query(small, "SELECT current_setting('memory_limit'), current_setting('threads')")
        assert settings.rows == [["61.0 MiB", 1]]
        with pytest.raises(SqlRejected, match="more memory than allowed"):
            query(small, "SELECT count(DISTINCT range::VARCHAR) FROM range(20000000)")
        assert query(small, "SELECT 1").rows == [[1]]
    finally:
        small.close_sync()
        small.shutdown()
