"""``workflow_runs``: one row per workflow run, the record the Python fold keeps.

The row is ``cogo.workflows.record.RunRecord``, the same fold ``RunState`` applies for
``/api/orchestrator/state`` and ``/runs``: this module only loads the records a batch
touches, applies the batch's workflow events to them (decoded into their catalogue structs)
and writes them back, in the transaction that inserts the events. So the dashboard's run
list and ``/api/metrics/workflows`` (``cogo.projections.queries``) read exactly what the
orchestrator's fold says, and no SQL folds a run. Applied in stream order, batch after
batch, this is one fold of every workflow event: where the batches were cut does not
change a row.
"""

from __future__ import annotations

import logging
from typing import Any

import duckdb
import msgspec

from cogo.streams.events import decode_event
from cogo.workflows.record import RECORD_TYPES, RunRecord

log = logging.getLogger(__name__)

TABLE = """
CREATE TABLE IF NOT EXISTS workflow_runs (
    run_id VARCHAR PRIMARY KEY,
    workflow_id VARCHAR,
    start_seq BIGINT,          -- NULL until its workflow_started is projected
    started_at TIMESTAMP,
    outcome_seq BIGINT,
    outcome VARCHAR,           -- workflow_succeeded | workflow_failed | workflow_cancelled
    ended_at TIMESTAMP,
    error_code VARCHAR,
    error VARCHAR,
    parent_run_id VARCHAR,     -- data.parent.runId of its workflow_started (a child run)
    gates VARCHAR[] NOT NULL DEFAULT [],      -- node_id=verdict, in stream order
    artifacts VARCHAR[] NOT NULL DEFAULT [],  -- each node result's artifacts (JSON), in order
    signals VARCHAR[] NOT NULL DEFAULT [],    -- node_id=name of each signal node started
    over VARCHAR[] NOT NULL DEFAULT [],       -- node ids that finished (or were skipped)
    gates_passed BIGINT NOT NULL DEFAULT 0,
    gates_failed BIGINT NOT NULL DEFAULT 0
)
"""

_COLUMNS = RunRecord.__struct_fields__
_TYPES = {
    "start_seq": "BIGINT",
    "outcome_seq": "BIGINT",
    "gates_passed": "BIGINT",
    "gates_failed": "BIGINT",
    "gates": "VARCHAR[]",
    "artifacts": "VARCHAR[]",
    "signals": "VARCHAR[]",
    "over": "VARCHAR[]",
}
_TIMES = ("started_at", "ended_at")
_IN = "(" + ", ".join(f"'{t}'" for t in RECORD_TYPES) + ")"

# the records of the runs named in $1, timestamps as text (they go back through TRY_CAST)
_LOAD = f"""
SELECT {", ".join(f"{c}::VARCHAR" if c in _TIMES else c for c in _COLUMNS)}
FROM workflow_runs WHERE run_id IN (SELECT unnest($1::VARCHAR[]))
"""
# every record, one list parameter per column
_UNNEST = ", ".join(f"unnest(${i}::{_TYPES.get(c, 'VARCHAR')}[]) AS {c}" for i, c in enumerate(_COLUMNS, 1))
_STORE = f"""
INSERT INTO workflow_runs ({", ".join(_COLUMNS)})
SELECT {", ".join(f"TRY_CAST({c} AS TIMESTAMP)" if c in _TIMES else c for c in _COLUMNS)}
FROM (SELECT {_UNNEST})
ON CONFLICT (run_id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])}
"""


def fold_sync(con: duckdb.DuckDBPyConnection, where: str, params: list[Any] | None = None) -> None:
    """Fold the workflow events of ``bus_events`` matching ``where`` (in stream order) into
    the records of their runs, in the caller's transaction."""
    rows = con.execute(
        f"""
        SELECT seq, type, raw::VARCHAR FROM bus_events
        WHERE ({where}) AND type IN {_IN} AND correlation_id IS NOT NULL
        ORDER BY seq
        """,
        params or [],
    ).fetchall()
    if not rows:
        return
    events = []
    for seq, kind, raw in rows:
        try:
            event = decode_event(raw.encode())
        except msgspec.DecodeError as exc:  # the row keeps it; the fold cannot read it
            log.warning("workflow_runs: skipping the event at seq %d: %s", seq, exc)
            continue
        if event.type != kind:  # the subject's type is the one the row (and SQL) holds
            event = msgspec.structs.replace(event, type=kind)
        events.append((seq, event))
    records = load_sync(con, sorted({e.correlation_id or "" for _, e in events}))
    for seq, event in events:
        run_id = event.correlation_id or ""
        record = records.get(run_id)
        if record is None:
            record = records[run_id] = RunRecord(run_id=run_id)
        record.apply(event, seq)
    _store(con, list(records.values()))


def load_sync(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> dict[str, RunRecord]:
    """The stored records of ``run_ids`` (runs without a row are left out)."""
    rows = con.execute(_LOAD, [run_ids]).fetchall()
    return {row[0]: RunRecord(**dict(zip(_COLUMNS, row, strict=True))) for row in rows}


def _store(con: duckdb.DuckDBPyConnection, records: list[RunRecord]) -> None:
    if records:
        columns = [[getattr(r, c) for r in records] for c in _COLUMNS]
        con.execute(_STORE, columns)
