"""Rollups: per-minute (and per-hour, and all-time) aggregates of ``bus_events``, kept exact.

The dashboard, ``/api/metrics/*`` and ``/metrics`` read these instead of scanning the
events in their window, so they cost about the same with millions of events as with
thousands (docs/design.md §15). Every table is a pure function of ``bus_events``: every measure is
a count, an exact DECIMAL sum or a histogram bin count (``cogo.projections.histogram``),
all associative, so rows folded in batch by batch give what one pass would (a replay
builds identical tables), and rows retention deletes are subtracted exactly
(``subtract_sync``, in the transaction that deletes them).

When: ``workflow_runs`` is folded in the transaction that inserts the rows and moves the
checkpoint. The aggregate tables hold the rows up to ``rollup_state.folded_seq``, which is
moved in the same transaction as what it covers; the rows after it (``FOLD_ROWS`` at most,
normally the last ``projector.FOLD_EVERY_S`` seconds) are computed from ``bus_events`` by
every reader (``cogo.projections.windows``), inside one read transaction. So no reader
ever sees a count that disagrees with ``bus_events``, a crash loses or doubles nothing,
and the cost of the aggregates (about 50 ms of DuckDB work per fold, whatever its size:
six MERGE statements) is paid once per fold instead of once per batch. Folding in every
batch's transaction cost 25-30 ms a batch, 7x the insert itself for the small batches a
steady trickle brings.

Tables (``cogo sql`` can read them; ``''`` stands for NULL in key columns; add the rows of
``bus_events`` after ``rollup_state.folded_seq`` for the latest second or two):

- ``rollup_{minute,hour,total}_events``: per bucket and (type, route, version, cohort,
  error_code): ``events``; ``first_attempts`` (``execute_enqueued`` of attempt 1: tasks);
  ``measured`` (worker results with a duration: attempts) and the sums of their
  ``queue_wait_ms`` / ``duration_ms``; ``dispatch_wait_ms`` (sum over ``execute_enqueued``);
  ``accepted`` (``execute_done`` whose result verdict is absent or ``pass``); usage sums.
- ``rollup_{minute,hour,total}_latency``: per bucket, metric (``queue_wait``, ``duration``,
  ``dispatch_wait``) and route, the count of values in each histogram bin.
- ``rollup_run_tasks`` (per minute): ``execute_done`` with an accepted verdict of tasks in a
  workflow run (correlation id != task id), per run, route, version and cohort; with
  ``rollup_gate_failures`` (``gate_failed`` events per correlation id) it turns a failed
  gate into "not accepted" for the dashboard, whichever of the two came first.
- ``workflow_runs``: one row per workflow run (start, outcome, gates, artifacts), for the
  recent-runs lists and ``/api/metrics/workflows/{id}``; readers list the runs whose
  ``workflow_started`` is still projected. Its rows are the Python fold of each run
  (``cogo.projections.runs``), the one ``/api/orchestrator/state`` answers from.

Semantics the rollups fix (the SQL they replaced agreed on every real stream): a task
counts where its terminal event falls, with that event's route, version and cohort;
``tasks`` counts first attempts enqueued in the window (not distinct ids).

Retention: the rollups follow ``bus_events`` (which follows the EVENTS stream), so they
hold exactly what a replay of the stream would build.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import duckdb

from cogo.projections import runs
from cogo.projections.histogram import bin_sql
from cogo.streams.catalogue import (
    EXECUTE_DONE,
    EXECUTE_FAILED,
    EXECUTE_RETRY,
)
from cogo.workflows.record import RECORD_TYPES

VERSION = 3  # bump when a definition below changes: the tables are rebuilt on open
# The rollup tables hold the rows up to rollup_state.folded_seq; readers add the few after
# it from bus_events (cogo.projections.windows). A batch's transaction folds them in once
# there are FOLD_ROWS of them; the projector folds a smaller tail every couple of seconds
# (cogo.projections.projector.FOLD_EVERY_S) and when it goes idle.
FOLD_ROWS = 100_000
GRAINS = ("minute", "hour", "total")
EPOCH = dt.datetime(1970, 1, 1)  # the bucket of "total", and of events without a valid "at"
RESULT_TYPES = (EXECUTE_DONE, EXECUTE_RETRY, EXECUTE_FAILED)


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


_RESULTS = _in(RESULT_TYPES)
_EVENT_KEYS = ("type", "route", "version", "cohort", "error_code")
_EVENT_MEASURES = (
    ("events", "BIGINT"),
    ("first_attempts", "BIGINT"),
    ("measured", "BIGINT"),
    ("accepted", "BIGINT"),
    ("queue_wait_ms", "DECIMAL(38,6)"),
    ("duration_ms", "DECIMAL(38,6)"),
    ("dispatch_wait_ms", "DECIMAL(38,6)"),
    ("tokens", "HUGEINT"),
    ("cost_usd", "DECIMAL(38,12)"),
    ("usage_duration_ms", "DECIMAL(38,6)"),
)
_LATENCY_KEYS = ("metric", "key", "bin")


@dataclass(frozen=True)
class Family:
    """One rollup kept at each grain: its key columns and summed measures."""

    name: str
    keys: tuple[str, ...]
    measures: tuple[tuple[str, str], ...]

    def table(self, grain: str) -> str:
        return f"rollup_{grain}_{self.name}"

    def ddl(self, grain: str) -> str:
        key_types = {"bin": "SMALLINT"}
        columns = ["bucket TIMESTAMP NOT NULL"]
        columns += [f"{k} {key_types.get(k, 'VARCHAR')} NOT NULL" for k in self.keys]
        columns += [f"{m} {t} NOT NULL DEFAULT 0" for m, t in self.measures]
        return f"CREATE TABLE IF NOT EXISTS {self.table(grain)} ({', '.join(columns)})"


EVENTS = Family("events", _EVENT_KEYS, _EVENT_MEASURES)
LATENCY = Family("latency", _LATENCY_KEYS, (("n", "BIGINT"),))
FAMILIES = (EVENTS, LATENCY)

MINUTE_BUCKET = "date_trunc('minute', \"at\")"
# The columns the aggregates read, from the rows of bus_events that match {where};
# {bucket} is the rollups' minute, or another bucket for a series read from the events.
SOURCE = f"""
SELECT seq, "at", type, task_id, correlation_id, route, attempt, queue_wait_ms, duration_ms,
       error_code, version, cohort, tokens, cost_usd, usage_duration_ms,
       coalesce({{bucket}}, TIMESTAMP '1970-01-01') AS minute,
       type IN {_RESULTS} AND duration_ms IS NOT NULL AS measured,
       type = 'execute_done'
           AND coalesce(raw->>'$.data.result.verdict', 'pass') = 'pass' AS verdict_ok
