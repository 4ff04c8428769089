"""The dashboard: a static page at ``/`` and its one summary endpoint ``GET /api/dashboard``.

The page (``cogo/http/static``) is public HTML with no outside dependencies; it asks for
the API token (or takes ``#token=...`` from the link ``cogo up`` prints), keeps it in
``localStorage``, polls ``/api/dashboard`` every few seconds and draws inline SVG charts.

``GET /api/dashboard[?window=1h]`` answers, from the DuckDB projection's rollups
(``cogo.projections.rollups``: the cost does not grow with the events in the window):

- ``decision_quality``: accepted / finished tasks, overall, by route and by version
  (accepted = succeeded, and no gate judged it bad: see ``cogo.rollouts.gates``);
- ``queue_wait``: p50/p90 of queue wait (enqueued -> claimed) per route;
- ``failures``: terminal failures per minute and error code; ``throughput``: finished
  tasks per minute; ``cohorts``: the same split by version and cohort (baseline/canary);
- ``dlq``: messages in the DLQ stream; ``projector``: its lag in messages;
- ``runs``: recent workflow runs with status, duration, gate verdict, artifacts, the signals
  a running run waits for (``waiting``: a human gate shows Approve / Reject), its parent
  run and how many child runs it started;
- ``rollouts``: every rollout with its stage, split and gate figures;
- ``spend``: LLM calls, tokens and cost in the window, by route and by model
  (``cogo.projections.spend``); ``tasks``: the latest tasks, whose output the page streams
  live from ``GET /api/tasks/{id}/stream``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import pydantic
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cogo.errors import ProjectionBusy, Unavailable
from cogo.http.endpoint import Success, endpoint
from cogo.http.metrics import DURATION
from cogo.http.schemas import Query
from cogo.http.state import ValidationFailed, field_error, state_of
from cogo.projections import queries, rollups, spend, windows
from cogo.projections.tasks import recent_tasks, suspended_tasks
from cogo.projections.windows import Window
from cogo.streams.topology import DLQ

DEFAULT_WINDOW = "1h"
RECENT_RUNS = 25
STATIC_DIR = Path(str(resources.files("cogo.http").joinpath("static")))
# the page loads nothing from anywhere else, and nothing may frame it
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# Tasks that finished in the window, split by route / version / cohort, from the rollups:
# a task counts where its terminal event (execute_done or execute_failed) falls, with that
# event's route, version and cohort. Accepted = succeeded with a passing (or no) verdict,
# less those of workflow runs that a gate failed (rollup_run_tasks x rollup_gate_failures).
_SPLITS = """
WITH finished AS (
    SELECT route, version, cohort, sum(events) AS n,
           sum(events) FILTER (type = 'execute_failed') AS failed, sum(accepted) AS accepted
    FROM {events} WHERE type IN ('execute_done', 'execute_failed') GROUP BY ALL
), rejected AS (
    SELECT route, version, cohort, sum(done_ok) AS rejected
    FROM {run_tasks} r SEMI JOIN {gate_failures} g ON g.correlation_id = r.correlation_id
    GROUP BY ALL
), tasks AS (
    SELECT nullif(f.route, '') AS route,
           CASE f.version WHEN '' THEN 'unversioned' ELSE f.version END AS version,
           CASE f.cohort WHEN '' THEN 'baseline' ELSE f.cohort END AS cohort,
           f.n, f.failed, f.accepted - coalesce(r.rejected, 0) AS accepted
    FROM finished f LEFT JOIN rejected r USING (route, version, cohort)
)
SELECT route, version, cohort, sum(n)::BIGINT, coalesce(sum(failed), 0)::BIGINT,
       sum(accepted)::BIGINT, grouping(route, version, cohort)
FROM tasks
GROUP BY GROUPING SETS ((), (route), (version), (route, version, cohort))
HAVING sum(n) > 0
ORDER BY ALL NULLS FIRST
"""

_MINUTES = """
SELECT bucket AS minute,
       CASE WHEN type = 'execute_done' THEN NULL ELSE coalesce(nullif(error_code, ''), 'unknown') END,
       coalesce(sum(events) FILTER (type = 'execute_done'), 0)::BIGINT,
       coalesce(sum(events) FILTER (type = 'execute_failed'), 0)::BIGINT
