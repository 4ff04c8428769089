"""The rollups against the raw SQL over ``bus_events``, on a real DuckDB file.

A test set of synthetic events over 90 minutes (workflow runs, retries, failures, gates)
plus hand-made awkward ones (no valid ``at``, not JSON, a failing verdict, a gate that
fails before its run's last task finishes, negative and zero waits, no route) goes in
through ``ProjectionStore`` in uneven batches. Every reader that uses the rollups is then
compared with the SQL it replaced (kept here as the reference), over windows that start
mid-minute and mid-hour: counts and sums exactly, percentiles within the histogram's
stated relative error. Retention is checked the strong way: after a prune, every rollup
table equals the one built from the remaining events alone.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cogo.bench.projections import WORKFLOW_ID, synthetic_events
from cogo.http import orchestrator as orchestrator_http
from cogo.http.dashboard import _run_row, summary
from cogo.projections import histogram, queries, rollups, runs, tasks
from cogo.projections.store import EventBatch, ProjectionStore
from cogo.streams.catalogue import RUN_OUTCOMES, WORKFLOW_STARTED
from cogo.streams.events import decode_event
from cogo.workflows.record import RECORD_TYPES
from cogo.workflows.run import RunState

END = time.time()
NOW = dt.datetime.fromtimestamp(END, dt.UTC).replace(tzinfo=None)
WINDOWS = [
    NOW - dt.timedelta(minutes=7, seconds=13.5),
    NOW - dt.timedelta(minutes=61, seconds=0.25),
    NOW - dt.timedelta(minutes=90, seconds=30),
    NOW - dt.timedelta(hours=3),
    None,
]
ERR = {"rel": histogram.RELATIVE_ERROR, "abs": histogram.FLOOR_MS}

# -- the SQL the rollups replaced --------------------------------------------------------

RAW_LATENCY = """
SELECT {group} route,
    count(*) FILTER (measured),
    quantile_cont(queue_wait_ms, [0.5, 0.9, 0.99]) FILTER (measured),
    quantile_cont(duration_ms, [0.5, 0.9, 0.99]) FILTER (measured),
    quantile_cont(queue_wait_ms, [0.5, 0.9, 0.99]) FILTER (type = 'execute_enqueued'),
    count(DISTINCT task_id) FILTER (type = 'execute_enqueued'),
    count(*) FILTER (type = 'execute_done'),
    count(*) FILTER (type = 'execute_failed'),
    count(*) FILTER (type = 'execute_retry')
FROM (
    SELECT *, type IN ('execute_done', 'execute_retry', 'execute_failed')
              AND duration_ms IS NOT NULL AS measured
    FROM bus_events
    WHERE type IN ('execute_enqueued', 'execute_done', 'execute_retry', 'execute_failed')
      AND ($since IS NULL OR "at" >= $since)
)
GROUP BY ALL ORDER BY ALL NULLS FIRST
"""

RAW_TASKS = """
WITH finished AS (
    SELECT task_id FROM bus_events
    WHERE type IN ('execute_done', 'execute_failed') AND "at" >= $since AND task_id IS NOT NULL
), ev AS (
    SELECT b.* FROM bus_events b SEMI JOIN finished f ON b.task_id = f.task_id
    WHERE b.type IN ('execute_enqueued', 'execute_done', 'execute_failed', 'execute_retry')
), rejected AS (
    SELECT DISTINCT correlation_id FROM bus_events
    WHERE type = 'gate_failed' AND correlation_id IS NOT NULL
)
SELECT t.*, (t.done AND coalesce(t.verdict, 'pass') = 'pass' AND r.correlation_id IS NULL)
       AS accepted
