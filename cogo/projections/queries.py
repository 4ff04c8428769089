"""Metric queries over the projection: bus latency percentiles and Prometheus text.

Blocking functions taking a DuckDB cursor; callers run them on a thread
(``ProjectionStore.read``). Percentiles are ``quantile_cont`` (linear interpolation
between closest ranks, as numpy's default and ``statistics.quantiles(method="inclusive")``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from typing import Any

import duckdb

PERCENTILES = (0.5, 0.9, 0.99)
_LABELS = ("p50", "p90", "p99")
RESULT_TYPES = ("execute_done", "execute_retry", "execute_failed")
_WINDOW = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 366 * 86400
MAX_BUCKETS = 10_000

# Worker results carry the attempt's queue wait (enqueued -> claimed) and duration (claimed
# -> result); execute_enqueued carries the dispatcher's own wait (submitted -> dispatched).
_LATENCY = """
SELECT
    {group} route,
    count(*) FILTER (measured)                                          AS attempts,
    quantile_cont(queue_wait_ms, [0.5, 0.9, 0.99]) FILTER (measured)    AS queue_wait_ms,
    quantile_cont(duration_ms, [0.5, 0.9, 0.99]) FILTER (measured)      AS duration_ms,
    quantile_cont(queue_wait_ms, [0.5, 0.9, 0.99])
        FILTER (type = 'execute_enqueued')                              AS dispatch_wait_ms,
    count(DISTINCT task_id) FILTER (type = 'execute_enqueued')          AS tasks,
    count(*) FILTER (type = 'execute_done')                             AS done,
    count(*) FILTER (type = 'execute_failed')                           AS failures,
    count(*) FILTER (type = 'execute_retry')                            AS retries
FROM (
    SELECT *, type IN ('execute_done', 'execute_retry', 'execute_failed')
              AND duration_ms IS NOT NULL AS measured
    FROM bus_events
    WHERE type IN ('execute_enqueued', 'execute_done', 'execute_retry', 'execute_failed')
      AND ($since IS NULL OR "at" >= $since)
      AND ($route IS NULL OR route = $route)
)
GROUP BY ALL
ORDER BY ALL NULLS FIRST
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


def _quantiles(values: list[float] | None) -> dict[str, float | None]:
    values = values or [None, None, None]  # type: ignore[list-item]
    return {label: _number(v) for label, v in zip(_LABELS, values, strict=True)}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return round(number, 6) if math.isfinite(number) else None


def _route_row(row: tuple[Any, ...]) -> dict[str, Any]:
    route, attempts, queue_wait, duration, dispatch, tasks, done, failures, retries = row
    return {
        "route": route,
        "count": attempts,
        "queue_wait_ms": _quantiles(queue_wait),
        "duration_ms": _quantiles(duration),
        "dispatch_wait_ms": _quantiles(dispatch),
        "tasks": tasks,
        "done": done,
        "failures": failures,
        "retries": retries,
    }


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
    params = {"since": since, "route": route}
    rows = cur.execute(_LATENCY.format(group=""), params).fetchall()
    body: dict[str, Any] = {"routes": [_route_row(r) for r in rows]}
    if bucket_s:
        series_sql = _LATENCY.format(group=f'time_bucket(INTERVAL {int(bucket_s)} SECOND, "at"),')
        series = cur.execute(series_sql, params).fetchall()
        body["series"] = [
            {"bucket": _iso(r[0]), **_route_row(r[1:])} for r in series if r[0] is not None
        ]
    return body


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

    def family(
        self, name: str, kind: str, help: str, samples: Iterable[tuple[dict[str, Any], Any]]
    ) -> None:
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
    counts = cur.execute(
        "SELECT type, route, events FROM event_counts WHERE type IS NOT NULL ORDER BY ALL"
    ).fetchall()
    out.family(
        "cogo_events_total",
        "counter",
        "Events in the projected event log, by type and route.",
        (({"type": t, "route": r or ""}, n) for t, r, n in counts),
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
    rows = cur.execute(
        """
        SELECT route, count(*), sum(queue_wait_ms) / 1000.0, sum(duration_ms) / 1000.0,
               quantile_cont(queue_wait_ms / 1000.0, [0.5, 0.9, 0.99]),
               quantile_cont(duration_ms / 1000.0, [0.5, 0.9, 0.99])
        FROM attempts GROUP BY route ORDER BY route NULLS FIRST
        """
    ).fetchall()
    for index, name, what in (
        (2, "cogo_attempt_queue_wait_seconds", "Queue wait of attempts (enqueued -> claimed)."),
        (3, "cogo_attempt_duration_seconds", "Duration of attempts (claimed -> result)."),
    ):
        samples: list[tuple[dict[str, Any], Any]] = []
        for row in rows:
            route = row[0] or ""
            for q, v in zip(PERCENTILES, row[index + 2] or [], strict=False):
                samples.append(({"route": route, "quantile": q}, v))
            samples.append(({"route": route, "__suffix": "_sum"}, row[index]))
            samples.append(({"route": route, "__suffix": "_count"}, row[1]))
        out.family(name, "summary", what, samples)
