"""The test set of ``tests/test_rollups.py`` and the SQL the rollups replaced (the reference
every reader is compared with): synthetic events over 90 minutes plus hand-made awkward ones,
fed to a ``ProjectionStore`` in uneven batches."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cogo.bench.projections import WORKFLOW_ID, synthetic_events
from cogo.projections import histogram
from cogo.projections.store import EventBatch, ProjectionStore

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


def event_body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def iso_of(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def awkward_events() -> list[bytes]:
    """Events the synthetic set lacks; each one is a way a rollup could drift from SQL."""
    at = iso_of(NOW - dt.timedelta(minutes=30, seconds=5))
    late = iso_of(NOW - dt.timedelta(minutes=1))
    later = iso_of(NOW - dt.timedelta(seconds=50))
    base = {"route": "echo.run.0", "attempt": 1}
    return [
        b"not json at all",
        b"[1, 2, 3]",
        event_body(
            event_id="x1", type="execute_done", at="yesterday", task_id="x1", **base, queue_wait_ms=2.0, duration_ms=3.0
        ),  # no valid "at": all-time figures only
        event_body(
            event_id="x2e",
            type="execute_enqueued",
            at=at,
            task_id="x2",
            queue_wait_ms=-3.0,
            version="v2",
            cohort="canary",
            **base,
        ),
        event_body(
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
        event_body(
            event_id="x3", type="execute_failed", at=at, task_id="x3", route=None, error_code=None, error="lost"
        ),  # no route, no code: 'unknown'
        event_body(
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
        event_body(
            event_id="r1s",
            type="workflow_started",
            at=late,
            correlation_id="run-x",
            data={"workflow_id": WORKFLOW_ID, "plan": {}},
        ),
        event_body(
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
        event_body(
            event_id="r1n",
            type="node_succeeded",
            at=at,
            correlation_id="run-x",
            data={"workflow_id": WORKFLOW_ID, "node_id": "a", "result": {"artifacts": ["run-x/a.json"]}},
        ),
        event_body(
            event_id="r1g",
            type="gate_failed",
            at=at,
            correlation_id="run-x",
            data={"workflow_id": WORKFLOW_ID, "node_id": "check", "verdict": "failed"},
        ),
        event_body(
            event_id="r1t2",
            type="execute_done",
            at=late,
            task_id="run-x:b:1",
            correlation_id="run-x",
            queue_wait_ms=2.5,
            duration_ms=19.5,
            **base,
        ),
        event_body(
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
        event_body(
            event_id="r2s",
            type="workflow_started",
            at=later,
            correlation_id="run-y",
            data={"workflow_id": WORKFLOW_ID, "plan": {}, "parent": {"runId": "run-x"}},
        ),
        event_body(
            event_id="r2a",
            type="node_started",
            at=at,
            correlation_id="run-y",
            data={"workflow_id": WORKFLOW_ID, "node_id": "approve", "node_type": "signal", "name": "approval"},
        ),
        event_body(
            event_id="r2b",
            type="node_started",
            at=at,
            correlation_id="run-y",
            data={"workflow_id": WORKFLOW_ID, "node_id": "ping", "node_type": "signal", "name": "ping"},
        ),
        event_body(
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
