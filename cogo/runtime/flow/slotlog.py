"""The slot log: an admitter's write-ahead log of the slots it counts in memory, in batches.

A slot written as a KV entry per attempt, then purged with its result, costs the admitting
dispatcher four messages per task (the write, the purge, and its own watch delivering both):
most of what flow control cost a route under its limits. Instead, the admitter counts every
slot it takes (a round's picks, the fast path's attempts: ``RouteAdmitter.admit_now``) in
memory and records it here, and frees it here when its own process handles the result:

- **Group commit.** Every start and end gathered while the event loop was busy goes out as
  one record (``SlotLogRecord``, ``log.<route>.<session>.<n>`` in the ``flow`` bucket), one
  message for a whole batch of tasks.
- **Written ahead.** The attempts of a batch's starts (and their ``execute_enqueued``) are
  published by the same flush right behind its record, on the same connection, so the
  server stores the record first: a takeover never meets an attempt that runs without its
  slot. If the record cannot be sent, none of them is. An end's record is stored before
  the result is acknowledged (``end`` resolves only then): a crash before that redelivers
  the result, which frees the slot again.
- **Replayed on takeover.** A new admitter applies the route's records in stream order before
  it admits anything, then follows the log: an admitter that lost its lease without knowing
  it yet may still write, and what it writes counts. Slots of the log that another
  dispatcher releases are purged as KV keys, like any slot: the admitter's watch sees the
  purge, and logs the end itself.
- **Kept short.** Now and then, while it holds the route's lease, the admitter writes a
  checkpoint (every slot of the log that runs now, as starts) and, once it has read the log
  up to that record, purges what came before. Every record expires with the latest slot it
  names (``Nats-TTL``), so the log of a route nobody admits any more empties itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import nats.errors

from cogo.streams.flow import SlotLogRecord, log_filter, log_message
from cogo.streams.publisher import Outgoing, Publisher, StreamAck
from cogo.streams.topology import FLOW_BUCKET

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)

RECORD_ENTRIES = 2_000  # starts and ends per record at most (a message stays ~100 kB)
CHECKPOINT_RECORDS = 500  # a checkpoint after this many records ...
CHECKPOINT_EVERY_S = 10.0  # ... or this long after the last one, if anything was written
KV_STREAM = f"KV_{FLOW_BUCKET}"


class _Batch:
    """What the next record holds, and who waits for it."""

    __slots__ = ("starts", "ends", "until", "followers", "stored")

    def __init__(self) -> None:
        self.starts: list[tuple[str, str, float]] = []
        self.ends: list[str] = []
        self.until = 0.0  # the latest expiry of a slot it names (its records' TTL)
        # the messages to publish right after the record (the attempts of its starts), and
        # the future of their acks
        self.followers: list[tuple[list[Outgoing], asyncio.Future[list[StreamAck]]]] = []
        self.stored: list[asyncio.Future[None]] = []


class SlotLog:
    """One admitter session's writer of a route's slot log."""

    def __init__(
        self,
        publisher: Publisher,
        js: JetStreamContext,
        route: str,
        session: str,
        running: Callable[[], list[tuple[str, str, float]]],
        valid: Callable[[], bool],
    ) -> None:
        self._publisher = publisher
        self._js = js
        self.route = route
        self.session = session
        # asyncio.get_running_loop() is a getpid() syscall per call here: ask once
        self._loop = asyncio.get_running_loop()
        self._running = running  # the slots of the log that run now (a checkpoint's content)
        self._valid = valid  # this process holds the route's lease
        self._n = 0
        self._batch: _Batch | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._since_checkpoint = 0
        self._checkpoint_at = time.monotonic()
        self._purge_below = 0  # a checkpoint's sequence: purge below it once read back
        self.failed: BaseException | None = None  # a record that was not stored

    # -- writing --------------------------------------------------------------------------

    async def start(self, slot: str, key: str, expires_at: float, messages: list[Outgoing]) -> list[StreamAck]:
        """Record a slot taken, then publish ``messages`` (its attempt) right behind the
        record that holds it; returns their acks once they and the record are stored.
        Raises what refused any of them (``messages`` are not sent if the record could not be)."""
        batch = self._join()
        batch.starts.append((slot, key, expires_at))
        batch.until = max(batch.until, expires_at)
        acks: asyncio.Future[list[StreamAck]] = self._loop.create_future()
        batch.followers.append((messages, acks))
        return await acks

    def starts(self, taken: list[tuple[str, str, float]]) -> asyncio.Future[None]:
        """Record slots taken whose attempts go out later (a round's picks: ``(slot, flow
        key, expires_at)``); the future resolves once the record is stored."""
        batch = self._join()
        batch.starts += taken
        batch.until = max(batch.until, *(t[2] for t in taken))
        stored = self._loop.create_future()
        batch.stored.append(stored)
        return stored

    def end(self, slot: str, expires_at: float) -> asyncio.Future[None]:
        """Record a slot freed; the future resolves once the record is stored."""
        batch = self._join()
        batch.ends.append(slot)
        batch.until = max(batch.until, expires_at)
        stored = self._loop.create_future()
        batch.stored.append(stored)
        return stored

    def note(self, starts: list[tuple[str, str, float]], ends: list[tuple[str, float]]) -> None:
        """Record slots taken and freed that nobody waits for (another writer's, or a purge
        seen by the watch): in the next record, as ours."""
        if not starts and not ends:
            return
        batch = self._join()
        batch.starts += starts
        batch.ends += [slot for slot, _ in ends]
        batch.until = max([batch.until, *(s[2] for s in starts), *(e[1] for e in ends)])

    def tick(self) -> None:
        """Write a checkpoint if one is due, even when nothing else is to be written: the
        log of a route that went quiet shrinks to what still runs."""
        if self._batch is None and self._checkpoint_due() and self._valid():
            self._join()

    def _join(self) -> _Batch:
        batch = self._batch
        if batch is None:
            # the record goes out once the loop has run what is ready now: everything
            # those handlers take or free joins it
            batch = self._batch = _Batch()
            self._background(self._flush(batch))
        return batch

    async def _flush(self, batch: _Batch) -> None:
        self._batch = None
        now = time.time()
        checkpoint = self._checkpoint_due() and self._valid()
        starts = self._running() if checkpoint else batch.starts
        if checkpoint:
            batch.until = max(batch.until, now, *(s[2] for s in starts))
        publish = self._publisher.publish
        records: list[asyncio.Future[StreamAck]] = []
        try:
            for part_starts, part_ends in _chunks(starts, batch.ends):
                self._n += 1
                record = SlotLogRecord(self.session, part_starts, part_ends)
                records.append(await publish(*log_message(self.route, self.session, self._n, record, batch.until, now)))
        except BaseException as exc:
            self._fail(batch, exc)  # nothing of the attempts went out
            if isinstance(exc, Exception):
                return
            raise
        # the attempts behind the record, on the same connection: the server stores the
        # record first, so no attempt runs that a takeover would not count
        followers: list[tuple[asyncio.Future[list[StreamAck]], list[asyncio.Future[StreamAck]]]]
        followers = []
        for messages, done in batch.followers:
            sent = []
            try:
                for message in messages:
                    sent.append(await publish(*message))
            except Exception as exc:
                _settle(done, exc)
            followers.append((done, sent))
        outcomes = await asyncio.gather(*records, *(f for _, sent in followers for f in sent), return_exceptions=True)
        failure = next((o for o in outcomes[: len(records)] if isinstance(o, BaseException)), None)
        if failure is not None:
            self._fail(batch, failure)
            return
        i = len(records)
        for done, sent in followers:
            mine = outcomes[i : i + len(sent)]
            i += len(sent)
            refused = next((o for o in mine if isinstance(o, BaseException)), None)
            if refused is not None:
                _settle(done, refused)
            elif not done.done():
                done.set_result(mine)  # type: ignore[arg-type]  # no exception among them
        for future in batch.stored:
            if not future.done():
                future.set_result(None)
        if checkpoint:
            self._since_checkpoint = 0
            self._checkpoint_at = time.monotonic()
            self._purge_below = outcomes[0].seq  # type: ignore[union-attr]  # not refused
        else:
            self._since_checkpoint += len(records)

    def _fail(self, batch: _Batch, exc: BaseException) -> None:
        self.failed = exc  # the session reloads the route from the bus
        for _, future in batch.followers:
            _settle(future, exc)
        for stored in batch.stored:
            _settle(stored, exc)

    def _checkpoint_due(self) -> bool:
        if self._since_checkpoint >= CHECKPOINT_RECORDS:
            return True
        late = time.monotonic() - self._checkpoint_at >= CHECKPOINT_EVERY_S
        return late and self._since_checkpoint > 0

    # -- reading back ---------------------------------------------------------------------

    def read_to(self, seq: int) -> None:
        """The session's reader has applied every record up to ``seq``: records before the
        last checkpoint may go once it was read back (all before it counted)."""
        below = self._purge_below
        if not below or seq < below or not self._valid():
            return
        self._purge_below = 0
        self._background(self._purge(below))

    async def _purge(self, below: int) -> None:
        try:
            await self._js.purge_stream(KV_STREAM, seq=below, subject=log_filter(self.route))
        except nats.errors.Error as exc:  # the next checkpoint purges them
            log.warning("%s: purging its slot log failed: %s", self.route, exc)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work, name=f"slot log {self.route}")
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def close(self) -> None:
        """Send what is gathered (its waiters get their answer), then stop."""
        while self._flushing:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._flushing))


def _settle(future: asyncio.Future[Any], exc: BaseException) -> None:
    if future.done():
        return
    error = exc if isinstance(exc, Exception) else nats.errors.Error("slot log stopped")
    future.set_exception(error)
    future.exception()  # retrieved: its waiter may be gone


def _chunks(
    starts: list[tuple[str, str, float]], ends: list[str]
) -> list[tuple[list[tuple[str, str, float]], list[str]]]:
    """Starts and ends split into records of at most ``RECORD_ENTRIES`` (ends after starts:
    a record is applied starts first)."""
    if len(starts) + len(ends) <= RECORD_ENTRIES:
        return [(starts, ends)]
    out: list[tuple[list[tuple[str, str, float]], list[str]]] = []
    for i in range(0, len(starts), RECORD_ENTRIES):
        out.append((starts[i : i + RECORD_ENTRIES], []))
    for i in range(0, len(ends), RECORD_ENTRIES):
        out.append(([], ends[i : i + RECORD_ENTRIES]))
    return out
