"""The DuckDB file behind the projections: schema, batched ingest, checkpoints, readers.

One ``ProjectionStore`` owns one database file in one process. Every write runs on a
single dedicated thread (DuckDB calls block, and must never run on the event loop); reads
check out one of a small pool of cursors (each its own DuckDB connection to the same
database) so queries run beside ingest under DuckDB's MVCC.

A batch is the raw message bodies plus their stream sequences. Parsing happens inside
DuckDB (``from_json`` over a columnar ``unnest``), and the rows, the rollups built from
them (``cogo.projections.rollups``) and the checkpoint are written in one transaction, so
a crash at any point neither loses nor duplicates a row or a count.

Retention: ``prune_sync`` deletes the rows the stream itself no longer holds (below its
first sequence: ``[events] max_age_s`` / ``max_bytes`` and purges), taking them out of the
rollups in the same transaction. The projection then holds what the stream holds, which
is also exactly what ``cogo replay`` can rebuild, and the file stops growing once the
stream does.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from cogo.config import DuckdbConfig
from cogo.errors import ProjectionBusy, ProjectionError
from cogo.projections import rollups
from cogo.projections.feed import Fetched

T = TypeVar("T")

EVENTS_STREAM = "EVENTS"
DLQ_STREAM = "DLQ"
DB_FILE = "cogo.duckdb"
READERS = 4

# The whole database instance is locked down, writer included: SQL typed by users runs
# on it, and nothing the projector does needs files, the network or extensions.
HARDENED: dict[str, Any] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
    # SQL must not read Python objects of this process (DuckDB's replacement scans)
    "python_enable_replacements": False,
    # checkpoints compress whole row groups; fewer, larger ones keep ingest fast
    "checkpoint_threshold": "64MB",
    # the allocator hands freed memory back in the background: without it a large query's
    # peak (1.2 GB for one list of 40M numbers) stayed resident after the query had ended
    "allocator_background_threads": True,
}

# the fields of an Event (cogo.streams.events) that become columns
_EVENT_SHAPE = (
    '{"event_id":"VARCHAR","type":"VARCHAR","at":"VARCHAR","task_id":"VARCHAR",'
    '"correlation_id":"VARCHAR","causation_id":"VARCHAR","route":"VARCHAR","actor":"VARCHAR",'
    '"attempt":"INTEGER","queue_wait_ms":"DOUBLE","duration_ms":"DOUBLE","backoff_ms":"BIGINT",'
    '"next_attempt_at":"VARCHAR","error_code":"VARCHAR","error":"VARCHAR","version":"VARCHAR",'
    '"cohort":"VARCHAR","usage":{"tokens":"BIGINT","cost_usd":"DOUBLE","duration_ms":"DOUBLE"},'
    '"data":{"submitted_at":"VARCHAR","claimed_at":"VARCHAR","deadline":"VARCHAR"}}'
)

# $1: sequences, $2: bodies joined by newlines (one string crosses into DuckDB instead of
# thousands of Python objects; compact JSON never holds a raw newline), $3: subjects joined
# likewise ('' where unknown), $4: checkpoint.
# A row's type and route are its subject's (``events.<type>.<route>``) whenever the body
# claims others: permissions bind who may publish on which subject, not what a body says,
# so an app's worker cannot append, say, an execute_done of another route's task.
# Rows at or below the checkpoint are skipped: a redelivered batch applies nothing twice.
# {ok} says whether a body is a JSON object: the checked form validates every body first;
# the fast form (one JSON parse less) fails on the whole batch if a body is not JSON, and
# the batch is then written again with the checked form. Both write the same rows.
# a subject without a route part (``events.<type>``) is open to trusted users only: there the
# body's word stands, as it does when the subject is unknown
_TYPE = "CASE WHEN subject = '' OR j.type IS NULL OR split_part(subject, '.', 3) = '' THEN j.type ELSE subject_type END"
# (journal subjects, ``events.<type>.<route>.<bucket>``, hold the body's route too)
_ROUTE = (
    "CASE WHEN subject = '' OR j.route IS NULL"
    " OR subject = concat('events.', subject_type, '.', j.route)"
    " OR (starts_with(subject, concat('events.', subject_type, '.', j.route, '.'))"
    "     AND strpos(substr(subject, length(subject_type) + length(j.route) + 10), '.') = 0)"
    " THEN j.route"
    " ELSE nullif(substr(subject, length(subject_type) + 9), '') END"
)
_INSERT_EVENTS_TEMPLATE = f"""
INSERT INTO bus_events
SELECT seq, j.event_id, {_TYPE}, TRY_CAST(j."at" AS TIMESTAMP), j.task_id, j.correlation_id,
       j.causation_id, {_ROUTE}, j.actor, j.attempt, j.queue_wait_ms, j.duration_ms,
       j.backoff_ms, TRY_CAST(j.next_attempt_at AS TIMESTAMP), j.error_code, j.error,
       j.version, j.cohort,
       -- Usage omits zero fields on the wire: present usage means zero, absent means NULL
       CASE WHEN j.usage IS NOT NULL THEN coalesce(j.usage.tokens, 0) END,
       CASE WHEN j.usage IS NOT NULL THEN coalesce(j.usage.cost_usd, 0) END,
       CASE WHEN j.usage IS NOT NULL THEN coalesce(j.usage.duration_ms, 0) END,
       TRY_CAST(j.data.submitted_at AS TIMESTAMP), TRY_CAST(j.data.claimed_at AS TIMESTAMP),
       TRY_CAST(j.data.deadline AS TIMESTAMP),
       CASE WHEN ok THEN body::JSON ELSE to_json(body) END
