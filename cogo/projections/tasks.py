"""One task's status, folded from its events in ``bus_events`` (``GET /api/tasks/{id}``).

``status`` is read off the last fact of the newest attempt:

    queued      execute_enqueued (waiting for a worker, or in a worker's first moments)
    running     execute_started: a worker has held this attempt for a moment
    retrying    execute_retry: the attempt failed, the next waits for its backoff
    suspended   execute_suspended: a durable agent waits for a call, a timer or a signal
                (``waiting_for``); execute_resumed makes it queued again
    succeeded   execute_done          failed   execute_failed     cancelled   execute_cancelled

A task started by ``ctx.call`` has a ``parent_id``; a task's ``children`` are those it
started (its ``call_started`` entries).

Only the dispatcher may append the ``execute_*`` facts it owns (and a row's type and route
are those of its subject, which permissions bind: ``cogo.projections.store``);
``execute_started`` comes from workers, so it counts only for the route and the attempts
the dispatcher's own events gave the task (under ``--auth`` an app may append it for its
own routes only, and a task id is no secret): another route's worker cannot make a task
look running, nor raise its attempt.

The same answer is served over NATS (``cogo.tasks.status``, request/reply) by whichever
process runs the projector, so ``cogo.Client.status`` needs no HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from cogo.streams.status import TERMINAL, TaskStatus
from cogo.streams.topology import STATUS_SUBJECT

if TYPE_CHECKING:
    import duckdb

__all__ = ["STATUS_SUBJECT", "TaskStatus", "fold", "task_status"]
WORKER_TYPES = {"execute_started"}  # appended by workers, not by the dispatcher
MAX_EVENTS = 1000


_EVENTS = """
SELECT type, strftime("at", '%Y-%m-%dT%H:%M:%S.%fZ') AS at_iso, attempt, route, actor,
       error_code, error, queue_wait_ms, duration_ms, backoff_ms, version, cohort,
       tokens, cost_usd, usage_duration_ms,
       strftime(submitted_at, '%Y-%m-%dT%H:%M:%S.%fZ') AS submitted_iso,
       raw->'$.data.result' AS result, raw->'$.data.detail' AS detail,
       causation_id, raw->'$.data.waiting_for' AS waiting_for,
       raw->>'$.data.child_id' AS child_id
FROM bus_events
WHERE task_id = $task_id AND (type LIKE 'execute_%' OR type = 'call_started')
ORDER BY seq
LIMIT {limit}
"""


# The newest tasks are found in the last {tail} events (zone maps on seq keep the scan to
# them), and each one's figures are taken from its first enqueue on: a task has no event
# before its first execute_enqueued, so nothing of it is missed.
_RECENT = """
WITH recent AS (
    SELECT task_id, min(seq) FILTER (attempt = 1) AS first_seq FROM bus_events
    WHERE seq > $floor AND type = 'execute_enqueued' AND "at" >= $since AND task_id IS NOT NULL
    GROUP BY task_id ORDER BY max(seq) DESC LIMIT $limit
)
SELECT count(*), min(first_seq), count(*) FILTER (first_seq IS NULL) FROM recent
"""
_RECENT_ROWS = """
WITH recent AS (
    SELECT task_id FROM bus_events
    WHERE seq > $floor AND type = 'execute_enqueued' AND "at" >= $since AND task_id IS NOT NULL
    GROUP BY task_id ORDER BY max(seq) DESC LIMIT $limit
)
SELECT b.task_id, arg_min(b.route, b.seq), max(b.attempt),
       arg_max(b.type, b.seq) FILTER (b.type LIKE 'execute_%'),
       strftime(min(b."at"), '%Y-%m-%dT%H:%M:%S.%fZ'),
       count(*) FILTER (b.type = 'llm_call'), count(*) FILTER (b.type = 'step_completed')