FROM (
    SELECT task_id, arg_min(route, seq) AS route,
           coalesce(max(version), 'unversioned') AS version,
           coalesce(max(cohort), 'baseline') AS cohort, max(correlation_id) AS correlation_id,
           bool_or(type = 'execute_done') AS done,
           arg_max(raw->>'$.data.result.verdict', seq) FILTER (type = 'execute_done') AS verdict,
           max("at") FILTER (type IN ('execute_done', 'execute_failed')) AS finished_at,
           arg_max(error_code, seq) FILTER (type = 'execute_failed') AS error_code
    FROM ev GROUP BY task_id
) t LEFT JOIN rejected r ON r.correlation_id = t.correlation_id
"""

RAW_SPLITS = f"""
WITH dash_tasks AS ({RAW_TASKS})
SELECT route, version, cohort, count(*), count(*) FILTER (NOT done), count(*) FILTER (accepted),
       grouping(route, version, cohort)
FROM dash_tasks GROUP BY GROUPING SETS ((), (route), (version), (route, version, cohort))
ORDER BY ALL NULLS FIRST
"""

RAW_MINUTES = f"""
WITH dash_tasks AS ({RAW_TASKS})
SELECT time_bucket(INTERVAL 1 MINUTE, finished_at),
       CASE WHEN done THEN NULL ELSE coalesce(error_code, 'unknown') END,
       count(*) FILTER (done), count(*) FILTER (NOT done)
FROM dash_tasks WHERE finished_at IS NOT NULL GROUP BY ALL ORDER BY ALL NULLS FIRST
"""

RAW_RUNS = """
WITH starts AS (
    SELECT correlation_id AS run_id, min("at") AS started_at,
           any_value(raw->>'$.data.workflow_id') AS workflow_id,
           any_value(raw->>'$.data.parent.runId') AS parent_run_id
    FROM bus_events
    WHERE type = 'workflow_started' AND correlation_id IS NOT NULL
    GROUP BY ALL ORDER BY started_at DESC LIMIT 25
), wf AS (
    SELECT b.correlation_id AS run_id, b.type, b.seq, b."at", b.error, b.raw
    FROM bus_events b SEMI JOIN starts s ON b.correlation_id = s.run_id
    WHERE b.type IN ('workflow_succeeded', 'workflow_failed', 'workflow_cancelled',
                     'gate_passed', 'gate_failed', 'node_succeeded', 'node_failed',
                     'node_skipped', 'node_started')
), kids AS (
    SELECT raw->>'$.data.parent.runId' AS run_id, count(*) AS children
    FROM bus_events
    WHERE type = 'workflow_started' AND raw->>'$.data.parent.runId' IN (SELECT run_id FROM starts)
    GROUP BY 1
)
SELECT s.run_id, s.workflow_id, s.started_at,
       max(w."at") FILTER (w.type LIKE 'workflow_%')                        AS ended_at,
       arg_min(w.type, w.seq) FILTER (w.type LIKE 'workflow_%')             AS outcome,
       arg_min(w.error, w.seq) FILTER (w.type LIKE 'workflow_%')            AS error,
       list(w.raw->>'$.data.node_id' || '=' || (w.raw->>'$.data.verdict') ORDER BY w.seq)
           FILTER (w.type IN ('gate_passed', 'gate_failed'))                AS gates,
       list(coalesce(w.raw->>'$.data.result.artifacts',
                     w.raw->>'$.data.result.data.result.artifacts') ORDER BY w.seq)
           FILTER (w.type IN ('node_succeeded', 'node_failed'))             AS artifacts,
       list(w.raw->>'$.data.node_id' || '=' || (w.raw->>'$.data.name') ORDER BY w.seq)
           FILTER (w.type = 'node_started' AND w.raw->>'$.data.node_type' = 'signal')
                                                                            AS signals,
       list(w.raw->>'$.data.node_id')
           FILTER (w.type IN ('node_succeeded', 'node_failed', 'node_skipped',
                              'gate_passed', 'gate_failed'))                AS over,
       s.parent_run_id, any_value(k.children)                              AS children
FROM starts s LEFT JOIN wf w ON w.run_id = s.run_id LEFT JOIN kids k ON k.run_id = s.run_id
GROUP BY ALL ORDER BY s.started_at DESC
"""

RAW_ATTEMPTS = """
SELECT route, count(*), sum(queue_wait_ms), sum(duration_ms),
       quantile_cont(queue_wait_ms, [0.5, 0.9, 0.99]), quantile_cont(duration_ms, [0.5, 0.9, 0.99])