FROM (
    SELECT seq, body, ok, subject, split_part(subject, '.', 2) AS subject_type,
           CASE WHEN ok THEN from_json(body, '{_EVENT_SHAPE}') END AS j
    FROM (
        SELECT seq, body, subject, {{ok}} AS ok
        FROM (SELECT unnest($1::BIGINT[]) AS seq, unnest(string_split($2, chr(10))) AS body,
                     unnest(string_split($3, chr(10))) AS subject)
    )
)
WHERE seq > $4
"""
_IS_OBJECT = "starts_with(ltrim(body), '{')"
_INSERT_EVENTS = _INSERT_EVENTS_TEMPLATE.replace("{ok}", f"json_valid(body) AND {_IS_OBJECT}")
_INSERT_EVENTS_FAST = _INSERT_EVENTS_TEMPLATE.replace("{ok}", _IS_OBJECT)

_INSERT_DLQ = """
INSERT INTO dlq_messages
SELECT seq, make_timestamp(ts_us), subject, original_subject, original_seq, deliveries,
       error_code, reason, actor,
       CASE WHEN json_valid(data) THEN coalesce(data->>'$.task_id', data->>'$.order.task_id') END,
       CASE WHEN json_valid(data) THEN coalesce(data->>'$.route', data->>'$.order.route') END,
       data
