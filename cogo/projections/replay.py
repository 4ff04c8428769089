"""Rebuilding the projection from the streams into a fresh file, then swapping it in.

The rebuild reads EVENTS and DLQ from their first kept message through ephemeral
consumers and applies them with the very code the live projector uses, so the result has
the same rows (rows never depend on when they were ingested). The new file replaces the
old one with ``os.replace``: a reader sees the old projection or the new one, never half.

Messages that retention (``[events] max_age_s`` / ``max_bytes``) already removed cannot
come back; the rebuild says so in its warnings, with the first sequence still available.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from cogo.config import DuckdbConfig
from cogo.errors import ProjectionError
from cogo.projections.feed import GROUP_COMMIT_BATCHES, Fetched, GroupCommit, StreamFeed
from cogo.projections.store import DLQ_STREAM, EVENTS_STREAM, ProjectionStore, connect, db_path
from cogo.streams.envelope import new_id

STREAMS = (EVENTS_STREAM, DLQ_STREAM)


@dataclass(frozen=True)
class ReplayProgress:
    """Where a rebuild is: messages applied of the total it aims for, and the rate."""

    stream: str
    applied: int
    total: int
    rate: float  # messages per second, this stream so far


@dataclass
class ReplayResult:
    """What a finished rebuild produced."""

    path: str
    messages: dict[str, int] = field(default_factory=dict)
    first_seq: dict[str, int] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "messages": self.messages,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.messages.get(EVENTS_STREAM, 0) / self.seconds, 1) if self.seconds else None,
            "warnings": self.warnings,
        }


Progress = Callable[[ReplayProgress], None]


def swap_files(new: Path, live: Path) -> None:
    """Put ``new`` in place of ``live`` atomically (both closed, ``new`` checkpointed)."""
    # a stale WAL next to the live file would be replayed onto the new one: drop it first
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{live}.wal")
    os.replace(new, live)


def remove_database(path: Path) -> None:
    for victim in (path, Path(f"{path}.wal")):
        with contextlib.suppress(FileNotFoundError):
            victim.unlink()


class Rebuild:
    """Projects EVENTS and DLQ from their first kept message into a new file at ``path``."""

    def __init__(
        self,
        nc: NATS,
        path: Path,
        *,
        batch: int = 5000,
        progress: Progress | None = None,
        limits: DuckdbConfig | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.path = path
        self.batch = batch
        self.progress = progress
        self.store = ProjectionStore(path, readers=0, limits=limits)
        self.feeds: dict[str, StreamFeed] = {}
        self.applied: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self.result = ReplayResult(path=str(path))
        self._started = 0.0

    async def run(self) -> None:
        """Apply each stream up to its last message as of now."""
        self._started = time.monotonic()
        remove_database(self.path)
        await self.store.open()
        suffix = new_id()[:8]
        for stream in STREAMS:
            info = await self.js.stream_info(stream)
            first, last = info.state.first_seq, info.state.last_seq
            self.result.first_seq[stream] = first
            if first > 1:
                self.result.warnings.append(
                    f"{stream}: the oldest {first - 1} message(s) are gone (retention); "
                    f"the rebuilt projection starts at sequence {first}"
                )
            feed = StreamFeed(
                self.nc,
                stream,
                f"replay-{stream.lower()}-{suffix}",
                batch=self.batch,
                keep_meta=stream == DLQ_STREAM,
                durable=False,
                description="cogo replay",
            )
            await feed.reset(1)
            self.feeds[stream] = feed
            total = info.state.messages
            await self._drain(stream, last, total)

    async def catch_up(self) -> None:
        """Apply what arrived since ``run`` started (call with the live projector paused)."""
        for stream, feed in self.feeds.items():
            info = await self.js.stream_info(stream)
            total = self.applied[stream] + feed.last_pending
            await self._drain(stream, info.state.last_seq, total)

    async def finish(self) -> ReplayResult:
        """Close the new file (checkpointed, no WAL left) and say what it holds."""
        for feed in self.feeds.values():
            await feed.close(delete=True)
        self.feeds.clear()
        checkpoints = await self.store.write(self.store.checkpoints_sync)
        await self.store.close()
        self.store.shutdown()
        self.result.last_seq = checkpoints
        self.result.messages = dict(self.applied)
        self.result.seconds = time.monotonic() - self._started
        return self.result

    async def discard(self) -> None:
        """Drop the consumers and the partial file after a failure."""
        for feed in self.feeds.values():
            await feed.close(delete=True)
        self.feeds.clear()
        with contextlib.suppress(Exception):
            await self.store.close()
        self.store.shutdown()
        remove_database(self.path)

    async def _drain(self, stream: str, target: int, total: int) -> None:
        feed = self.feeds[stream]
        applied_seq = await self.store.write(self.store.checkpoint_sync, stream)
        began = time.monotonic()
        done_before = self.applied[stream]
        group = GroupCommit(lambda fetched: self._apply(stream, fetched), GROUP_COMMIT_BATCHES * self.batch)
        read = done_before
        try:
            while applied_seq < target or group.queued:
                fetched = None
                if applied_seq < target:
                    fetched = await feed.fetch(wait=0.5, block=not group.queued)
                    if fetched is None and not group.queued:
                        break  # the rest was deleted from the stream meanwhile
                if fetched is not None:
                    group.add(fetched)
                    read += len(fetched)
                    applied_seq = fetched.seqs[-1]
                    if self.progress is not None:
                        elapsed = max(time.monotonic() - began, 1e-6)
                        self.progress(ReplayProgress(stream, read, max(total, read), (read - done_before) / elapsed))
                if fetched is not None and applied_seq < target and group.can_queue_more():
                    continue
                await group.commit()
        finally:
            await group.wait()

    async def _apply(self, stream: str, fetched: Fetched) -> None:
        await self.store.write(self.store.apply_sync, stream, fetched)
        self.applied[stream] += len(fetched)


async def replay_offline(
    nc: NATS,
    data_dir: Path,
    *,
    batch: int = 5000,
    progress: Progress | None = None,
    limits: DuckdbConfig | None = None,
) -> ReplayResult:
    """Rebuild ``<data-dir>/cogo.duckdb`` when no projector runs (ProjectionBusy if one does)."""
    live = db_path(data_dir)
    if live.exists():
        # fails with ProjectionBusy while another process holds the file
        await asyncio.to_thread(lambda: connect(live, limits=limits).close())
    try:
        await nc.jetstream().stream_info(EVENTS_STREAM)
    except NotFoundError:
        raise ProjectionError("the EVENTS stream does not exist on this server") from None
    rebuild = Rebuild(nc, Path(f"{live}.replay"), batch=batch, progress=progress, limits=limits)
    try:
        await rebuild.run()
        await rebuild.catch_up()
        result = await rebuild.finish()
    except BaseException:
        await rebuild.discard()
        raise
    await asyncio.to_thread(swap_files, rebuild.path, live)
    result.path = str(live)
    return result
