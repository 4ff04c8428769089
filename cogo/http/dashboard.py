"""The dashboard: a static page at ``/`` and its one summary endpoint ``GET /api/dashboard``.

The page (``cogo/http/static``) is public HTML with no outside dependencies; it asks for
the API token (or takes ``#token=...`` from the link ``cogo up`` prints), keeps it in
``localStorage``, polls ``/api/dashboard`` every few seconds and draws inline SVG charts.

``GET /api/dashboard[?window=1h]`` answers, from the DuckDB projection:

- ``decision_quality``: accepted / finished tasks, overall, by route and by version
  (accepted = succeeded, and no gate judged it bad: see ``cogo.workflows.gates``);
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
from cogo.http.app import ValidationFailed, field_error, state_of
from cogo.http.endpoint import Success, endpoint
from cogo.http.metrics import DURATION
from cogo.http.schemas import Query
from cogo.projections import queries, spend
from cogo.projections.tasks import recent_tasks
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

# One row per task that finished in the window: outcome, and whether it was accepted.
_TASKS = """
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
    SELECT task_id,
           arg_min(route, seq)                                               AS route,
           coalesce(max(version), 'unversioned')                             AS version,
           coalesce(max(cohort), 'baseline')                                 AS cohort,
           max(correlation_id)                                               AS correlation_id,
           bool_or(type = 'execute_done')                                    AS done,
           arg_max(raw->>'$.data.result.verdict', seq) FILTER (type = 'execute_done')
                                                                             AS verdict,
           max("at") FILTER (type IN ('execute_done', 'execute_failed'))     AS finished_at,
           arg_max(error_code, seq) FILTER (type = 'execute_failed')         AS error_code
    FROM ev GROUP BY task_id
) t LEFT JOIN rejected r ON r.correlation_id = t.correlation_id
"""

_RUNS = """
WITH starts AS (
    SELECT correlation_id AS run_id, min("at") AS started_at,
           any_value(raw->>'$.data.workflow_id') AS workflow_id,
           any_value(raw->>'$.data.parent.runId') AS parent_run_id
    FROM bus_events
    WHERE type = 'workflow_started' AND correlation_id IS NOT NULL
    GROUP BY ALL ORDER BY started_at DESC LIMIT $limit
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


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _share(accepted: int, finished: int) -> float | None:
    return round(accepted / finished, 4) if finished else None


_SPLITS = """
WITH dash_tasks AS ({tasks})
SELECT route, version, cohort, count(*), count(*) FILTER (NOT done), count(*) FILTER (accepted),
       grouping(route, version, cohort)
FROM dash_tasks
GROUP BY GROUPING SETS ((), (route), (version), (route, version, cohort))
ORDER BY ALL NULLS FIRST
"""

_MINUTES = """
WITH dash_tasks AS ({tasks})
SELECT time_bucket(INTERVAL 1 MINUTE, finished_at) AS minute,
       CASE WHEN done THEN NULL ELSE coalesce(error_code, 'unknown') END AS error_code,
       count(*) FILTER (done), count(*) FILTER (NOT done)
FROM dash_tasks WHERE finished_at IS NOT NULL
GROUP BY ALL ORDER BY ALL NULLS FIRST
"""


def summary(cur: duckdb.DuckDBPyConnection, since: dt.datetime) -> dict[str, Any]:
    """Everything the dashboard's cards draw, over the window from ``since`` (naive UTC)."""
    params = {"since": since}
    quality: dict[str, Any] = {"overall": {"finished": 0, "accepted": 0, "quality": None},
                               "by_route": [], "by_version": []}  # fmt: skip
    cohorts = []
    for route, version, cohort, n, failed, accepted, grouping in cur.execute(
        _SPLITS.format(tasks=_TASKS), params
    ).fetchall():
        row = {"finished": n, "accepted": accepted, "quality": _share(accepted, n)}
        if grouping == 0b111:
            quality["overall"] = row
        elif grouping == 0b011:
            quality["by_route"].append({"route": route, **row})
        elif grouping == 0b101:
            quality["by_version"].append({"version": version, **row})
        else:
            cohorts.append({"route": route, "version": version, "cohort": cohort,
                            "failures": failed, **row})  # fmt: skip
    throughput: dict[str, dict[str, Any]] = {}
    failures = []
    for minute, code, done, failed in cur.execute(_MINUTES.format(tasks=_TASKS), params).fetchall():
        bucket = throughput.setdefault(_iso(minute) or "", {"done": 0, "failed": 0})
        bucket["done"] += done
        bucket["failed"] += failed
        if code is not None:
            failures.append({"minute": _iso(minute), "error_code": code, "failures": failed})
    latency = queries.bus_latency(cur, since=since)
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
        ],  # fmt: skip
        "cohorts": cohorts,
        "throughput": {
            "finished": sum(b["done"] + b["failed"] for b in throughput.values()),
            "series": [{"minute": m, **b} for m, b in sorted(throughput.items())],
        },
        "failures": {"total": sum(f["failures"] for f in failures), "series": failures},
        "runs": [_run_row(row) for row in runs],
        # the agent runtime: what LLM calls cost, and the latest tasks (their output is live)
        "spend": spend.summary(cur, since),
        "tasks": recent_tasks(cur, since),
    }


def _run_row(row: tuple[Any, ...]) -> dict[str, Any]:
    (run_id, workflow_id, started, ended, outcome, error, gates, artifacts, signals, over,
     parent, children) = row  # fmt: skip
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
    waiting = []
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

    window: str = pydantic.Field(
        DEFAULT_WINDOW, pattern=DURATION, description="30s, 15m, 1h, 1d (at most 366d)"
    )


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
    controller = state.components.get("rollouts")
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