FROM attempts GROUP BY route ORDER BY route NULLS FIRST
"""

# -- the test set ------------------------------------------------------------------------


def _event(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def awkward_events() -> list[bytes]:
    """Events the synthetic set lacks; each one is a way a rollup could drift from SQL."""
    at = _iso(NOW - dt.timedelta(minutes=30, seconds=5))
    late = _iso(NOW - dt.timedelta(minutes=1))
    later = _iso(NOW - dt.timedelta(seconds=50))
    base = {"route": "echo.run.0", "attempt": 1}
    return [
        b"not json at all",
        b"[1, 2, 3]",
        _event(
            event_id="x1", type="execute_done", at="yesterday", task_id="x1", **base, queue_wait_ms=2.0, duration_ms=3.0
        ),  # no valid "at": all-time figures only
        _event(
            event_id="x2e",
            type="execute_enqueued",
            at=at,
            task_id="x2",
            queue_wait_ms=-3.0,
            version="v2",
            cohort="canary",
            **base,
        ),
        _event(
            event_id="x2",
            type="execute_done",
            at=at,
            task_id="x2",
            queue_wait_ms=0.0,
            duration_ms=0.0,
            version="v2",
            cohort="canary",
            data={"result": {"verdict": "fail"}},
            **base,
        ),  # a failing verdict
        _event(
            event_id="x3", type="execute_failed", at=at, task_id="x3", route=None, error_code=None, error="lost"
        ),  # no route, no code: 'unknown'
        _event(
            event_id="x4e2",
            type="execute_enqueued",
            at=at,
            task_id="x2",
            attempt=2,
            route="echo.run.0",
            queue_wait_ms=0.5,
            version="v2",
            cohort="canary",
        ),
        # a run whose gate fails before its second task is done
        _event(
            event_id="r1s",
            type="workflow_started",
            at=late,
            correlation_id="run-x",
            data={"workflow_id": WORKFLOW_ID, "plan": {}},
        ),
        _event(
            event_id="r1t1",
            type="execute_done",
            at=at,
            task_id="run-x:a:1",
            correlation_id="run-x",
            queue_wait_ms=1.5,
            duration_ms=9.5,
            data={"result": {"artifacts": ["run-x/a.json"]}},
            **base,
        ),
        _event(
            event_id="r1n",
            type="node_succeeded",
            at=at,
            correlation_id="run-x",
            data={"workflow_id": WORKFLOW_ID, "node_id": "a", "result": {"artifacts": ["run-x/a.json"]}},
        ),
        _event(
            event_id="r1g",
            type="gate_failed",
            at=at,
            correlation_id="run-x",
            data={"workflow_id": WORKFLOW_ID, "node_id": "check", "verdict": "failed"},
        ),
        _event(
            event_id="r1t2",
            type="execute_done",
            at=late,
            task_id="run-x:b:1",
            correlation_id="run-x",
            queue_wait_ms=2.5,
            duration_ms=19.5,
            **base,
        ),
        _event(
            event_id="r1o",
            type="workflow_failed",
            at=late,
            correlation_id="run-x",
            error_code="workflow.gate_failed",
            error="gate check failed",
            duration_ms=5.0,
            data={"workflow_id": WORKFLOW_ID},
        ),
        # a child of run-x, still running, waiting for a signal (one other signal came)
        _event(
            event_id="r2s",
            type="workflow_started",
            at=later,
            correlation_id="run-y",
            data={"workflow_id": WORKFLOW_ID, "plan": {}, "parent": {"runId": "run-x"}},
        ),
        _event(
            event_id="r2a",
            type="node_started",
            at=at,
            correlation_id="run-y",
            data={"workflow_id": WORKFLOW_ID, "node_id": "approve", "node_type": "signal", "name": "approval"},
        ),
        _event(
            event_id="r2b",
            type="node_started",
            at=at,
            correlation_id="run-y",
            data={"workflow_id": WORKFLOW_ID, "node_id": "ping", "node_type": "signal", "name": "ping"},
        ),
        _event(
            event_id="r2c",
            type="node_succeeded",
            at=late,
            correlation_id="run-y",
            data={"workflow_id": WORKFLOW_ID, "node_id": "ping", "result": {}},
        ),
    ]


def event_set() -> list[bytes]:
    bodies = [b for _, b, _ in synthetic_events(6000, seed=11, span_s=5400, end=END, runs_every=25)]
    extra = awkward_events()
    # the awkward ones spread through the stream, not bunched at one end
    for i, body in enumerate(extra):
        bodies.insert(400 * (i + 1), body)
    return bodies


def batches(bodies: list[bytes], seed: int, first_seq: int = 1) -> Iterator[EventBatch]:
    rng = random.Random(seed)
    i = 0
    while i < len(bodies):
        size = rng.choice([1, 2, 7, 50, 333, 700])
        chunk = bodies[i : i + size]
        yield EventBatch(list(range(first_seq + i, first_seq + i + len(chunk))), chunk)
        i += len(chunk)


def build(path: Path, bodies: list[bytes], seed: int, first_seq: int = 1, fold_every: int = 0) -> ProjectionStore:
    """A projection of ``bodies``; ``fold_every`` > 0 folds the tail after that many batches."""
    store = ProjectionStore(path, readers=1)
    store.open_sync()
    for i, batch in enumerate(batches(bodies, seed, first_seq), 1):
        store.apply_events_sync(batch)
        if fold_every and i % fold_every == 0:
            store.fold_sync()
    return store


# Readers must give the same answers whatever part of the events the rollup tables hold:
# none (all in the unfolded tail), some, or all.
@pytest.fixture(scope="module", params=["tail", "mixed", "folded"])
def projected(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectionStore]:
    path = tmp_path_factory.mktemp("rollups") / "cogo.duckdb"
    store = build(path, event_set(), seed=3, fold_every=9 if request.param == "mixed" else 0)
    if request.param == "folded":
        store.fold_sync()
    else:
        assert rollups.folded_seq_sync(store.con) < len(event_set())
    try:
        yield store
    finally:
        store.close_sync()
        store.shutdown()


def rollup_tables(store: ProjectionStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every rollup table, once the rows not yet folded in are."""
    store.fold_sync()
    con = store.con
    names = [f.table(g) for f in rollups.FAMILIES for g in rollups.GRAINS]
    names += ["rollup_run_tasks", "rollup_gate_failures", "workflow_runs"]
    return {n: con.execute(f"SELECT * FROM {n} ORDER BY ALL").fetchall() for n in names}


