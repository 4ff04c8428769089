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
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cogo.bench.projections import WORKFLOW_ID
from cogo.http import orchestrator as orchestrator_http
from cogo.http.dashboard import _run_row, summary
from cogo.projections import histogram, queries, rollups, runs, tasks
from cogo.projections.store import EventBatch, ProjectionStore
from cogo.streams.catalogue import RUN_OUTCOMES, WORKFLOW_STARTED
from cogo.streams.events import decode_event
from cogo.workflows.record import RECORD_TYPES
from cogo.workflows.run import RunState
from tests.rollup_support import (
    ERR,
    NOW,
    RAW_ATTEMPTS,
    RAW_LATENCY,
    RAW_MINUTES,
    RAW_RECENT_TASKS,
    RAW_RUNS,
    RAW_SPLITS,
    WINDOWS,
    build,
    event_body,
    event_set,
    iso_of,
)


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
        at = iso_of(NOW)
        odd = [
            event_body(
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
