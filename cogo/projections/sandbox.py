"""Ad-hoc SQL over the projections, read-only and sandboxed (``cogo sql``, ``POST /api/sql``).

Layers, each enough on its own for the common escapes, together for the rest:

1. DuckDB's parser (``extract_statements``): exactly one statement, of type SELECT (which
   covers WITH, VALUES, FROM-first, DESCRIBE, SUMMARIZE, SHOW) or EXPLAIN of one. COPY,
   ATTACH, INSTALL/LOAD, SET/RESET/USE, PRAGMA, CALL, DDL, DML, EXPORT, transactions are
   refused before anything runs.
2. The database instance itself (``store.HARDENED``): no external access (files, network:
   ``read_csv('/etc/passwd')``, ``glob``, URLs), no extension install or autoload, and the
   configuration locked so SQL cannot undo any of it.
3. A read-only transaction around the query, which catches what (1) cannot see, such as a
   ``DELETE ... RETURNING`` inside a CTE of a SELECT.
4. A timer that interrupts the query at its time limit, and a cap on the rows returned.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import duckdb

from cogo.errors import SqlInvalid, SqlRejected, SqlTimeout

DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
DEFAULT_MAX_ROWS = 10_000
MAX_ROWS = 100_000
MAX_SQL_CHARS = 100_000

_ALLOWED = {duckdb.StatementType.SELECT}
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(ANALYZE\s+)?", re.IGNORECASE)
_AT_HINT = re.compile(r"(?<![\"\w.])at(?![\"\w])", re.IGNORECASE)


@dataclass
class SqlResult:
    """Columns, rows (JSON-ready) and whether the row cap cut the result short."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "types": self.types,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "elapsed_ms": round(self.elapsed_ms, 3),
        }


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Reject anything but one read-only query, by DuckDB's own parser."""
    if not sql.strip():
        raise SqlRejected("empty query")
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRejected(f"query longer than {MAX_SQL_CHARS} characters")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlInvalid(_first_line(exc, sql)) from None
    if len(statements) != 1:
        raise SqlRejected(f"one statement at a time, got {len(statements)}")
    statement = statements[0]
    if statement.type == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: the explained statement must pass too
        inner = _EXPLAIN_PREFIX.sub("", statement.query, count=1)
        if inner == statement.query:
            raise SqlRejected("EXPLAIN options are not supported; use EXPLAIN [ANALYZE] SELECT")
        check_statement(con, inner)
        return
    if statement.type not in _ALLOWED:
        kind = str(statement.type).rsplit(".", 1)[-1]
        raise SqlRejected(f"only read-only queries (SELECT, WITH, EXPLAIN) are allowed, not {kind}")


def run_query(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> SqlResult:
    """Check and run ``sql`` on ``con`` (a cursor of its own: interrupt stops only it).

    Blocking: call it from a thread.
    """
    check_statement(con, sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    began = time.perf_counter()
    try:
        con.execute("BEGIN TRANSACTION READ ONLY")
        timer.start()
        try:
            relation = con.sql(sql)  # bound, not yet run
            if relation is None:
                raise SqlRejected("the statement returned no result")
            columns = list(relation.columns)
            types = [str(t) for t in relation.types]
            if any(_needs_text(t) for t in types):
                # TIMESTAMPTZ values need pytz to become Python objects: send them as text
                relation = relation.project(
                    ", ".join(
                        f"CAST(#{i} AS VARCHAR)" if _needs_text(t) else f"#{i}"
                        for i, t in enumerate(types, start=1)
                    )
                )
            raw = relation.limit(max_rows + 1).fetchall()
        finally:
            timer.cancel()
    except duckdb.InterruptException:
        raise SqlTimeout(f"query interrupted after its time limit of {timeout_s:g}s") from None
    except duckdb.PermissionException as exc:
        raise SqlRejected(
            f"file, network and extension access is disabled for ad-hoc SQL: {_first_line(exc)}"
        ) from None
    except duckdb.TransactionException as exc:
        if "read-only" in str(exc):
            raise SqlRejected(f"queries are read-only: {_first_line(exc)}") from None
        raise SqlInvalid(_first_line(exc, sql)) from None
    except duckdb.InvalidInputException as exc:
        if "configuration" in str(exc) and "locked" in str(exc):
            raise SqlRejected(f"settings cannot be changed: {_first_line(exc)}") from None
        raise SqlInvalid(_first_line(exc, sql)) from None
    except duckdb.Error as exc:
        raise SqlInvalid(_first_line(exc, sql)) from None
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
    elapsed_ms = (time.perf_counter() - began) * 1000.0
    truncated = len(raw) > max_rows
    rows = [[_jsonable(v) for v in row] for row in raw[:max_rows]]
    return SqlResult(
        columns=columns,
        types=types,
        rows=rows,
        truncated=truncated,
        elapsed_ms=elapsed_ms,
    )


def _needs_text(type_name: str) -> bool:
    return "WITH TIME ZONE" in type_name


def _first_line(exc: BaseException, sql: str | None = None) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    message = lines[0] if lines else type(exc).__name__
    if sql is not None and "syntax error" in message and _AT_HINT.search(sql):
        message += ' (hint: `at` is a reserved word in DuckDB; write "at" or bus_events.at)'
    return message


def _jsonable(value: Any) -> Any:
    """A DuckDB value as JSON: times as ISO-8601, decimals as numbers, blobs as base64."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)