FROM bus_events WHERE {{where}}
"""

# Both read {src} (SOURCE, or a table of it) and multiply every measure by {sign}.
# Sums go through DECIMAL so they are exact and order-free; a value too large for it
# (|v| > 1e31) is left out of the sum rather than failing the batch.
EVENTS_DELTA = """
SELECT minute AS bucket, coalesce(type, '') AS type, coalesce(route, '') AS route,
       coalesce(version, '') AS version, coalesce(cohort, '') AS cohort,
       coalesce(error_code, '') AS error_code,
       {sign} * count(*) AS events,
       {sign} * count(*) FILTER (type = 'execute_enqueued' AND attempt = 1) AS first_attempts,
       {sign} * count(*) FILTER (measured) AS measured,
       {sign} * count(*) FILTER (verdict_ok) AS accepted,
       {sign} * coalesce(sum(TRY_CAST(queue_wait_ms AS DECIMAL(38,6))) FILTER (measured), 0)
           AS queue_wait_ms,
       {sign} * coalesce(sum(TRY_CAST(duration_ms AS DECIMAL(38,6))) FILTER (measured), 0)
           AS duration_ms,
       {sign} * coalesce(sum(TRY_CAST(queue_wait_ms AS DECIMAL(38,6)))
                         FILTER (type = 'execute_enqueued'), 0) AS dispatch_wait_ms,
       {sign} * coalesce(sum(tokens::HUGEINT), 0) AS tokens,
       {sign} * coalesce(sum(TRY_CAST(cost_usd AS DECIMAL(38,12))), 0) AS cost_usd,
       {sign} * coalesce(sum(TRY_CAST(usage_duration_ms AS DECIMAL(38,6))), 0)
           AS usage_duration_ms
FROM {src}
GROUP BY ALL
"""

LATENCY_DELTA = f"""
SELECT minute AS bucket, metric, coalesce(route, '') AS key, {bin_sql("v")} AS bin,
       {{sign}} * count(*) AS n
FROM (
    SELECT minute, route, 'queue_wait' AS metric, queue_wait_ms AS v FROM {{src}}
    WHERE measured AND queue_wait_ms IS NOT NULL
    UNION ALL
    SELECT minute, route, 'duration', duration_ms FROM {{src}} WHERE measured
    UNION ALL
    SELECT minute, route, 'dispatch_wait', queue_wait_ms FROM {{src}}
    WHERE type = 'execute_enqueued' AND queue_wait_ms IS NOT NULL
)
GROUP BY ALL
"""

RUN_TASKS_DELTA = """
SELECT minute AS bucket, correlation_id, coalesce(route, '') AS route,
       coalesce(version, '') AS version, coalesce(cohort, '') AS cohort,
       {sign} * count(*) AS done_ok
