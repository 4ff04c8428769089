"""Metric queries over the projection: bus latency percentiles and Prometheus text.

Blocking functions taking a DuckDB cursor; callers run them on a thread
(``ProjectionStore.read``). They read the rollups (``cogo.projections.rollups``) over a
window (``cogo.projections.windows``), so they cost the same at millions of events as at
thousands. Counts and sums equal the raw SQL over ``bus_events``; percentiles follow
``quantile_cont`` (linear interpolation between closest ranks) over the histogram bins,
within 1% of the exact value (``cogo.projections.histogram``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import duckdb

from cogo.projections import histogram, rollups, windows
from cogo.projections.windows import Window
from cogo.streams.catalogue import RUN_OUTCOMES

PERCENTILES = (0.5, 0.9, 0.99)
_LABELS = ("p50", "p90", "p99")
RESULT_TYPES = rollups.RESULT_TYPES
_WINDOW = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 366 * 86400
MAX_BUCKETS = 10_000

# Per route: attempts (worker results with a duration), tasks (first attempts enqueued),
# outcomes. {rows} is a relation of rollup_*_events rows; {group} adds a series bucket.
_COUNTS = """
SELECT {group} nullif(route, '') AS route,
       sum(measured) FILTER (type IN ('execute_done', 'execute_retry', 'execute_failed')),
       sum(first_attempts) FILTER (type = 'execute_enqueued'),
       sum(events) FILTER (type = 'execute_done'),
       sum(events) FILTER (type = 'execute_failed'),
       sum(events) FILTER (type = 'execute_retry')
FROM {rows}
WHERE type IN ('execute_enqueued', 'execute_done', 'execute_retry', 'execute_failed')
  AND ($route IS NULL OR route = $route) {extra}