FROM {events}
WHERE type IN ('execute_done', 'execute_failed') AND bucket <> TIMESTAMP '1970-01-01'
GROUP BY ALL HAVING sum(events) > 0 ORDER BY ALL NULLS FIRST
"""

# the most recent runs (rollups.workflow_runs: one row per run) and how many children each
_RUNS = """
WITH recent AS (
    SELECT * FROM workflow_runs WHERE start_seq IS NOT NULL
    ORDER BY started_at DESC, start_seq DESC LIMIT $limit
), kids AS (
    SELECT parent_run_id AS run_id, count(*) AS children FROM workflow_runs
    WHERE start_seq IS NOT NULL AND parent_run_id IN (SELECT run_id FROM recent)
    GROUP BY 1
)
SELECT r.run_id, r.workflow_id, r.started_at, r.ended_at, r.outcome, r.error, r.gates,
       r.artifacts, r.signals, r.over, r.parent_run_id, k.children
FROM recent r LEFT JOIN kids k USING (run_id)
ORDER BY r.started_at DESC, r.start_seq DESC
"""


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _share(accepted: int, finished: int) -> float | None:
    return round(accepted / finished, 4) if finished else None


def summary(cur: duckdb.DuckDBPyConnection, since: dt.datetime) -> dict[str, Any]:
    """Everything the dashboard's cards draw, over the window from ``since`` (naive UTC)."""
    with windows.snapshot(cur, since) as window:
        return _summary(cur, window)


def _summary(cur: duckdb.DuckDBPyConnection, window: Window) -> dict[str, Any]:
    since = window.since
    assert since is not None  # the dashboard always has a window
    params = window.params()
    splits = _SPLITS.format(
        events=windows.relation(rollups.EVENTS, window),
        run_tasks=windows.run_tasks_relation(window),
        gate_failures=windows.gate_failures_relation(),
    )
    minutes = _MINUTES.format(events=windows.relation(rollups.EVENTS, window, series=True))
    quality: dict[str, Any] = {
        "overall": {"finished": 0, "accepted": 0, "quality": None},
        "by_route": [],
        "by_version": [],
    }
    cohorts = []
    for route, version, cohort, n, failed, accepted, grouping in cur.execute(
        splits, windows.bind(splits, params)
    ).fetchall():
        row = {"finished": n, "accepted": accepted, "quality": _share(accepted, n)}
        if grouping == 0b111:
            quality["overall"] = row
        elif grouping == 0b011:
            quality["by_route"].append({"route": route, **row})
        elif grouping == 0b101:
            quality["by_version"].append({"version": version, **row})
        else:
            cohorts.append({"route": route, "version": version, "cohort": cohort, "failures": failed, **row})
    throughput: dict[str, dict[str, Any]] = {}
    failures = []
    for minute, code, done, failed in cur.execute(minutes, windows.bind(minutes, params)).fetchall():
        bucket = throughput.setdefault(_iso(minute) or "", {"done": 0, "failed": 0})
        bucket["done"] += done
        bucket["failed"] += failed
        if code is not None:
            failures.append({"minute": _iso(minute), "error_code": code, "failures": failed})
    latency = queries.latency_in(cur, window)
    runs = cur.execute(_RUNS, {"limit": RECENT_RUNS}).fetchall()
    return {
        "decision_quality": quality,
        "queue_wait": [
            {
                "route": r["route"],
                "attempts": r["count"],
                "tasks": r["tasks"],
                "p50_ms": r["queue_wait_ms"]["p50"],
                "p90_ms": r["queue_wait_ms"]["p90"],
                "duration_p90_ms": r["duration_ms"]["p90"],
            }
            for r in latency["routes"]
            if r["route"] and r["count"]
        ],
        "cohorts": cohorts,
        "throughput": {
            "finished": sum(b["done"] + b["failed"] for b in throughput.values()),
            "series": [{"minute": m, **b} for m, b in sorted(throughput.items())],
        },
        "failures": {"total": sum(f["failures"] for f in failures), "series": failures},
        "runs": [_run_row(row) for row in runs],
        # the agent runtime: what LLM calls cost, and the latest tasks (their output is live)
        "spend": spend.summary(cur, since),
        "tasks": recent_tasks(cur, window.since),
        # durable agents waiting for a call, a timer or a signal (their trees by parent)
        "suspended": suspended_tasks(cur, window.since),
    }