def params_of(since: dt.datetime | None) -> dict[str, Any]:
    return {"since": since}


# -- the latency API -----------------------------------------------------------------------


def _close(got: dict[str, Any], exact: list[float] | None) -> None:
    want = exact or [None, None, None]
    for label, value in zip(("p50", "p90", "p99"), want, strict=True):
        if value is None:
            assert got[label] is None
        else:
            assert got[label] == pytest.approx(value, **ERR), label


@pytest.mark.parametrize("since", WINDOWS, ids=["7m", "61m", "90m", "3h", "all"])
def test_bus_latency_equals_the_raw_sql(projected: ProjectionStore, since: Any) -> None:
    con = projected.con
    raw = con.execute(RAW_LATENCY.format(group=""), params_of(since)).fetchall()
    body = queries.bus_latency(con, since=since)
    assert [r["route"] for r in body["routes"]] == [r[0] for r in raw]
    for row, want in zip(body["routes"], raw, strict=True):
        route, attempts, qw, dur, dispatch, tasks, done, failures, retries = want
        assert (row["count"], row["tasks"], row["done"], row["failures"], row["retries"]) == (
            attempts,
            tasks,
            done,
            failures,
            retries,
        ), route
        _close(row["queue_wait_ms"], qw)
        _close(row["duration_ms"], dur)
        _close(row["dispatch_wait_ms"], dispatch)
    assert sum(r["count"] for r in body["routes"]) > (2500 if since is None else 0)