GROUP BY ALL
ORDER BY ALL NULLS FIRST
"""

# Per route (and series bucket) and metric: the merged histogram, bin by bin.
_BINS = """
SELECT {group} nullif(key, '') AS route, metric, bin, sum(n) AS n
FROM {rows}
WHERE ($route IS NULL OR key = $route) {extra}
GROUP BY ALL
"""


def parse_duration(text: str) -> int:
    """``30s``, ``15m``, ``6h``, ``7d`` as seconds (ValueError if malformed or zero)."""
    match = _WINDOW.match(text.strip())
    if not match:
        raise ValueError("expected a number and a unit: 30s, 15m, 6h or 7d")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    if seconds > MAX_WINDOW_S:
        raise ValueError("must be at most 366d")
    return seconds


def _quantiles(values: Sequence[float | None] | None) -> dict[str, float | None]:
    given: Sequence[float | None] = values or [None, None, None]
    return {label: _number(v) for label, v in zip(_LABELS, given, strict=True)}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return round(number, 6) if math.isfinite(number) else None


def _route_row(route: str | None, counts: tuple[Any, ...], values: dict[str, list[float]]) -> dict[str, Any]:
    attempts, tasks, done, failures, retries = (int(c or 0) for c in counts)
    return {
        "route": route,
        "count": attempts,
        "queue_wait_ms": _quantiles(values.get("queue_wait")),
        "duration_ms": _quantiles(values.get("duration")),
        "dispatch_wait_ms": _quantiles(values.get("dispatch_wait")),
        "tasks": tasks,
        "done": done,
        "failures": failures,
        "retries": retries,
    }


def _run(cur: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[Any]:
    return cur.execute(sql, windows.bind(sql, params)).fetchall()


def _percentiles(
    cur: duckdb.DuckDBPyConnection, bins_sql: str, params: dict[str, Any], groups: list[str]
) -> dict[tuple[Any, ...], dict[str, list[float]]]:
    """p50/p90/p99 of each (groups..., metric) histogram of ``bins_sql``, computed in DuckDB:
    {(groups...): {metric: [p50, p90, p99]}}."""
    sql = histogram.quantiles_sql(f"({bins_sql})", [*groups, "metric"], PERCENTILES)
    out: dict[tuple[Any, ...], dict[str, list[float]]] = defaultdict(dict)
    for *group, metric, values in _run(cur, sql, params):
        out[tuple(group)][metric] = values
    return out


def bus_latency(
    cur: duckdb.DuckDBPyConnection,
    *,
    since: dt.datetime | None,
    route: str | None = None,
    bucket_s: int | None = None,
) -> dict[str, Any]:
    """Per route: attempts, p50/p90/p99 of queue wait and duration, failures, retries.

    ``since`` is naive UTC; with ``bucket_s`` a per-bucket series is added.
    """
    with windows.snapshot(cur, since) as window:
        return latency_in(cur, window, route=route, bucket_s=bucket_s)


def latency_in(
    cur: duckdb.DuckDBPyConnection,
    window: Window,
    *,
    route: str | None = None,
    bucket_s: int | None = None,
) -> dict[str, Any]:
    """``bus_latency`` inside a snapshot the caller holds."""
    params = {**window.params(), "route": route}
    events = windows.relation(rollups.EVENTS, window)
    latency = windows.relation(rollups.LATENCY, window)
    counts = _run(cur, _COUNTS.format(group="", rows=events, extra=""), params)
    values = _percentiles(cur, _BINS.format(group="", rows=latency, extra=""), params, ["route"])
    body: dict[str, Any] = {"routes": [_route_row(r[0], r[1:], values.get((r[0],), {})) for r in counts]}
    if bucket_s:
        body["series"] = _series(cur, window, params, int(bucket_s))
    return body


def _series(
    cur: duckdb.DuckDBPyConnection, window: Window, params: dict[str, Any], bucket_s: int
) -> list[dict[str, Any]]:
    group = f"time_bucket(INTERVAL {bucket_s} SECOND, bucket) AS series_bucket,"
    if bucket_s % 60 == 0:
        # whole minutes nest in the bucket (time_bucket's origin is minute-aligned)
        events = windows.relation(rollups.EVENTS, window, series=True)
        latency = windows.relation(rollups.LATENCY, window, series=True)
    else:
        # finer than the rollups: the same aggregates, from the window's events
        where = '"at" >= $since' if window.since is not None else '"at" IS NOT NULL'
        bucket = f'time_bucket(INTERVAL {bucket_s} SECOND, "at")'
        events = windows.raw_sql(rollups.EVENTS_DELTA, where, bucket)
        latency = windows.raw_sql(rollups.LATENCY_DELTA, where, bucket)
    # events without a valid "at" are in the epoch bucket: not part of any series
    extra = "AND bucket <> TIMESTAMP '1970-01-01'"
    counts = _run(cur, _COUNTS.format(group=group, rows=events, extra=extra), params)
    values = _percentiles(
        cur,
        _BINS.format(group=group, rows=latency, extra=extra),
        params,
        ["series_bucket", "route"],
    )
    return [{"bucket": _iso(r[0]), **_route_row(r[1], r[2:], values.get((r[0], r[1]), {}))} for r in counts]


def _iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- Prometheus ----------------------------------------------------------------------


def _escape(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


class PrometheusText:
    """Builds the text exposition format, one metric family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str, samples: Iterable[tuple[dict[str, Any], Any]]) -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            suffix = labels.pop("__suffix", "")
            self.lines.append(f"{name}{suffix}{_labels(**labels)} {_format(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _format(value: Any) -> str:
    if value is None:
        return "NaN"
    number = float(value)
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(number)


def projection_metrics(cur: duckdb.DuckDBPyConnection, out: PrometheusText) -> None:
    """Counters per event type and route, dead letters, attempt latency summaries."""
    with windows.snapshot(cur, None) as window:
        _projection_metrics(cur, window, out)


def _projection_metrics(cur: duckdb.DuckDBPyConnection, window: Window, out: PrometheusText) -> None:
    params = window.params()
    events = windows.relation(rollups.EVENTS, window)
    latency = windows.relation(rollups.LATENCY, window)
    counts = _run(
        cur,
        f"SELECT type, route, sum(events) FROM {events} WHERE type <> '' "
        "GROUP BY ALL HAVING sum(events) > 0 ORDER BY ALL",
        params,
    )
    out.family(
        "cogo_events_total",
        "counter",
        "Events in the projected event log, by type and route.",
        (({"type": t, "route": r}, n) for t, r, n in counts),
    )
    dead = cur.execute(
        "SELECT coalesce(error_code, ''), count(*) FROM dlq_messages GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    out.family(
        "cogo_dead_letters_total",
        "counter",
        "Messages in the DLQ stream, by error code.",
        (({"error_code": code}, n) for code, n in dead),
    )
    # Prometheus wants base units: the projection keeps milliseconds, /metrics says seconds
    rows = _run(
        cur,
        f"""
        SELECT route, sum(measured), sum(queue_wait_ms) / 1000.0, sum(duration_ms) / 1000.0
        FROM {events} WHERE type IN {rollups._in(RESULT_TYPES)}
        GROUP BY route HAVING sum(measured) > 0 ORDER BY route
        """,
        params,
    )
    values = _percentiles(
        cur,
        f"SELECT key AS route, metric, bin, sum(n) AS n FROM {latency} "
        "WHERE metric IN ('queue_wait', 'duration') GROUP BY ALL",
        params,
        ["route"],
    )
    for index, metric, name, what in (
        (2, "queue_wait", "cogo_attempt_queue_wait_seconds", "Queue wait of attempts (enqueued -> claimed)."),
        (3, "duration", "cogo_attempt_duration_seconds", "Duration of attempts (claimed -> result)."),
    ):
        samples: list[tuple[dict[str, Any], Any]] = []
        for row in rows:
            route = row[0]
            quantiles: Sequence[float | None] = values.get((route,), {}).get(metric) or [None] * len(PERCENTILES)
            for q, v in zip(PERCENTILES, quantiles, strict=True):
                seconds = None if v is None else float(v) / 1000.0
                samples.append(({"route": route, "quantile": q}, seconds))
            samples.append(({"route": route, "__suffix": "_sum"}, row[index]))
            samples.append(({"route": route, "__suffix": "_count"}, row[1]))
        out.family(name, "summary", what, samples)


# -- workflows -------------------------------------------------------------------------

_WORKFLOW = """
SELECT count(*),
       count(*) FILTER (outcome IS NULL),
       count(*) FILTER (outcome = 'workflow_succeeded'),
       count(*) FILTER (outcome = 'workflow_failed'),
       count(*) FILTER (outcome = 'workflow_cancelled'),
       quantile_cont(duration_ms, [0.5, 0.9]) FILTER (finished),
       max(duration_ms) FILTER (finished),
       coalesce(sum(gates_passed), 0), coalesce(sum(gates_failed), 0)
FROM (
    SELECT *, round(date_diff('microsecond', started_at, ended_at) / 1000.0, 3) AS duration_ms,
           outcome IN ('workflow_succeeded', 'workflow_failed')
               AND ended_at IS NOT NULL AS finished
    FROM workflow_runs WHERE workflow_id = $workflow_id AND start_seq IS NOT NULL
)
"""

_RECENT_RUNS = """
SELECT run_id, workflow_id, coalesce(outcome, 'running'), parent_run_id, started_at, ended_at,
       round(date_diff('microsecond', started_at, ended_at) / 1000.0, 3), error_code, error
FROM workflow_runs WHERE workflow_id = $workflow_id AND start_seq IS NOT NULL
ORDER BY start_seq DESC LIMIT $limit
"""


def workflow_metrics(cur: duckdb.DuckDBPyConnection, workflow_id: str, recent: int) -> dict[str, Any]:
    """Outcome counts, duration percentiles and the gate pass rate of one workflow's runs,
    from ``workflow_runs`` (one row per run: the cost is that workflow's runs, not events)."""
    row = cur.execute(_WORKFLOW, {"workflow_id": workflow_id}).fetchone() or ()
    runs, running, succeeded, failed, cancelled, spread, longest, passed, gate_failed = row
    durations = [round(float(v), 3) for v in spread] if spread else [None, None]
    finished = succeeded + failed
    evaluated = int(passed) + int(gate_failed)
    recent_rows = cur.execute(_RECENT_RUNS, {"workflow_id": workflow_id, "limit": recent}).fetchall()
    return {
        "workflowId": workflow_id,
        "runs": runs,
        "running": running,
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": cancelled,
        "successRate": round(succeeded / finished, 4) if finished else None,
        "durationMs": {
            "p50": durations[0],
            "p90": durations[1],
            "max": float(longest) if longest is not None else None,
        },
        "gates": {
            "evaluated": evaluated,
            "passed": int(passed),
            "failed": int(gate_failed),
            "passRate": round(int(passed) / evaluated, 4) if evaluated else None,
        },
        "recentRuns": [
            {
                "runId": run_id,
                "workflowId": wf,
                "status": RUN_OUTCOMES.get(status, status),
                "parentRunId": parent,
                "startedAt": _iso(started) if started else None,
                "endedAt": _iso(ended) if ended else None,
                "durationMs": float(duration) if duration is not None else None,
                "errorCode": error_code,
                "error": error,
            }
            for run_id, wf, status, parent, started, ended, duration, error_code, error in recent_rows
        ],
    }