def _run_row(row: tuple[Any, ...]) -> dict[str, Any]:
    (run_id, workflow_id, started, ended, outcome, error, gates, artifacts, signals, over, parent, children) = row
    verdicts = dict(g.split("=", 1) for g in gates or [] if g and "=" in g)
    verdict = None
    if verdicts:
        verdict = "failed" if "failed" in verdicts.values() else "passed"
    keys: list[str] = []
    for raw in artifacts or []:
        with contextlib.suppress(ValueError, TypeError):
            keys.extend(k for k in json.loads(raw) if isinstance(k, str) and k not in keys)
    status = (outcome or "workflow_running").removeprefix("workflow_")
    done = set(over or [])
    waiting: list[dict[str, Any]] = []
    if status == "running":
        for entry in signals or []:
            node, _, name = (entry or "").partition("=")
            if node and node not in done and not any(w["node"] == node for w in waiting):
                waiting.append({"node": node, "name": name})
    return {
        "runId": run_id,
        "workflowId": workflow_id,
        "status": status,
        "startedAt": _iso(started),
        "endedAt": _iso(ended),
        "durationMs": round((ended - started).total_seconds() * 1000.0, 3) if ended else None,
        "error": error,
        "verdict": verdict,
        "gates": verdicts,
        "artifacts": keys,
        "waiting": waiting,
        "parentRunId": parent,
        "children": children or 0,
    }


class DashboardQuery(Query):
    """The query of ``GET /api/dashboard``."""

    window: str = pydantic.Field(DEFAULT_WINDOW, pattern=DURATION, description="30s, 15m, 1h, 1d (at most 366d)")


@endpoint(
    query=DashboardQuery,
    ok={200: "every card's figures over the window"},
    errors=(ProjectionBusy, Unavailable),
)
async def dashboard_summary(request: Request, query: DashboardQuery) -> JSONResponse:
    """The dashboard's cards: decision quality, queue wait, failures, throughput, DLQ, runs."""
    from cogo.http.metrics import projector_of

    window = query.window
    try:
        window_s = queries.parse_duration(window)
    except ValueError as exc:
        raise ValidationFailed([field_error(["query", "window"], str(exc))]) from None
    state = state_of(request)
    projector = projector_of(request)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    since = now - dt.timedelta(seconds=window_s)
    body = await projector.store.read(lambda cur: summary(cur, since))
    dlq: dict[str, Any] = {"messages": None}
    with contextlib.suppress(Exception):
        info = await state.js.stream_info(DLQ)
        dlq = {"messages": info.state.messages, "bytes": info.state.bytes}
    rollouts: list[dict[str, Any]] = []
    controller = state.rollouts
    if controller is not None:
        rollouts = [r.view() for r in reversed(await controller.list())]
    stats = projector.stats()
    return JSONResponse(
        {
            "window": window,
            "since": _iso(since),
            "generated_at": _iso(now),
            **body,
            "dlq": dlq,
            "projector": {"lag": stats["lag"], "streams": stats["streams"]},
            "rollouts": rollouts,
        }
    )


@endpoint(ok={200: Success("the dashboard page", media_type="text/html")})
async def index(request: Request) -> Response:
    """The dashboard page (public HTML; the data behind it needs the API token)."""
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


routes = [
    Route("/", index, methods=["GET"]),
    Route("/api/dashboard", dashboard_summary, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]
