"""Reading the rollups over a time window ``[since, now]``, exactly.

``relation(family, window)`` is SQL for rows that together cover the window:

- hour rows for every hour that starts at or after the window's first whole minute, and
  minute rows for the minutes before that hour (``series=True``: minute rows throughout);
- for the part of the minute ``since`` falls in, the same aggregates computed from
  ``bus_events`` on the spot (``cogo.projections.rollups`` defines both, once);
- the same, for the rows after ``rollup_state.folded_seq`` that the rollup tables do not
  hold yet (at most ``rollups.FOLD_ROWS``, usually a second of traffic).

Summing any measure over the relation gives what the raw SQL over ``"at" >= since`` gives.
A window without ``since`` reads the all-time rows. Cost: ~60 minute rows and one hour row
per key for each hour of the window, plus the events of one minute and the unfolded tail
(both found through zone maps on ``at`` and ``seq``), not the events of the window.

Read inside ``snapshot``: one transaction, so a fold committing meanwhile cannot make the
stored rows and the tail overlap.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from cogo.projections import rollups
from cogo.projections.rollups import Family

MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)


def _ceil(value: dt.datetime, step: dt.timedelta) -> dt.datetime:
    epoch = rollups.EPOCH
    steps = -((epoch - value) // step)  # ceiling division of timedeltas
    return epoch + steps * step


@dataclass(frozen=True)
class Window:
    """``[since, now]`` in naive UTC (``since=None``: all time), as of a folded sequence."""

    since: dt.datetime | None
    folded: int = 0

    @property
    def edge_end(self) -> dt.datetime | None:
        """The first whole minute at or after ``since``."""
        return None if self.since is None else _ceil(self.since, MINUTE)

    @property
    def hour_start(self) -> dt.datetime | None:
        """The first whole hour at or after ``edge_end``."""
        edge = self.edge_end
        return None if edge is None else _ceil(edge, HOUR)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"folded": self.folded}
        if self.since is not None:
            params.update(since=self.since, edge_end=self.edge_end, hour_start=self.hour_start)
        return params


@contextlib.contextmanager
def snapshot(cur: duckdb.DuckDBPyConnection, since: dt.datetime | None) -> Iterator[Window]:
    """A read transaction and the window as of its snapshot."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield Window(since, rollups.folded_seq_sync(cur))
    finally:
        cur.execute("ROLLBACK")  # it only read


def bind(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters ``sql`` names (DuckDB refuses named parameters a statement lacks)."""
    return {k: v for k, v in params.items() if f"${k}" in sql}


def raw_sql(delta: str, where: str, bucket: str = rollups.MINUTE_BUCKET) -> str:
    """``delta`` (a rollup's delta query) computed from the events matching ``where``."""
    source = rollups.SOURCE.format(where=where, bucket=bucket)
    return f"(WITH src AS ({source}) {delta.format(src='src', sign=1)})"


def _raw_parts(delta: str, window: Window) -> list[str]:
    if window.since is None:
        return [raw_sql(delta, "seq > $folded")]
    return [
        raw_sql(delta, '"at" >= $since AND "at" < $edge_end AND seq <= $folded'),
        raw_sql(delta, 'seq > $folded AND "at" >= $since'),
    ]


def _union(parts: list[str]) -> str:
    return "(" + " UNION ALL BY NAME ".join(f"({p})" for p in parts) + ")"


def relation(family: Family, window: Window, *, series: bool = False) -> str:
    """SQL for the rows of ``family`` that cover ``window`` (see the module docstring)."""
    delta = rollups.EVENTS_DELTA if family is rollups.EVENTS else rollups.LATENCY_DELTA
    parts = _raw_parts(delta, window)
    if window.since is None:
        parts.append(f"SELECT * FROM {family.table('minute' if series else 'total')}")
    elif series:
        parts.append(f"SELECT * FROM {family.table('minute')} WHERE bucket >= $edge_end")
    else:
        parts.append(f"SELECT * FROM {family.table('minute')} WHERE bucket >= $edge_end AND bucket < $hour_start")
        parts.append(f"SELECT * FROM {family.table('hour')} WHERE bucket >= $hour_start")
    return _union(parts)


def run_tasks_relation(window: Window) -> str:
    """``rollup_run_tasks`` rows (minute grain only) covering ``window``."""
    parts = _raw_parts(rollups.RUN_TASKS_DELTA, window)
    stored = "SELECT * FROM rollup_run_tasks"
    parts.append(stored if window.since is None else f"{stored} WHERE bucket >= $edge_end")
    return _union(parts)


def gate_failures_relation() -> str:
    """Correlation ids with a failed gate, folded or not."""
    return (
        "(SELECT correlation_id FROM rollup_gate_failures WHERE gate_failures > 0 "
        "UNION SELECT correlation_id FROM bus_events WHERE seq > $folded "
        "AND type = 'gate_failed' AND correlation_id IS NOT NULL)"
    )