FROM bus_events b SEMI JOIN recent r ON b.task_id = r.task_id
WHERE b.seq >= $first
GROUP BY b.task_id ORDER BY max(b.seq) DESC
"""
RECENT_TAIL = 20_000  # events looked at first; eight times more each time that is too few
_STATE = {
    "execute_enqueued": "queued",
    "execute_started": "running",
    "execute_retry": "retrying",
    "execute_done": "succeeded",
    "execute_failed": "failed",
    "execute_suspended": "suspended",
    "execute_resumed": "queued",
    "execute_cancelled": "cancelled",
}


def recent_tasks(con: duckdb.DuckDBPyConnection, since: Any, limit: int = 20) -> list[dict[str, Any]]:
    """The ``limit`` tasks enqueued last since ``since``: status, attempt, calls and steps.

    Costs the last few thousand events, not the window: the search widens only while the
    tail holds fewer than ``limit`` such tasks (or one whose first attempt is older).
    """
    row = con.execute("SELECT max(seq) FROM bus_events").fetchone()
    last = int(row[0]) if row and row[0] is not None else 0
    tail = RECENT_TAIL
    while True:
        floor = max(0, last - tail)
        params = {"floor": floor, "since": since, "limit": limit}
        found, first, without_first = con.execute(_RECENT, params).fetchone() or (0, None, 0)
        if floor == 0 or (found >= limit and not without_first):
            break
        tail *= 8
    first_seq = 0 if floor == 0 or first is None else int(first)
    rows = con.execute(_RECENT_ROWS, {**params, "first": first_seq}).fetchall()
    return [
        {
            "task_id": task_id,
            "route": route,
            "attempt": attempt or 0,
            "status": _STATE.get(last_type or "", "queued"),
            "enqueued_at": at,
            "llm_calls": calls,
            "steps": steps,
        }
        for task_id, route, attempt, last_type, at, calls, steps in rows
    ]


# tasks whose latest fact in the window is execute_suspended: what each waits for, and
# where it sits in its tree (a task started by ctx.call is <parent>/<key>, caused by it)
_SUSPENDED = """
WITH last AS (
    SELECT task_id, arg_max(type, seq) AS last_type, arg_max(route, seq) AS route,
           arg_max(raw->'$.data.waiting_for', seq) AS waiting_for, max("at") AS since,
           any_value(causation_id) FILTER (starts_with(task_id, causation_id || '/')) AS parent
    FROM bus_events
    WHERE "at" >= $since AND task_id IS NOT NULL AND type LIKE 'execute_%'
    GROUP BY task_id
)
SELECT task_id, route, parent, waiting_for, strftime(since, '%Y-%m-%dT%H:%M:%S.%fZ')
FROM last WHERE last_type = 'execute_suspended'
ORDER BY since DESC LIMIT $limit
"""


def suspended_tasks(con: duckdb.DuckDBPyConnection, since: Any, limit: int = 50) -> list[dict[str, Any]]:
    """The tasks suspended now (that were active since ``since``): what each waits for, its
    parent (``ctx.call``) and its depth in its tree."""
    rows = con.execute(_SUSPENDED, {"since": since, "limit": limit}).fetchall()
    out = []
    for task_id, route, parent, waiting, at in rows:
        depth = task_id.count("/") if parent else 0
        out.append(
            {
                "task_id": task_id,
                "route": route,
                "parent_id": parent,
                "depth": depth,
                "waiting_for": msgspec.json.decode(waiting) if waiting else [],
                "suspended_at": at,
            }
        )
    return out


def task_status(con: duckdb.DuckDBPyConnection, task_id: str) -> TaskStatus | None:
    """The status of ``task_id``, or None when the projection holds no event of it."""
    cursor = con.execute(_EVENTS.format(limit=MAX_EVENTS), {"task_id": task_id})
    columns = [d[0] for d in cursor.description]
    rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    if not rows:
        return None
    return fold(task_id, rows)


def fold(task_id: str, rows: list[dict[str, Any]]) -> TaskStatus:
    """Fold a task's ``execute_*`` rows (in stream order) into its status."""
    status, attempt, route, submitted = "queued", 0, None, None
    result: Any = None
    error_code = error = finished = None
    usage: dict[str, Any] = {}
    events = []
    terminal = False
    parent_id: str | None = None
    children: list[str] = []
    waiting: list[dict[str, Any]] | None = None
    for row in rows:
        kind = row["type"]
        if kind in WORKER_TYPES and (route is None or row["route"] != route or (row["attempt"] or 0) > attempt):
            continue  # not from a worker of this task's route and attempts: no fact of it
        if kind == "call_started":
            # the task's own route's entry naming one of its own children (<task>/<key>):
            # under --auth no other app may append to that route's subjects
            child = row.get("child_id")
            if route is None or row["route"] != route or not child:
                continue
            if child.startswith(task_id + "/") and child not in children:
                children.append(row["child_id"])
            continue
        cause = row.get("causation_id")
        if parent_id is None and cause and task_id.startswith(cause + "/"):
            parent_id = cause
        route = route or row["route"]
        submitted = submitted or row["submitted_iso"]
        attempt = max(attempt, row["attempt"] or 0)
        events.append(
            {
                k: v
                for k, v in {
                    "type": kind,
                    "at": row["at_iso"],
                    "attempt": row["attempt"],
                    "actor": row["actor"],
                    "error_code": row["error_code"],
                    "error": row["error"],
                    "queue_wait_ms": row["queue_wait_ms"],
                    "duration_ms": row["duration_ms"],
                    "backoff_ms": row["backoff_ms"],
                    "version": row["version"],
                    "cohort": row["cohort"],
                }.items()
                if v is not None
            }
        )
        if kind not in WORKER_TYPES and (row["tokens"] is not None or row["cost_usd"] is not None):
            usage = {
                "tokens": row["tokens"] or 0,
                "cost_usd": row["cost_usd"] or 0.0,
                "duration_ms": row["usage_duration_ms"] or 0.0,
            }
        if terminal:
            continue  # nothing after the terminal event changes the outcome
        if kind in TERMINAL:
            status, terminal, finished = TERMINAL[kind], True, row["at_iso"]
            error_code, error = row["error_code"], row["error"]
            if kind == "execute_done" and row["result"] is not None:
                result = msgspec.json.decode(row["result"])
        elif kind == "execute_retry":
            status, error_code, error = "retrying", row["error_code"], row["error"]
            waiting = None
        elif kind == "execute_enqueued":
            status = "queued"
        elif kind == "execute_suspended":
            status = "suspended"
            raw = row.get("waiting_for")
            waiting = msgspec.json.decode(raw) if raw else []
        elif kind == "execute_resumed":
            status, waiting = "queued", None
        elif kind == "execute_started" and (row["attempt"] or 0) >= attempt:
            status = "running"
    return TaskStatus(
        task_id=task_id,
        route=route,
        status=status,
        attempt=attempt,
        result=result,
        error_code=error_code,
        error=error,
        usage=usage,
        submitted_at=submitted,
        finished_at=finished,
        events=events,
        parent_id=parent_id,
        children=children,
        waiting_for=waiting if not terminal else None,
    )
