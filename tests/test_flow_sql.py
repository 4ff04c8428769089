"""The flow-control views (``30_flow.sql``) on raw events written into a real DuckDB file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cogo.projections.store import EventBatch, ProjectionStore

DAY = "2026-03-02T10:00:"


def throttled(
    task: str, key: str, held_at: str, at: str, attempt: int = 1, limit: str = "concurrency_per_key"
) -> dict[str, Any]:
    return {
        "event_id": f"{task}:throttled:{attempt}",
        "type": "execute_throttled",
        "at": DAY + at,
        "task_id": task,
        "route": "echo.run.0",
        "attempt": attempt,
        "data": {"limit": limit, "key": key, "priority": 5, "held_at": DAY + held_at},
    }


def enqueued(task: str, at: str, attempt: int = 1) -> dict[str, Any]:
    return {
        "event_id": f"{task}:enqueued:{attempt}",
        "type": "execute_enqueued",
        "at": DAY + at,
        "task_id": task,
        "route": "echo.run.0",
        "attempt": attempt,
        "data": {"held_ms": 1.0},
    }


EVENTS = [
    # acme: two overlapping holds (00.0-02.0 and 01.0-03.5), then one that expired (10-11)
    throttled("t1", "acme", "00.000000Z", "00.010000Z"),
    throttled("t2", "acme", "01.000000Z", "01.005000Z"),
    enqueued("t1", "02.000000Z"),
    # the same hold announced again (a new admitter after a takeover): still one hold
    {**throttled("t1", "acme", "00.000000Z", "02.500000Z"), "event_id": "t1:throttled:1:again"},
    enqueued("t2", "03.500000Z"),
    throttled("t3", "acme", "10.000000Z", "10.001000Z", limit="rate_per_key_s"),
    {
        "event_id": "t3:terminal",
        "type": "execute_failed",
        "at": DAY + "11.000000Z",
        "task_id": "t3",
        "route": "echo.run.0",
        "attempt": 0,
        "error_code": "assignment.ttl_expired",
        "data": {"limit": "rate_per_key_s", "key": "acme", "held_ms": 1000.0},
    },
    # t1's retry was held too, for 250 ms
    throttled("t1", "acme", "20.000000Z", "20.001000Z", attempt=2),
    enqueued("t1", "20.250000Z", attempt=2),
    # beta: held now, not admitted yet
    throttled("t4", "beta", "05.000000Z", "05.002000Z", limit="concurrency"),
    # a task that was never held is not in the views
    enqueued("t5", "06.000000Z"),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProjectionStore]:
    store = ProjectionStore(tmp_path / "cogo.duckdb", readers=0)
    store.open_sync()
    bodies = [json.dumps(e).encode() for e in EVENTS]
    store.apply_events_sync(EventBatch(list(range(1, len(bodies) + 1)), bodies))
    try:
        yield store
    finally:
        store.close_sync()
        store.shutdown()


def rows(store: ProjectionStore, sql: str) -> list[dict[str, Any]]:
    cursor = store.con.execute(sql)
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def test_flow_holds_one_row_per_held_attempt(store):
    got = {(r["task_id"], r["attempt"]): r for r in rows(store, "SELECT * FROM flow_holds")}
    assert set(got) == {("t1", 1), ("t2", 1), ("t3", 1), ("t1", 2), ("t4", 1)}
    assert got[("t1", 1)]["held_ms"] == 2000.0 and got[("t1", 1)]["outcome"] == "admitted"
    assert got[("t2", 1)]["held_ms"] == 2500.0
    assert got[("t3", 1)]["outcome"] == "expired" and got[("t3", 1)]["held_ms"] == 1000.0
    assert got[("t3", 1)]["held_by"] == "rate_per_key_s"
    assert got[("t1", 2)]["held_ms"] == 250.0
    assert got[("t4", 1)]["outcome"] == "held" and got[("t4", 1)]["held_ms"] is None
    assert got[("t1", 1)]["key"] == "acme" and got[("t1", 1)]["priority"] == 5


def test_how_long_was_a_tenant_throttled(store):
    periods = rows(store, "SELECT * FROM flow_throttled_periods WHERE key = 'acme' ORDER BY held_from")
    # overlapping holds merge into one period: 00.0 -> 03.5
    assert [(p["held_ms"], p["holds"]) for p in periods] == [(3500.0, 2), (1000.0, 1), (250.0, 1)]
    (acme,) = rows(store, "SELECT * FROM flow_throttled_by_key WHERE key = 'acme'")
    assert acme["throttled_ms"] == 4750.0  # wall clock with at least one task held
    assert acme["held_ms_total"] == 5750.0  # the holds of every task added up
    assert acme["holds"] == 4 and acme["expired"] == 1 and acme["holding"] == 0
    assert acme["held_ms_max"] == 2500.0 and acme["periods"] == 3
    (beta,) = rows(store, "SELECT * FROM flow_throttled_by_key WHERE key = 'beta'")
    assert beta["holding"] == 1 and beta["held_ms_total"] is None