FROM {src}
WHERE verdict_ok AND correlation_id IS NOT NULL AND correlation_id <> coalesce(task_id, '')
GROUP BY ALL
"""

TABLES = f"""
CREATE TABLE IF NOT EXISTS rollup_meta (name VARCHAR PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rollup_state (folded_seq BIGINT NOT NULL);
INSERT INTO rollup_state SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM rollup_state);
CREATE TABLE IF NOT EXISTS rollup_run_tasks (
    bucket TIMESTAMP NOT NULL, correlation_id VARCHAR NOT NULL, route VARCHAR NOT NULL,
    version VARCHAR NOT NULL, cohort VARCHAR NOT NULL, done_ok BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollup_gate_failures (
    correlation_id VARCHAR PRIMARY KEY, gate_failures BIGINT NOT NULL
);
{runs.TABLE};
{";".join(f.ddl(g) for f in FAMILIES for g in GRAINS)};
"""

_DROP = [f.table(g) for f in FAMILIES for g in GRAINS] + [
    "rollup_run_tasks",
    "rollup_gate_failures",
    "workflow_runs",
    "rollup_state",
]


def ensure_sync(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables (in the caller's transaction); rebuild them from ``bus_events`` if
    they are new to this file or were defined differently (``VERSION``)."""
    con.execute("CREATE TABLE IF NOT EXISTS rollup_meta (name VARCHAR PRIMARY KEY, version INTEGER NOT NULL)")
    row = con.execute("SELECT version FROM rollup_meta WHERE name = 'rollups'").fetchone()
    if row is not None and row[0] == VERSION:
        con.execute(TABLES)
        return
    for table in _DROP:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(TABLES)
    runs.fold_sync(con, "TRUE")
    fold_sync(con)
    con.execute(
        "INSERT INTO rollup_meta VALUES ('rollups', ?) ON CONFLICT (name) DO UPDATE SET version = excluded.version",
        [VERSION],
    )


def folded_seq_sync(con: duckdb.DuckDBPyConnection) -> int:
    """The last ``bus_events`` sequence the rollup tables hold."""
    row = con.execute("SELECT folded_seq FROM rollup_state").fetchone()
    return int(row[0]) if row else 0


def fold_sync(con: duckdb.DuckDBPyConnection, upto: int | None = None) -> int:
    """Fold the rows after the folded sequence (up to ``upto``) into the rollup tables, in
    the caller's transaction; the number of sequences folded."""
    folded = folded_seq_sync(con)
    if upto is None:
        row = con.execute("SELECT max(seq) FROM bus_events WHERE seq > ?", [folded]).fetchone()
        upto = int(row[0]) if row and row[0] is not None else folded
    if upto <= folded:
        return 0
    _add(con, "seq > $1 AND seq <= $2", sign=1, params=[folded, upto])
    con.execute("UPDATE rollup_state SET folded_seq = ?", [upto])
    return upto - folded


def ingest_sync(con: duckdb.DuckDBPyConnection, after_seq: int, last_seq: int) -> None:
    """After a batch (``after_seq`` < seq <= ``last_seq``) was inserted, in its transaction:
    fold its workflow events into ``workflow_runs``, and the unfolded rows into the rollup
    tables once there are ``FOLD_ROWS`` of them."""
    runs.fold_sync(con, "seq > $1", [after_seq])
    if last_seq - folded_seq_sync(con) >= FOLD_ROWS:
        fold_sync(con, last_seq)


def _add(con: duckdb.DuckDBPyConnection, where: str, *, sign: int, params: list[Any] | None = None) -> None:
    """Add (``sign`` 1) or take out (-1) the rows of ``bus_events`` matching ``where``, in
    every rollup table but ``workflow_runs``."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE rollup_src AS " + SOURCE.format(where=where, bucket=MINUTE_BUCKET),
        params or [],
    )
    row = con.execute(
        "SELECT min(minute), count(*) FILTER (type = 'gate_failed' AND correlation_id IS NOT NULL), "
        "count(*) FILTER (verdict_ok AND correlation_id <> coalesce(task_id, '')) FROM rollup_src"
    ).fetchone()
    oldest, gate_failures, run_tasks = row if row else (None, 0, 0)
    if oldest is not None:
        for family, delta in ((EVENTS, EVENTS_DELTA), (LATENCY, LATENCY_DELTA)):
            con.execute("CREATE OR REPLACE TEMP TABLE rollup_delta AS " + delta.format(src="rollup_src", sign=sign))
            for grain in GRAINS:
                _merge(con, family, grain, oldest)
    if run_tasks:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE rollup_delta AS " + RUN_TASKS_DELTA.format(src="rollup_src", sign=sign)
        )
        con.execute(
            """
            MERGE INTO rollup_run_tasks t USING rollup_delta d
            ON t.bucket = d.bucket AND t.correlation_id = d.correlation_id AND t.route = d.route
               AND t.version = d.version AND t.cohort = d.cohort AND t.bucket >= $oldest
            WHEN MATCHED THEN UPDATE SET done_ok = t.done_ok + d.done_ok
            WHEN NOT MATCHED THEN INSERT (bucket, correlation_id, route, version, cohort, done_ok)
                VALUES (d.bucket, d.correlation_id, d.route, d.version, d.cohort, d.done_ok)
            """,
            {"oldest": oldest},
        )
    if gate_failures:
        con.execute(
            f"""
            INSERT INTO rollup_gate_failures
            SELECT correlation_id, {sign} * count(*) FROM rollup_src
            WHERE type = 'gate_failed' AND correlation_id IS NOT NULL GROUP BY ALL
            ON CONFLICT (correlation_id) DO UPDATE
                SET gate_failures = gate_failures + excluded.gate_failures
            """
        )
    con.execute("DROP TABLE IF EXISTS rollup_delta")
    con.execute("DROP TABLE rollup_src")


def _merge(con: duckdb.DuckDBPyConnection, family: Family, grain: str, oldest: dt.datetime) -> None:
    """Add ``rollup_delta`` (minute buckets) into one grain's table."""
    bucket = {"minute": "bucket", "hour": "date_trunc('hour', bucket)", "total": "TIMESTAMP '1970-01-01'"}[grain]
    keys = ", ".join(family.keys)
    sums = ", ".join(f"sum({m})::{t} AS {m}" for m, t in family.measures)
    on = " AND ".join(f"t.{k} = d.{k}" for k in ("bucket", *family.keys))
    add = ", ".join(f"{m} = t.{m} + d.{m}" for m, _ in family.measures)
    columns = ("bucket", *family.keys, *(m for m, _ in family.measures))
    floor = {"minute": oldest, "hour": oldest.replace(minute=0, second=0, microsecond=0), "total": EPOCH}[grain]
    # the last condition is true of every row in the delta: it lets the scan of the table
    # skip the row groups of older buckets (zone maps), so a merge costs the delta, not
    # the table
    con.execute(
        f"""
        MERGE INTO {family.table(grain)} t
        USING (SELECT {bucket} AS bucket, {keys}, {sums} FROM rollup_delta GROUP BY ALL) d
        ON {on} AND t.bucket >= $floor
        WHEN MATCHED THEN UPDATE SET {add}
        WHEN NOT MATCHED THEN INSERT ({", ".join(columns)})
            VALUES ({", ".join(f"d.{c}" for c in columns)})
        """,
        {"floor": floor},
    )


def subtract_sync(con: duckdb.DuckDBPyConnection, below_seq: int) -> None:
    """Take the rows retention is about to delete (``seq < below_seq``) out of the rollups:
    afterwards they equal rollups built from the rows at or above ``below_seq`` alone."""
    fold_sync(con)  # what is taken out must have been put in
    _add(con, "seq < $1", sign=-1, params=[below_seq])
    for family in FAMILIES:
        zero = " AND ".join(f"{m} = 0" for m, _ in family.measures)
        for grain in GRAINS:
            con.execute(f"DELETE FROM {family.table(grain)} WHERE {zero}")
    con.execute("DELETE FROM rollup_run_tasks WHERE done_ok = 0")
    con.execute("DELETE FROM rollup_gate_failures WHERE gate_failures = 0")
    # runs that lose events: folded again from the events they keep (most lose them all)
    cut = (
        "SELECT DISTINCT correlation_id FROM bus_events WHERE seq < $1 "
        f"AND type IN {_in(RECORD_TYPES)} AND correlation_id IS NOT NULL"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE rollup_cut AS {cut}", [below_seq])
    con.execute("DELETE FROM workflow_runs WHERE run_id IN (SELECT correlation_id FROM rollup_cut)")
    runs.fold_sync(con, "seq >= $1 AND correlation_id IN (SELECT correlation_id FROM rollup_cut)", [below_seq])
    con.execute("DROP TABLE rollup_cut")