@pytest.mark.parametrize("bucket_s", [60, 300, 3600, 45])
def test_latency_series_equals_the_raw_sql(projected: ProjectionStore, bucket_s: int) -> None:
    con = projected.con
    since = WINDOWS[1]
    group = f'time_bucket(INTERVAL {bucket_s} SECOND, "at"),'
    raw = [r for r in con.execute(RAW_LATENCY.format(group=group), params_of(since)).fetchall()]
    series = queries.bus_latency(con, since=since, bucket_s=bucket_s)["series"]
    assert len(series) == len(raw) > 1
    for row, want in zip(series, raw, strict=True):
        assert row["bucket"] == queries._iso(want[0])
        assert row["route"] == want[1]
        assert (row["count"], row["tasks"], row["done"], row["failures"], row["retries"]) == (
            want[2],
            want[6],
            want[7],
            want[8],
            want[9],
        )
        _close(row["duration_ms"], want[4])


def test_route_filter_and_empty_windows(projected: ProjectionStore) -> None:
    con = projected.con
    only = queries.bus_latency(con, since=WINDOWS[2], route="echo.run.1")["routes"]
    assert [r["route"] for r in only] == ["echo.run.1"]
    assert queries.bus_latency(con, since=NOW + dt.timedelta(hours=1))["routes"] == []
    assert queries.bus_latency(con, since=None, route="nope.run.0")["routes"] == []


# -- the dashboard ---------------------------------------------------------------------------


@pytest.mark.parametrize("since", WINDOWS[:4], ids=["7m", "61m", "90m", "3h"])
def test_dashboard_equals_the_raw_sql(projected: ProjectionStore, since: dt.datetime) -> None:
    con = projected.con
    body = summary(con, since)
    splits = con.execute(RAW_SPLITS, {"since": since}).fetchall()
    quality = body["decision_quality"]
    by_route = {r["route"]: (r["finished"], r["accepted"]) for r in quality["by_route"]}
    by_version = {r["version"]: (r["finished"], r["accepted"]) for r in quality["by_version"]}
    cohorts = {
        (c["route"], c["version"], c["cohort"]): (c["finished"], c["failures"], c["accepted"]) for c in body["cohorts"]
    }
    for route, version, cohort, n, failed, accepted, grouping in splits:
        if grouping == 0b111:
            assert (quality["overall"]["finished"], quality["overall"]["accepted"]) == (
                n,
                accepted,
            )
        elif grouping == 0b011:
            assert by_route.pop(route) == (n, accepted), route
        elif grouping == 0b101:
            assert by_version.pop(version) == (n, accepted), version
        else:
            assert cohorts.pop((route, version, cohort)) == (n, failed, accepted)
    assert by_route == by_version == cohorts == {}  # nothing the raw SQL lacks

    minutes = con.execute(RAW_MINUTES, {"since": since}).fetchall()
    done_by_minute: dict[str, list[int]] = {}
    failures = []
    for minute, code, done, failed in minutes:
        totals = done_by_minute.setdefault(queries._iso(minute), [0, 0])
        totals[0] += done
        totals[1] += failed
        if code is not None:
            failures.append({"minute": queries._iso(minute), "error_code": code, "failures": failed})
    assert body["throughput"]["series"] == [
        {"minute": m, "done": d, "failed": f} for m, (d, f) in sorted(done_by_minute.items())
    ]
    assert body["failures"]["series"] == failures
    assert body["failures"]["total"] == sum(f["failures"] for f in failures)
    if since < NOW - dt.timedelta(minutes=31):
        assert {"unknown", "worker.permanent"} <= {f["error_code"] for f in failures}
        assert "v2" in {v["version"] for v in quality["by_version"]}

    assert body["runs"] == [_run_row(row) for row in con.execute(RAW_RUNS).fetchall()]
    by_run = {run["runId"]: run for run in body["runs"]}
    assert by_run["run-y"]["waiting"] == [{"node": "approve", "name": "approval"}]
    assert by_run["run-y"]["parentRunId"] == "run-x" and by_run["run-x"]["children"] == 1
    raw_latency = {r[0]: r for r in con.execute(RAW_LATENCY.format(group=""), {"since": since}).fetchall()}
    for card in body["queue_wait"]:
        want = raw_latency[card["route"]]
        assert card["attempts"] == want[1] and card["tasks"] == want[5]
        assert card["p90_ms"] == pytest.approx(want[2][1], **ERR)


