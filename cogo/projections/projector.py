"""The projector: EVENTS and DLQ into ``<data-dir>/cogo.duckdb``, exactly once.

Each stream is followed by its own loop: fetch a batch (up to ``batch`` messages), hand it
to the store's writer thread, which writes the rows and the stream sequence of the last
one in one DuckDB transaction, then ack the batch. Fetching the next batch overlaps with
writing the previous one. On start, and after anything unexpected, a loop reads its
checkpoint and recreates its consumer at ``checkpoint + 1``; rows at or below the
checkpoint are skipped inside the transaction too. So a crash (``kill -9`` included) at
any point neither loses nor duplicates a row.

Upkeep, on the same writer thread, between batches: the rows not yet folded into the
rollup tables are folded in at least every ``FOLD_EVERY_S`` (``cogo.projections.rollups``),
and at least every ``RETENTION_EVERY_S`` (and whenever the stream goes quiet) the rows the
stream itself no longer holds are deleted, rollups included (``ProjectionStore.prune_sync``):
``[events] max_age_s`` / ``max_bytes`` bound the DuckDB file as they bound the stream.

``cogo up`` runs one in-process (``cogo.projections.component``); ``cogo run projector``
runs one alone. One projector per DuckDB file, and each with a durable consumer of its own,
named for its node and data dir (``consumer_name``: ``projector-<host>-<hash of the dir>``,
or ``COGO_PROJECTOR_CONSUMER``). Several ``cogo up`` on one cluster therefore each keep a
whole projection: a feed only ever deletes and recreates its own consumer (two sharing the
name ``projector`` deleted each other's 18 and 14 times in a run, and one file stopped 260
rows short). A consumer left by a data dir that is gone is removed by the server after
``cogo.projections.feed.ABANDONED_CONSUMER_S`` without a pull.

The projector also answers task status requests on ``cogo.tasks.status`` (NATS request /
reply, queue group ``cogo-status``): it owns the file, so it can answer with what it has
applied. Requests are answered concurrently (each on a task of its own, ``STATUS_CONCURRENCY``
at once): nats-py runs one callback at a time per subscription, so answering inside it
queued every waiter behind the slowest. A task that ended is answered at once from the file;
any other first catches up with the stream as of the request (read your writes), unless the
request says ``"wait": false``. Every answer carries ``projected_seq``, the EVENTS sequence
it reflects, so a client can read what came after it from the stream instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from cogo.aio import cancel_and_wait
from cogo.config import PROJECTOR_BATCH_ENV, PROJECTOR_CONSUMER_ENV, Config, env, exponential_delay
from cogo.errors import CogoError, ProjectionBusy, TaskNotFound
from cogo.projections.feed import (
    GROUP_COMMIT_BATCHES,
    FeedDesync,
    Fetched,
    GroupCommit,
    StreamFeed,
)
from cogo.projections.replay import Progress, Rebuild, ReplayResult, swap_files
from cogo.projections.store import DLQ_STREAM, EVENTS_STREAM, ProjectionStore, db_path
from cogo.projections.tasks import STATUS_SUBJECT, TaskStatus, task_status
from cogo.streams.connection import actor_id

log = logging.getLogger(__name__)

DEFAULT_BATCH = 5000
# the prefix of every projector's consumer (see consumer_name)
DEFAULT_CONSUMER = "projector"
# a small batch waits this long once for more (see StreamFeed.fetch); bounds added lag
LINGER_S = 0.05
IDLE_WAIT_S = 1.0
FOLD_EVERY_S = 2.0
RETENTION_EVERY_S = 30.0
# how long a status answer waits for the projection to reach the stream's end
FRESH_WAIT_S = 2.0
STATUS_CONCURRENCY = 64  # status requests answered at once; more wait for a turn


def consumer_name(data_dir: Path) -> str:
    """The durable consumer of the projector of ``data_dir`` on this node: stable across
    restarts, distinct for every other data dir and host (``projector-<host>-<8 hex>``)."""
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-")[:32] or "host"
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:8]
    return f"{DEFAULT_CONSUMER}-{host}-{digest}"


@dataclass
class StreamState:
    """How far one stream is projected."""

    stream: str
    consumer: str
    applied_seq: int = 0  # the checkpoint: last stream sequence written
    first_seq: int = 0  # the stream's first kept sequence, as last seen
    last_seq: int = 0  # the stream's last sequence, as last seen
    rows: int = 0  # rows this process wrote
    batches: int = 0
    resets: int = 0
    aged_out: int = 0  # messages retention removed before they were projected
    pruned: int = 0  # rows deleted because the stream no longer holds them
    feed: StreamFeed | None = None
    next_fold: float = 0.0  # monotonic clock
    next_retention: float = 0.0

    @property
    def lag(self) -> int:
        """Messages in the stream not yet in the projection."""
        return max(0, self.last_seq - max(self.applied_seq, self.first_seq - 1))

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "applied_seq": self.applied_seq,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "lag": self.lag,
            "rows": self.rows,
            "batches": self.batches,
            "resets": self.resets,
            "aged_out": self.aged_out,
            "pruned": self.pruned,
        }


class Projector:
    """Follows EVENTS and DLQ into the DuckDB projection; serves its readers."""

    kind = "projector"
    needs_data_dir = True  # the runner passes --data-dir

    def __init__(
        self,
        nc: NATS,
        config: Config,
        *,
        concurrency: int | None = None,
        version: str | None = None,
        data_dir: Path | None = None,
        batch: int | None = None,
        consumer: str | None = None,
    ) -> None:
        del concurrency, version  # the runner's actor arguments; one writer is the point
        self.nc = nc
        self.js = nc.jetstream()
        self.config = config
        self.data_dir = Path(data_dir or ".cogo").resolve()
        self.path = db_path(self.data_dir)
        self.name = actor_id(self.kind)
        self.batch = batch or int(env(PROJECTOR_BATCH_ENV) or DEFAULT_BATCH)
        # the most rows one transaction takes when batches queue up behind the writer
        self.max_rows = GROUP_COMMIT_BATCHES * self.batch
        consumer = consumer or env(PROJECTOR_CONSUMER_ENV) or consumer_name(self.data_dir)
        self.store = ProjectionStore(self.path, limits=config.duckdb)
        self.streams = {
            EVENTS_STREAM: StreamState(EVENTS_STREAM, consumer),
            DLQ_STREAM: StreamState(DLQ_STREAM, f"{consumer}-dlq"),
        }
        self.started_at = 0.0
        self.fold_every_s = FOLD_EVERY_S
        self.retention_every_s = RETENTION_EVERY_S
        self._loops: list[asyncio.Task[None]] = []
        self._rebuilding = asyncio.Lock()
        self._progress: dict[str, Any] | None = None
        self._status_sub: Subscription | None = None
        self._status_slots = asyncio.Semaphore(STATUS_CONCURRENCY)
        self._answering: set[asyncio.Task[None]] = set()
        # the streams' ends, looked up once for every request that arrived before the lookup
        self._ends: asyncio.Task[dict[str, int]] | None = None
        self._ends_asked_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        self.started_at = time.monotonic()
        self._start_loops()
        self._status_sub = await self.nc.subscribe(STATUS_SUBJECT, queue="cogo-status", cb=self._on_status_request)

    async def stop(self) -> None:
        if self._status_sub is not None:
            with contextlib.suppress(Exception):
                await self._status_sub.unsubscribe()
        await cancel_and_wait(list(self._answering))
        await self._stop_loops()
        for state in self.streams.values():
            if state.feed is not None:
                await state.feed.close()
        await self.store.close()
        self.store.shutdown()

    def _start_loops(self) -> None:
        self._loops = [
            asyncio.create_task(self._follow_forever(state), name=f"projector-{stream}")
            for stream, state in self.streams.items()
        ]

    async def _stop_loops(self) -> None:
        await cancel_and_wait(self._loops)
        self._loops = []

    # -- following a stream ------------------------------------------------------------

    async def _follow_forever(self, state: StreamState) -> None:
        failures = 0  # in a row, without progress
        while True:
            batches = state.batches
            try:
                await self._follow(state)
            except asyncio.CancelledError:
                raise
            except FeedDesync as exc:
                log.info("projector %s: %s; resuming from the checkpoint", state.stream, exc)
            except Exception:
                log.exception("projector %s failed; resuming from the checkpoint", state.stream)
            state.resets += 1
            # straight back after progress; back off while every attempt fails at once
            failures = 0 if state.batches > batches else failures + 1
            await asyncio.sleep(exponential_delay(0.2, failures, cap=10.0) if failures else 0.0)

    async def _follow(self, state: StreamState) -> None:
        checkpoint = await self.store.write(self.store.checkpoint_sync, state.stream)
        state.applied_seq = checkpoint
        await self._refresh(state)
        if state.first_seq > checkpoint + 1 and state.last_seq >= state.first_seq:
            gone = state.first_seq - 1 - checkpoint
            state.aged_out += gone
            log.warning(
                "projector %s: %d message(s) after checkpoint %d left the stream (retention) "
                "before they were projected; continuing at %d",
                state.stream,
                gone,
                checkpoint,
                state.first_seq,
            )
            # they are gone for good: move past them so they are counted once
            checkpoint = state.first_seq - 1
            await self.store.write(self.store.skip_to_sync, state.stream, checkpoint)
            state.applied_seq = checkpoint
        elif checkpoint > state.last_seq:
            log.error(
                "projector %s: checkpoint %d is past the stream's last sequence %d: the stream "
                "was recreated; run `cogo replay` to rebuild the projection",
                state.stream,
                checkpoint,
                state.last_seq,
            )
        await self._upkeep(state, retention=True)
        if state.feed is None:
            state.feed = StreamFeed(
                self.nc,
                state.stream,
                state.consumer,
                batch=self.batch,
                keep_meta=state.stream == DLQ_STREAM,
                # room for the transaction being written, the queue behind it, one fetch
                max_ack_pending=2 * self.max_rows + 2 * self.batch,
                description=f"cogo projector -> {self.path}",
            )
        feed = state.feed
        await feed.reset(checkpoint + 1)
        group = GroupCommit(lambda fetched: self._apply(state, feed, fetched), self.max_rows)
        try:
            while True:
                fetched = await feed.fetch(
                    wait=IDLE_WAIT_S,
                    linger=0.0 if group.queued else LINGER_S,
                    block=not group.queued,
                )
                if fetched is not None:
                    group.add(fetched)
                elif not group.queued:
                    await self._refresh(state)
                    await self._upkeep(state, retention=True)
                    continue
                backlog = fetched is not None and len(fetched) >= self.batch // 4
                if backlog and group.can_queue_more():
                    continue  # keep reading while the writer works
                # nothing more, a trickle (no polling), or a full queue: commit the queue next
                await group.commit()
                now = time.monotonic()
                if now >= state.next_fold or now >= state.next_retention:
                    retention = now >= state.next_retention
                    if retention:
                        await self._refresh(state)
                    await self._upkeep(state, retention=retention)
        finally:
            with contextlib.suppress(Exception):
                await group.wait()

    async def _apply(self, state: StreamState, feed: StreamFeed, fetched: Fetched) -> None:
        rows = await self.store.write(self.store.apply_sync, state.stream, fetched)
        state.applied_seq = fetched.seqs[-1]
        state.last_seq = max(state.last_seq, fetched.seqs[-1] + fetched.pending)
        state.rows += rows
        state.batches += 1
        await feed.ack(fetched)

    async def _upkeep(self, state: StreamState, *, retention: bool) -> None:
        """Fold the rollups' tail; with ``retention``, drop what the stream dropped."""
        now = time.monotonic()
        if state.stream == EVENTS_STREAM and now >= state.next_fold:
            state.next_fold = now + self.fold_every_s
            await self.store.write(self.store.fold_sync)
        if retention:
            state.next_retention = now + self.retention_every_s
            if state.first_seq > 1:
                state.pruned += await self.store.write(self.store.prune_sync, state.stream, state.first_seq)

    async def _refresh(self, state: StreamState) -> None:
        info = await self.js.stream_info(state.stream)
        state.first_seq = info.state.first_seq
        state.last_seq = info.state.last_seq

    # -- for readers -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "actor": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "batch": self.batch,
            "uptime_s": round(time.monotonic() - self.started_at, 1) if self.started_at else 0,
            "streams": {name: state.as_dict() for name, state in self.streams.items()},
            "lag": sum(state.lag for state in self.streams.values()),
            "replay": self._progress,
        }

    async def wait_caught_up(self, timeout: float = 10.0) -> None:
        """Wait until every message in the streams as of now is projected."""
        targets = await self._stream_ends(time.monotonic())
        deadline = time.monotonic() + timeout
        while any(self.streams[s].applied_seq < seq for s, seq in targets.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"projector not caught up within {timeout}s: {self.stats()}")
            await asyncio.sleep(0.02)

    async def _stream_ends(self, asked_at: float) -> dict[str, int]:
        """Each stream's last sequence, as of a lookup started at or after ``asked_at``:
        concurrent readers share one lookup instead of asking the server each."""
        while True:
            ends = self._ends
            if ends is not None and self._ends_asked_at >= asked_at:
                return await asyncio.shield(ends)
            if ends is not None and not ends.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(ends)  # started too early for us: the next one
                continue
            self._ends_asked_at = time.monotonic()
            self._ends = asyncio.create_task(self._lookup_ends())

    async def _lookup_ends(self) -> dict[str, int]:
        targets = {}
        for stream, state in self.streams.items():
            info = await self.js.stream_info(stream)
            targets[stream] = info.state.last_seq
            state.last_seq = max(state.last_seq, info.state.last_seq)
        return targets

    async def task_status(self, task_id: str, *, fresh: bool = True) -> TaskStatus:
        """``task_id``'s status (TaskNotFound if it has no events). A task that ended is
        answered at once; otherwise, with ``fresh``, after catching up with what the stream
        held when asked, unless that takes over ``FRESH_WAIT_S``."""
        asked_at = time.monotonic()
        status = await self.store.read(lambda con: task_status(con, task_id))
        if fresh and (status is None or not status.finished):
            with contextlib.suppress(TimeoutError):
                targets = await self._stream_ends(asked_at)
                deadline = time.monotonic() + FRESH_WAIT_S
                while any(self.streams[s].applied_seq < seq for s, seq in targets.items()):
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    await asyncio.sleep(0.02)
                status = await self.store.read(lambda con: task_status(con, task_id))
        if status is None:
            raise TaskNotFound(f"no events for task {task_id!r} (unknown, or not dispatched yet)")
        return status

    async def _on_status_request(self, msg: Msg) -> None:
        # nats-py awaits this callback before delivering the next request: hand the request
        # to a task of its own and return (a slot bounds how many run at once)
        await self._status_slots.acquire()
        task = asyncio.create_task(self._answer_status(msg))
        self._answering.add(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answering.discard(task)
        self._status_slots.release()

    async def _answer_status(self, msg: Msg) -> None:
        # what the answer reflects: read before the file is, so it never claims too much
        projected = self.streams[EVENTS_STREAM].applied_seq
        try:
            request = msgspec.json.decode(msg.data or b"{}")
            task_id = request.get("task_id") if isinstance(request, dict) else None
            if not isinstance(task_id, str) or not task_id:
                raise TaskNotFound('a status request needs {"task_id": "..."}')
            fresh = request.get("wait", True) is not False
            status = await self.task_status(task_id, fresh=fresh)
            answer: Any = {**msgspec.to_builtins(status), "projected_seq": projected}
        except CogoError as exc:
            answer = {"error": {"code": exc.code, "message": str(exc)}, "projected_seq": projected}
        except Exception as exc:  # never leave a requester waiting for a timeout
            log.exception("status request failed")
            answer = {"error": {"code": "projection.error", "message": str(exc)}}
        with contextlib.suppress(Exception):
            await msg.respond(msgspec.json.encode(answer))

    # -- replay ------------------------------------------------------------------------

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding.locked()

    async def rebuild(self, progress: Progress | None = None) -> ReplayResult:
        """Rebuild the file from the streams while running, then swap it in.

        Ingest continues into the old file during the rebuild; it pauses only for the
        final catch-up and the swap. Readers see the old file or the new one.
        """
        if self._rebuilding.locked():
            raise ProjectionBusy("a replay is already running")
        async with self._rebuilding:

            def track(p: Any) -> None:
                self._progress = {"stream": p.stream, "applied": p.applied, "total": p.total}
                if progress is not None:
                    progress(p)

            rebuild = Rebuild(
                self.nc,
                Path(f"{self.path}.replay"),
                batch=self.batch,
                progress=track,
                limits=self.config.duckdb,
            )
            try:
                await rebuild.run()
                await self._stop_loops()
                try:
                    await rebuild.catch_up()
                    result = await rebuild.finish()
                    await self.store.close()
                    try:
                        await asyncio.to_thread(swap_files, rebuild.path, self.path)
                    finally:
                        await self.store.open()
                finally:
                    self._start_loops()
            except BaseException:
                await rebuild.discard()
                raise
            finally:
                self._progress = None
            result.path = str(self.path)
            return result
