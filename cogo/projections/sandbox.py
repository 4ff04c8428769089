"""Ad-hoc SQL over the projections, read-only and sandboxed (``cogo sql``, ``POST /api/sql``).

Layers, each enough on its own for the common escapes, together for the rest:

1. DuckDB's parser (``extract_statements``): exactly one statement, of type SELECT (which
   covers WITH, VALUES, FROM-first, DESCRIBE, SUMMARIZE, SHOW) or EXPLAIN of one. COPY,
   ATTACH, INSTALL/LOAD, SET/RESET/USE, PRAGMA, CALL, DDL, DML, EXPORT, transactions are
   refused before anything runs.
2. The database instance itself (``store.HARDENED``): no external access (files, network:
   ``read_csv('/etc/passwd')``, ``glob``, URLs), no extension install or autoload, and the
   configuration locked so SQL cannot undo any of it.
3. The functions it calls, read from DuckDB's own parse tree (``json_serialize_sql``): a
   table function must be on a list of read-only ones (``checkpoint()`` writes the file
   even in a read-only transaction; ``query()`` runs a string as SQL; ``arrow_scan`` reads
   raw pointers), and scalar functions with side effects or that block (``setseed``,
   ``nextval``, ``write_log``, ``sleep_ms``) are refused.
4. A read-only transaction around the query, which catches what (1) cannot see, such as a
   ``DELETE ... RETURNING`` inside a CTE of a SELECT.
5. A watchdog that interrupts the query from its deadline on, again and again until the
   query's thread is done: one ``interrupt()`` that lands before the query has started is
   lost (DuckDB clears the flag when a query begins), so a single timer let a query run
   unbounded. DuckDB's ``memory_limit`` and spill cap (``[duckdb]`` in the config) bound
   its memory and disk; the answer is cut at ``max_rows`` rows and ``max_bytes`` bytes,
   sized by DuckDB as it streams, so nothing past the cap becomes a Python object.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import msgspec

from cogo.errors import SqlInvalid, SqlRejected, SqlTimeout

DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
DEFAULT_MAX_ROWS = 10_000
MAX_ROWS = 100_000
MAX_SQL_CHARS = 100_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
FETCH_ROWS = 1024
# how often the watchdog repeats interrupt() once the deadline has passed
INTERRUPT_EVERY_S = 0.01

# Table functions that only read (the catalog, generators, JSON helpers). Anything else is
# refused: checkpoint/force_checkpoint write the file, query()/query_table() run strings as
# SQL past the statement check, *_scan read Python objects or raw pointers, enable_*/
# truncate_*/register_* change the instance, read_*/glob reach files.
READ_ONLY_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "repeat_row",
        "json_each",
        "json_tree",
        "summary",
        "test_all_types",
        "test_vector_types",
        "icu_calendar_names",
        "pg_timezone_names",
        "pragma_collations",
        "pragma_database_size",
        "pragma_metadata_info",
        "pragma_platform",
        "pragma_show",
        "pragma_storage_info",
        "pragma_table_info",
        "pragma_user_agent",
        "pragma_version",
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_databases",
        "duckdb_dependencies",
        "duckdb_functions",
        "duckdb_indexes",
        "duckdb_keywords",
        "duckdb_memory",
        "duckdb_optimizers",
        "duckdb_schemas",
        "duckdb_sequences",
        "duckdb_settings",
        "duckdb_tables",
        "duckdb_temporary_files",
        "duckdb_types",
        "duckdb_views",
    }
)
# Scalar functions with a side effect (RNG state, sequences, the log) or that sleep
# without looking at the interrupt flag.
REFUSED_FUNCTIONS = frozenset({"setseed", "nextval", "setval", "write_log", "sleep_ms", "pg_sleep"})
_FILE_FUNCTION = re.compile(r"^(read_|parquet_|sniff_csv$|glob$)")

_ALLOWED = {duckdb.StatementType.SELECT}
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(ANALYZE\s+)?", re.IGNORECASE)
_AT_HINT = re.compile(r"(?<![\"\w.])at(?![\"\w])", re.IGNORECASE)


@dataclass
class SqlResult:
    """Columns, rows (JSON-ready) and whether a cap (rows or bytes) cut the result short."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float
    truncated_by: str | None = None  # "max_rows" or "max_bytes"

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "types": self.types,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "truncated_by": self.truncated_by,
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
    check_functions(con, statement.query)