RAW_RECENT_TASKS = """
WITH recent AS (
    SELECT task_id FROM bus_events
    WHERE type = 'execute_enqueued' AND "at" >= $since AND task_id IS NOT NULL
    GROUP BY task_id ORDER BY max(seq) DESC LIMIT $limit
)
SELECT b.task_id, arg_min(b.route, b.seq), max(b.attempt),
       arg_max(b.type, b.seq) FILTER (b.type LIKE 'execute_%'),
       strftime(min(b."at"), '%Y-%m-%dT%H:%M:%S.%fZ'),
       count(*) FILTER (b.type = 'llm_call'), count(*) FILTER (b.type = 'step_completed')
FROM bus_events b SEMI JOIN recent r ON b.task_id = r.task_id
GROUP BY b.task_id ORDER BY max(b.seq) DESC
"""


@pytest.mark.parametrize("tail", [tasks.RECENT_TAIL, 3, 700])
def test_recent_tasks_from_the_tail_equal_the_whole_search(
    projected: ProjectionStore, tail: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the search starts in the last `tail` events and widens while that is too few
    monkeypatch.setattr(tasks, "RECENT_TAIL", tail)
    con = projected.con
    for since, limit in ((WINDOWS[0], 20), (WINDOWS[3], 20), (WINDOWS[3], 2000)):
        rows = con.execute(RAW_RECENT_TASKS, {"since": since, "limit": limit}).fetchall()
        want = [
            {
                "task_id": t,
                "route": r,
                "attempt": a or 0,
                "status": tasks._STATE.get(last or "", "queued"),
                "enqueued_at": at,
                "llm_calls": calls,
                "steps": steps,
            }
            for t, r, a, last, at, calls, steps in rows
        ]
        assert tasks.recent_tasks(con, since, limit) == want
        assert len(want) == min(limit, len(want)) > 0


def test_the_gate_that_failed_first_still_rejects_the_later_task(
    projected: ProjectionStore,
) -> None:
    body = summary(projected.con, NOW - dt.timedelta(minutes=2))
    # the window holds only run-x's second task: succeeded, but its run's gate failed
    assert body["decision_quality"]["overall"] == {"finished": 1, "accepted": 0, "quality": 0.0}


# -- /metrics ---------------------------------------------------------------------------------


def test_prometheus_text_equals_the_raw_sql(projected: ProjectionStore) -> None:
    con = projected.con
    out = queries.PrometheusText()
    queries.projection_metrics(con, out)
    samples: dict[str, float] = {}
    for line in out.lines:
        if not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    counts = con.execute(
        "SELECT type, coalesce(route, ''), count(*) FROM bus_events WHERE type IS NOT NULL GROUP BY ALL"
    ).fetchall()
    for kind, route, n in counts:
        assert samples.pop(f'cogo_events_total{{type="{kind}",route="{route}"}}') == n
    assert not [k for k in samples if k.startswith("cogo_events_total")]
    for route, n, qw_sum, dur_sum, qw, dur in con.execute(RAW_ATTEMPTS).fetchall():
        label = route or ""
        for name, total, quantiles in (
            ("cogo_attempt_queue_wait_seconds", qw_sum, qw),
            ("cogo_attempt_duration_seconds", dur_sum, dur),
        ):
            # the projection keeps milliseconds; Prometheus gets seconds
            assert samples[f'{name}_count{{route="{label}"}}'] == n
            assert samples[f'{name}_sum{{route="{label}"}}'] == pytest.approx(total / 1000.0, abs=1e-9 * n)
            for q, value in zip(queries.PERCENTILES, quantiles, strict=True):
                got = samples[f'{name}{{route="{label}",quantile="{q}"}}']
                assert got == pytest.approx(value / 1000.0, rel=ERR["rel"], abs=1e-6), (name, q)


# -- workflow metrics -----------------------------------------------------------------------


def test_workflow_metrics_equal_the_fold_of_the_stream(projected: ProjectionStore) -> None:
    con = projected.con
    rows = con.execute(
        "SELECT seq, raw FROM bus_events WHERE type IN ('workflow_started', 'workflow_succeeded', "
        "'workflow_failed', 'workflow_cancelled', 'gate_passed', 'gate_failed') ORDER BY seq"
    ).fetchall()
    runs: dict[str, RunState] = {}
    gates = []
    for seq, raw in rows:
        event = decode_event(raw.encode())
        if event.type in (WORKFLOW_STARTED, *RUN_OUTCOMES):
            runs.setdefault(event.correlation_id or "", RunState(event.correlation_id or "")).apply(event, seq)
        else:
            gates.append(event)
    folded = orchestrator_http.workflow_metrics(WORKFLOW_ID, [r for r in runs.values() if r.started], gates)
    got = queries.workflow_metrics(con, WORKFLOW_ID, orchestrator_http.RECENT_RUNS)
    assert got == folded
    assert got["runs"] > 100 and got["failed"] > 0 and got["gates"]["failed"] > 0


def test_workflow_runs_hold_what_the_orchestrators_fold_says(projected: ProjectionStore) -> None:
    # /api/orchestrator/state folds a run's events with RunState; the dashboard and the
    # metrics read workflow_runs: every row is the record that fold keeps
    con = projected.con
    rows = con.execute(
        f"SELECT seq, raw FROM bus_events WHERE type IN {rollups._in(RECORD_TYPES)} "
        "AND correlation_id IS NOT NULL ORDER BY seq"
    ).fetchall()
    states: dict[str, RunState] = {}
    for seq, raw in rows:
        event = decode_event(raw.encode())
        run_id = event.correlation_id or ""
        states.setdefault(run_id, RunState(run_id)).apply(event, seq)
    stored = runs.load_sync(con, sorted(states))
    assert stored.keys() == states.keys() and len(stored) > 100
    for run_id, state in states.items():
        row, record = stored[run_id], state.record
        times = ("started_at", "ended_at")
        for name in record.__struct_fields__:
            if name not in times:
                assert getattr(row, name) == getattr(record, name), (run_id, name)
        for name in times:  # the row holds a TIMESTAMP, the record the event's ISO text
            got, want = getattr(row, name), getattr(record, name)
            assert (got is None) == (want is None), (run_id, name)
            if want is not None:
                assert dt.datetime.fromisoformat(got) == dt.datetime.fromisoformat(want.replace("Z", "")), (
                    run_id,
                    name,
                )
    assert {"succeeded", "failed", "running"} <= {s.status for s in states.values()}


# -- batches, replay and retention --------------------------------------------------------------


def test_batches_do_not_matter(tmp_path: Path, projected: ProjectionStore) -> None:
    # the same events in one transaction (as a replay with a large batch would write them)
    whole = ProjectionStore(tmp_path / "whole.duckdb", readers=1)
    whole.open_sync()
    try:
        bodies = event_set()
        whole.apply_events_sync(EventBatch(list(range(1, len(bodies) + 1)), bodies))
        assert rollup_tables(whole) == rollup_tables(projected)
    finally:
        whole.close_sync()
        whole.shutdown()


def test_existing_files_get_their_rollups_on_open(tmp_path: Path, projected: ProjectionStore) -> None:
    # a file from before the rollups (or with older definitions): rebuilt from bus_events
    path = tmp_path / "old.duckdb"
    store = build(path, event_set(), seed=5)
    expected = rollup_tables(store)
    store.con.execute("UPDATE rollup_meta SET version = 0")
    store.con.execute("DELETE FROM rollup_total_events")
    store.close_sync()
    store.open_sync()
    try:
        assert rollup_tables(store) == expected
    finally:
        store.close_sync()
        store.shutdown()


@pytest.mark.parametrize("cut", [1, 1200, 3601, 6017])
def test_pruned_rollups_equal_rollups_of_what_remains(tmp_path: Path, cut: int) -> None:
    bodies = event_set()
    pruned = build(tmp_path / "pruned.duckdb", bodies, seed=7)
    fresh = build(tmp_path / "fresh.duckdb", bodies[cut - 1 :], seed=9, first_seq=cut)
    try:
        deleted = pruned.prune_sync("EVENTS", cut)
        assert deleted == cut - 1
        assert pruned.con.execute("SELECT count(*), min(seq) FROM bus_events").fetchone() == (
            len(bodies) - cut + 1,
            cut,
        )
        assert rollup_tables(pruned) == rollup_tables(fresh)
        if cut > 1:
            assert pruned.prune_sync("EVENTS", cut) == 0  # nothing below the floor any more
    finally:
        for store in (pruned, fresh):
            store.close_sync()
            store.shutdown()


def test_values_out_of_range_neither_fail_a_batch_nor_count(tmp_path: Path) -> None:
    store = ProjectionStore(tmp_path / "odd.duckdb", readers=1)
    store.open_sync()
    try:
        at = _iso(NOW)
        odd = [
            _event(
                event_id=f"o{i}",
                type="execute_done",
                at=at,
                task_id=f"o{i}",
                route="echo.run.0",
                queue_wait_ms=v,
                duration_ms=v,
            )
            for i, v in enumerate([1e40, -1e40, 1e-9, 5.0])
        ]
        assert store.apply_events_sync(EventBatch([1, 2, 3, 4], odd)) == 4
        store.fold_sync()
        (row,) = queries.bus_latency(store.con, since=None)["routes"]
        assert row["count"] == 4 and row["duration_ms"]["p50"] is not None
        total = store.con.execute("SELECT sum(measured), sum(duration_ms) FROM rollup_total_events").fetchone()
        assert total[0] == 4 and float(total[1]) == pytest.approx(5.0 + 1e-9, abs=1e-6)
        # the bins DuckDB computed are the ones Python computes, the huge value included
        bins = store.con.execute(
            "SELECT bin, n FROM rollup_total_latency WHERE metric = 'duration' ORDER BY bin"
        ).fetchall()
        assert bins == [(0, 2), (histogram.bin_of(5.0), 1), (histogram.bin_of(1e40), 1)]
        assert histogram.bin_of(math.inf) == histogram.bin_of(math.nan) == histogram.MAX_BIN
    finally:
        store.close_sync()
        store.shutdown()


def test_histogram_error_bound_holds_bin_by_bin() -> None:
    rng = random.Random(1)
    for _ in range(20_000):
        value = 10 ** rng.uniform(-2.9, 7)
        estimate = histogram.bin_value(histogram.bin_of(value))
        assert abs(estimate - value) <= histogram.RELATIVE_ERROR * value * (1 + 1e-9)
    assert histogram.bin_value(histogram.bin_of(0.0)) == 0.0
    assert histogram.bin_value(histogram.bin_of(-5.0)) == 0.0
    values = sorted(rng.expovariate(1 / 40) for _ in range(5000))
    bins: dict[int, int] = {}
    for v in values:
        bins[histogram.bin_of(v)] = bins.get(histogram.bin_of(v), 0) + 1
    for q, got in zip((0.5, 0.9, 0.99), histogram.quantiles(bins.items(), (0.5, 0.9, 0.99)), strict=True):
        position = (len(values) - 1) * q
        low = int(position)
        exact = values[low] + (values[min(low + 1, len(values) - 1)] - values[low]) * (position - low)
        assert got == pytest.approx(exact, rel=histogram.RELATIVE_ERROR)