FROM (
    SELECT unnest($1::BIGINT[]) AS seq, unnest($2::BIGINT[]) AS ts_us,
           unnest($3::VARCHAR[]) AS subject, unnest($4::VARCHAR[]) AS original_subject,
           unnest($5::BIGINT[]) AS original_seq, unnest($6::INTEGER[]) AS deliveries,
           unnest($7::VARCHAR[]) AS error_code, unnest($8::VARCHAR[]) AS reason,
           unnest($9::VARCHAR[]) AS actor, unnest($10::VARCHAR[]) AS data
)
WHERE seq > $11
"""


@dataclass(frozen=True)
class EventBatch:
    """Consecutive EVENTS messages: their stream sequences, bodies and (when known) subjects."""

    seqs: list[int]
    bodies: list[bytes]
    subjects: list[bytes] | None = None


@dataclass(frozen=True)
class DeadLetterBatch:
    """Consecutive DLQ messages, already split into columns."""

    seqs: list[int]
    timestamps_us: list[int]
    subjects: list[str]
    original_subjects: list[str | None]
    original_seqs: list[int | None]
    deliveries: list[int | None]
    error_codes: list[str | None]
    reasons: list[str | None]
    actors: list[str | None]
    data: list[str]


def dead_letter_batch(fetched: Fetched) -> DeadLetterBatch:
    """DLQ messages as columns; the reason travels in headers (cogo.runtime.base)."""
    headers = fetched.headers()

    def as_int(value: str | None) -> int | None:
        return int(value) if value and value.isdigit() else None

    return DeadLetterBatch(
        seqs=fetched.seqs,
        timestamps_us=[ns // 1000 for ns in fetched.timestamps_ns()],
        subjects=fetched.subjects(),
        original_subjects=[h.get("Cogo-Original-Subject") for h in headers],
        original_seqs=[as_int(h.get("Cogo-Stream-Seq")) for h in headers],
        deliveries=[as_int(h.get("Cogo-Deliveries")) for h in headers],
        error_codes=[h.get("Cogo-Error-Code") for h in headers],
        reasons=[h.get("Cogo-Reason") for h in headers],
        actors=[h.get("Cogo-Actor") for h in headers],
        data=[body.decode("utf-8", errors="replace") for body in fetched.bodies],
    )


def schema_files() -> list[tuple[str, str]]:
    """Every ``*.sql`` file of ``cogo/projections/sql`` as (name, text), in filename order."""
    folder = resources.files("cogo.projections").joinpath("sql")
    files = [f for f in folder.iterdir() if f.name.endswith(".sql")]
    return [(f.name, f.read_text()) for f in sorted(files, key=lambda f: f.name)]


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / DB_FILE


def join_bodies(bodies: Sequence[bytes]) -> str:
    """Bodies as one newline-separated string; stray newlines inside a body become spaces."""
    joined = b"\n".join(bodies)
    if joined.count(b"\n") != len(bodies) - 1:
        # a newline outside a JSON string is whitespace; inside one the body is invalid anyway
        joined = b"\n".join(b.replace(b"\n", b" ").replace(b"\r", b" ") for b in bodies)
    return joined.decode("utf-8", errors="replace")


def instance_config(limits: DuckdbConfig | None = None) -> dict[str, Any]:
    """``HARDENED`` plus the memory, thread and spill limits (locked with the rest)."""
    limits = limits or DuckdbConfig()
    config = {
        **HARDENED,
        "memory_limit": limits.memory_limit,
        "max_temp_directory_size": limits.max_temp_directory_size,
    }
    if limits.threads > 0:
        config["threads"] = limits.threads
    return config


def connect(path: Path, *, read_only: bool = False, limits: DuckdbConfig | None = None) -> duckdb.DuckDBPyConnection:
    """Open the file with the hardened configuration; ProjectionBusy if another process has it."""
    try:
        return duckdb.connect(str(path), read_only=read_only, config=instance_config(limits))
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise ProjectionBusy(
                f"{path} is in use by another process (a running `cogo up` or `cogo run projector`): {exc}"
            ) from None
        raise ProjectionError(f"cannot open the projection {path}: {exc}") from None


class ProjectionStore:
    """One DuckDB projection file: writes on one thread, reads through a cursor pool."""

    def __init__(self, path: Path, *, readers: int = READERS, limits: DuckdbConfig | None = None) -> None:
        self.path = Path(path)
        self.readers = readers
        self.limits = limits
        self._con: duckdb.DuckDBPyConnection | None = None
        self._pool: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb-writer")
        self._closed = threading.Event()

    # -- lifecycle (blocking; call through ``write`` or a thread) ----------------------

    def open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = connect(self.path, limits=self.limits)
        try:
            con.execute("BEGIN")
            for name, text in schema_files():
                try:
                    con.execute(text)
                except duckdb.Error as exc:
                    raise ProjectionError(f"projection schema file {name} failed: {exc}") from exc
            rollups.ensure_sync(con)
            con.execute("COMMIT")
        except BaseException:
            con.close()
            raise
        self._con = con
        for _ in range(self.readers):
            self._pool.put(con.cursor())
        self._closed.clear()

    def close_sync(self, wait_readers: float = 60.0) -> None:
        # Wait for every reader to come back: a cursor still out keeps the database
        # instance (and the file) open, which would break a replay's swap.
        if self._con is not None:
            self.fold_sync()  # a file at rest has its rollups complete
        self._closed.set()
        for _ in range(self.readers if self._con is not None else 0):
            try:
                self._pool.get(timeout=wait_readers).close()
            except queue.Empty:
                break
        if self._con is not None:
            self._con.close()
            self._con = None

    async def open(self) -> None:
        await self.write(self.open_sync)

    async def close(self) -> None:
        """Close the file after the last queued write, once every reader is back."""
        await self.write(self.close_sync)

    def shutdown(self) -> None:
        self._writer.shutdown(wait=True)

    # -- writes ------------------------------------------------------------------------

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread (one at a time, in submission order)."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("projection store is not open")
        return self._con

    def checkpoint_sync(self, stream: str) -> int:
        row = self.con.execute("SELECT last_seq FROM projector_checkpoint WHERE stream = ?", [stream]).fetchone()
        return int(row[0]) if row else 0

    def checkpoints_sync(self) -> dict[str, int]:
        rows = self.con.execute("SELECT stream, last_seq FROM projector_checkpoint").fetchall()
        return {str(s): int(q) for s, q in rows}

    def apply_sync(self, stream: str, fetched: Fetched) -> int:
        """Write one fetched batch of ``stream`` (EVENTS or DLQ) with its checkpoint."""
        if stream == EVENTS_STREAM:
            subjects = fetched.deliveries.subjects
            return self.apply_events_sync(EventBatch(fetched.seqs, fetched.bodies, subjects))
        return self.apply_dead_letters_sync(dead_letter_batch(fetched))

    def apply_events_sync(self, batch: EventBatch) -> int:
        """Write a batch and its checkpoint in one transaction; the number of rows written."""
        text = join_bodies(batch.bodies)
        # subjects hold no newline; unknown ones are empty (the body is then believed)
        subjects = batch.subjects or [b""] * len(batch.bodies)
        params = [batch.seqs, text, b"\n".join(subjects).decode()]
        last = batch.seqs[-1]

        def derive(con: duckdb.DuckDBPyConnection, checkpoint: int) -> None:
            rollups.ingest_sync(con, checkpoint, last)

        try:
            return self._apply(EVENTS_STREAM, last, _INSERT_EVENTS_FAST, params, derive)
        except duckdb.InvalidInputException:
            # some body is not JSON (the transaction was rolled back): the checked form
            # keeps such a body as a JSON string in `raw`, with NULL columns
            return self._apply(EVENTS_STREAM, last, _INSERT_EVENTS, params, derive)

    def apply_dead_letters_sync(self, batch: DeadLetterBatch) -> int:
        params: list[Any] = [
            batch.seqs,
            batch.timestamps_us,
            batch.subjects,
            batch.original_subjects,
            batch.original_seqs,
            batch.deliveries,
            batch.error_codes,
            batch.reasons,
            batch.actors,
            batch.data,
        ]
        return self._apply(DLQ_STREAM, batch.seqs[-1], _INSERT_DLQ, params)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN ... COMMIT on the writer connection; ROLLBACK on any exception."""
        con = self.con
        con.execute("BEGIN")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise

    def _apply(
        self,
        stream: str,
        last_seq: int,
        sql: str,
        params: list[Any],
        derive: Callable[[duckdb.DuckDBPyConnection, int], None] | None = None,
    ) -> int:
        if last_seq <= self.checkpoint_sync(stream):
            return 0  # a redelivered batch: all of it is in already
        with self._transaction() as con:
            checkpoint = self.checkpoint_sync(stream)
            row = con.execute(sql, [*params, checkpoint]).fetchone()
            written = int(row[0]) if row else 0
            if derive is not None and written:
                derive(con, checkpoint)  # the rollups of the rows just written
            con.execute(
                "UPDATE projector_checkpoint SET last_seq = ?, applied = applied + ? WHERE stream = ?",
                [last_seq, written, stream],
            )
        return written

    def fold_sync(self) -> int:
        """Fold the rows not yet in the rollup tables into them (one transaction)."""
        with self._transaction() as con:
            return rollups.fold_sync(con)

    def prune_sync(self, stream: str, first_kept: int) -> int:
        """Delete the rows of ``stream`` below ``first_kept`` (the stream's first sequence),
        with their share of the rollups, in one transaction; the number of rows deleted."""
        table = "bus_events" if stream == EVENTS_STREAM else "dlq_messages"
        con = self.con
        row = con.execute(f"SELECT min(seq) FROM {table}").fetchone()
        if row is None or row[0] is None or row[0] >= first_kept:
            return 0
        with self._transaction():
            if stream == EVENTS_STREAM:
                rollups.subtract_sync(con, first_kept)
            deleted = con.execute(f"DELETE FROM {table} WHERE seq < ?", [first_kept]).fetchone()
        return int(deleted[0]) if deleted else 0

    def skip_to_sync(self, stream: str, seq: int) -> None:
        """Move a checkpoint forward without rows (the stream no longer has them)."""
        self.con.execute(
            "UPDATE projector_checkpoint SET last_seq = greatest(last_seq, ?) WHERE stream = ?",
            [seq, stream],
        )

    # -- reads -------------------------------------------------------------------------

    @contextlib.contextmanager
    def reader(self, timeout: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """Check out a read cursor (blocking: call from a thread)."""
        if self._closed.is_set():
            raise ProjectionBusy("the projection is closed or being swapped by a replay; retry")
        try:
            cursor = self._pool.get(timeout=timeout)
        except queue.Empty:
            raise ProjectionBusy("every projection reader is busy; try again") from None
        try:
            yield cursor
        finally:
            # A cursor keeps its last result, and a result not read to its end keeps its
            # transaction open: one left in the pool blocked every checkpoint (the WAL then
            # grew until a restart). A tiny query read to the end replaces it.
            with contextlib.suppress(duckdb.Error):
                cursor.execute("SELECT 1").fetchall()
            self._pool.put(cursor)

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(cursor)`` on a worker thread with a pooled cursor."""

        def run() -> T:
            with self.reader() as cursor:
                return fn(cursor)

        return await asyncio.to_thread(run)