def check_functions(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse table functions off the read-only list and scalar functions with side effects."""
    row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    assert row is not None  # a scalar SELECT has one row
    tree = json.loads(row[0])
    if tree.get("error"):
        # PIVOT and a few other forms have no serialized tree: unseen is refused
        raise SqlRejected(
            "this query form cannot be checked for side effects; write it as a plain SELECT "
            f"({tree.get('error_message', 'not serializable')})"
        )
    for name, is_table in _functions(tree):
        if is_table and _FILE_FUNCTION.match(name):
            raise SqlRejected(f"file, network and extension access is disabled for ad-hoc SQL: {name}()")
        if is_table and name not in READ_ONLY_TABLE_FUNCTIONS:
            raise SqlRejected(f"table function {name}() is not allowed in ad-hoc SQL")
        if name in REFUSED_FUNCTIONS:
            raise SqlRejected(
                f"function {name}() is not allowed in ad-hoc SQL (it has side effects or cannot be interrupted)"
            )


def _functions(node: Any, table: bool = False) -> Iterator[tuple[str, bool]]:
    """Every function call in a serialized parse tree: (lower-case name, is a table function)."""
    stack: list[tuple[Any, bool]] = [(node, table)]
    while stack:
        item, is_table = stack.pop()
        if isinstance(item, list):
            stack.extend((child, False) for child in item)
        elif isinstance(item, dict):
            if isinstance(item.get("function_name"), str):
                yield item["function_name"].lower(), is_table
            for key, child in item.items():
                # a TABLE_FUNCTION table ref holds its call under "function"
                stack.append((child, key == "function" and item.get("type") == "TABLE_FUNCTION"))


def run_query(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SqlResult:
    """Check and run ``sql`` on ``con`` (a cursor of its own: interrupt stops only it).

    Blocking: call it from a thread.
    """
    check_statement(con, sql)
    done = threading.Event()
    watchdog = threading.Thread(target=_interrupt_after, args=(con, timeout_s, done), name="sql-watchdog", daemon=True)
    began = time.perf_counter()
    try:
        con.execute("BEGIN TRANSACTION READ ONLY")
        watchdog.start()
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
                        f"CAST(#{i} AS VARCHAR)" if _needs_text(t) else f"#{i}" for i, t in enumerate(types, start=1)
                    )
                )
            # run once, streamed: rows are converted and counted chunk by chunk, and sized
            # by DuckDB before Python sees them (_capped)
            con.execute(_capped(relation.limit(max_rows + 1), len(columns), max_bytes))
            rows, truncated_by = _fetch(con, max_rows, max_bytes)
        finally:
            done.set()
            if watchdog.is_alive():
                watchdog.join()
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
    except duckdb.OutOfMemoryException as exc:
        raise SqlRejected(f"the query needs more memory than allowed: {_first_line(exc)}") from None
    except duckdb.Error as exc:
        raise SqlInvalid(_first_line(exc, sql)) from None
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
    return SqlResult(
        columns=columns,
        types=types,
        rows=rows,
        truncated=truncated_by is not None,
        elapsed_ms=(time.perf_counter() - began) * 1000.0,
        truncated_by=truncated_by,
    )


def _interrupt_after(con: duckdb.DuckDBPyConnection, timeout_s: float, done: threading.Event) -> None:
    """From the deadline on, interrupt ``con`` until the query's thread says it is done."""
    if done.wait(timeout_s):
        return
    while not done.is_set():
        con.interrupt()
        done.wait(INTERRUPT_EVERY_S)


_row_encoder = msgspec.json.Encoder()


def _capped(relation: duckdb.DuckDBPyRelation, width: int, max_bytes: int) -> str:
    """The query with a last column of the answer's running JSON size, and every value of a
    row past ``max_bytes`` replaced by NULL.

    The cap holds while the rows are fetched, not after: a result's values become Python
    objects (several times their size, outside DuckDB's ``memory_limit``, holding the GIL)
    only while the answer is within its size. One row of a 16-million-element list used to
    be converted whole, then found too large: 11 s past a 2 s limit and 4 GB of memory.
    The running sum is a streaming window: it keeps the query's order and buffers nothing.
    """
    cols = ", ".join(f"#{i}" for i in range(1, width + 1))
    sized = relation.project(
        f"{cols}, sum(strlen(CAST(json_array({cols}) AS VARCHAR))) "
        "OVER (ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )
    size = f"#{width + 1}"
    kept = ", ".join(f"CASE WHEN {size} <= {int(max_bytes)} THEN #{i} END" for i in range(1, width + 1))
    return sized.project(f"{kept}, {size}").sql_query()


def _fetch(con: duckdb.DuckDBPyConnection, max_rows: int, max_bytes: int) -> tuple[list[list[Any]], str | None]:
    """The pending result's rows as JSON-ready lists, in chunks, until it ends or a cap is
    hit; each row's last value is the answer's size so far (``_capped``)."""
    rows: list[list[Any]] = []
    size = 2  # the enclosing brackets
    while chunk := con.fetchmany(FETCH_ROWS):
        for *raw, running in chunk:
            if len(rows) == max_rows:
                return rows, "max_rows"
            if running is not None and running > max_bytes:
                return rows, "max_bytes"  # its values were never fetched (NULL)
            row = [_jsonable(v) for v in raw]
            size += len(_row_encoder.encode(row)) + 1
            if size > max_bytes:
                return rows, "max_bytes"
            rows.append(row)
    return rows, None


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
