"""Reading one JetStream stream in order, in large batches, for the projector.

The projection's checkpoint lives in DuckDB, not in the consumer: on every (re)start the
feed recreates its consumer at ``checkpoint + 1`` (``reset``), so the consumer's own state
never decides what is applied. The consumer acks with ``AckPolicy.ALL`` after each commit,
which keeps ``nats consumer info`` honest (ack floor = applied) at one ack per batch.

Pull requests are sent by hand to an inbox, one outstanding at a time (no pull requests
left behind; docs/design.md §9): first a ``no_wait`` request for everything available, and only
when nothing is, a lingering request for one message, then ``no_wait`` again for the rest.

Deliveries to that inbox skip nats-py's per-message path (~8 µs a message, half of a
projector's time; see ``cogo.streams.intake``): the feed's sink receives the raw
``(subject, reply, data, headers)`` bytes from the client's protocol parser, and headers
are parsed only where they are used (DLQ rows). Should a nats-py release not take the
hook, the feed falls back to the ordinary callback (``StreamFeed.direct`` says which).

A feed trusts nothing it cannot check: a consumer sequence that skips (a lost delivery)
or a redelivery raises ``FeedDesync``, and the caller resets from its checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.errors import NotFoundError

from cogo.streams.intake import direct_delivery, inline_status, parse_headers
from cogo.streams.pull import ack_tokens, next_subject, pull_request

HEARTBEAT = "100"
# a reader's transaction takes up to this many queued batches (see GroupCommit)
GROUP_COMMIT_BATCHES = 4
# how long past a request's own expiry we wait before declaring the feed lost
REQUEST_GRACE_S = 5.0
# a durable feed's consumer with no pull for this long is deleted by the server; the
# projector's checkpoint is in DuckDB, so one back after that just makes it again
ABANDONED_CONSUMER_S = 7 * 86400.0


class FeedDesync(Exception):  # noqa: N818 - a control-flow signal: reset and carry on
    """Raised when deliveries are missing or repeated; reset the feed from the checkpoint."""


@dataclass(frozen=True, slots=True)
class Position:
    """What the ``$JS.ACK`` reply subject of a delivered message says about it."""

    stream_seq: int
    consumer_seq: int
    delivered: int
    timestamp_ns: int
    pending: int


def position(reply: str | bytes) -> Position:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``.

    Also the newer form with domain and account hash (12 tokens) that servers may send.
    """
    if isinstance(reply, bytes):
        reply = reply.decode()
    delivered, stream_seq, consumer_seq, timestamp_ns, pending = ack_tokens(reply)
    return Position(stream_seq, consumer_seq, delivered, timestamp_ns, pending)


# -- batches -------------------------------------------------------------------------------


@dataclass(slots=True)
class Deliveries:
    """Messages as the parser handed them over, column by column.

    Headers are kept only by feeds that need them (``keep_meta``; the DLQ); subjects always
    (a list append): an EVENTS row's type and route are checked against its subject, which
    the server's permissions enforce while the body says what its publisher likes.
    """

    replies: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    subjects: list[bytes] | None = None
    headers: list[bytes | dict[str, str] | None] | None = None

    def __len__(self) -> int:
        return len(self.replies)

    def extend(self, other: Deliveries) -> None:
        self.replies += other.replies
        self.bodies += other.bodies
        if self.subjects is not None and other.subjects is not None:
            self.subjects += other.subjects
        if self.headers is not None and other.headers is not None:
            self.headers += other.headers


@dataclass(frozen=True, slots=True)
class Fetched:
    """One batch as delivered: the messages and their stream sequences."""

    deliveries: Deliveries
    seqs: list[int]
    pending: int  # messages the consumer still holds after this batch

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def bodies(self) -> list[bytes]:
        return self.deliveries.bodies

    @property
    def last_reply(self) -> str:
        return self.deliveries.replies[-1].decode()

    def subjects(self) -> list[str]:
        if self.deliveries.subjects is None:
            raise ValueError("this feed does not keep subjects (keep_meta=False)")
        return [subject.decode() for subject in self.deliveries.subjects]

    def headers(self) -> list[dict[str, str]]:
        if self.deliveries.headers is None:
            raise ValueError("this feed does not keep headers (keep_meta=False)")
        return [parse_headers(raw) for raw in self.deliveries.headers]

    def timestamps_ns(self) -> list[int]:
        """When each message was stored (parsed on demand: only DLQ rows need it)."""
        return [position(reply).timestamp_ns for reply in self.deliveries.replies]

    @staticmethod
    def merge(batches: Sequence[Fetched]) -> Fetched:
        """Consecutive batches of one feed as one (for a single, larger commit)."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0].deliveries
        deliveries = Deliveries(
            subjects=[] if first.subjects is not None else None,
            headers=[] if first.headers is not None else None,
        )
        seqs: list[int] = []
        for batch in batches:
            deliveries.extend(batch.deliveries)
            seqs += batch.seqs
        return Fetched(deliveries, seqs, batches[-1].pending)


class GroupCommit:
    """One transaction at a time, and the batches fetched meanwhile queued for the next.

    While the writer is busy with a backlog, the reader keeps fetching and batches queue up
    (to ``max_rows``); the next transaction takes them all. A backlog is then written in few
    large transactions (DuckDB alone: ~200k rows/s in 20,000s vs ~150k in 5,000s), while a
    trickle still commits as it comes. Used by the projector and by replay.
    """

    def __init__(self, write: Callable[[Fetched], Coroutine[Any, Any, None]], max_rows: int) -> None:
        self._write = write
        self.max_rows = max_rows
        self.queued: list[Fetched] = []
        self.size = 0
        self._writing: asyncio.Task[None] | None = None

    def add(self, fetched: Fetched) -> None:
        self.queued.append(fetched)
        self.size += len(fetched)

    def can_queue_more(self) -> bool:
        """True while a transaction runs and the queue has room: keep reading."""
        busy = self._writing is not None and not self._writing.done()
        return busy and self.size < self.max_rows

    async def commit(self) -> None:
        """Wait for the running transaction (its error is raised here), start the queue's."""
        await self.wait()
        self._writing = asyncio.create_task(self._write(Fetched.merge(self.queued)))
        self.queued, self.size = [], 0

    async def wait(self) -> None:
        """The running transaction, to its end (it runs on the writer thread regardless)."""
        if self._writing is not None:
            await asyncio.shield(self._writing)


class StreamFeed:
    """Batches of one stream's messages, in stream order, from ``reset(start_seq)`` on."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        *,
        batch: int = 5000,
        max_ack_pending: int | None = None,
        durable: bool = True,
        keep_meta: bool = False,
        description: str = "cogo projector",
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = stream
        self.consumer = consumer
        self.batch = batch
        self.max_ack_pending = max_ack_pending or max(8 * batch, 10_000)
        self.durable = durable
        self.keep_meta = keep_meta
        self.description = description
        self.direct = False  # deliveries bypass nats-py's Msg path (see direct_delivery)
        self.last_consumer_seq = 0
        self.last_stream_seq = 0
        self.last_pending = 0
        self._sub: Subscription | None = None
        self._inbox = ""
        self._buffer = Deliveries()
        self._wanted = 0
        self._status: str | None = None
        self._done = asyncio.Event()
        self._next_subject = next_subject(stream, consumer)

    async def reset(self, start_seq: int) -> None:
        """Recreate the consumer so its first delivery is ``start_seq`` (or the first kept)."""
        await self._unsubscribe()
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(self.stream, self.consumer)
        config = api.ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer if self.durable else None,
            description=self.description,
            deliver_policy=(api.DeliverPolicy.BY_START_SEQUENCE if start_seq > 1 else api.DeliverPolicy.ALL),
            opt_start_seq=start_seq if start_seq > 1 else None,
            # durable: ack the last message of each committed batch; replay: no acks at all
            ack_policy=api.AckPolicy.ALL if self.durable else api.AckPolicy.NONE,
            ack_wait=300.0,
            max_ack_pending=self.max_ack_pending,
            max_waiting=16,
            # a durable one whose projector is gone for good (its data dir deleted) goes too
            inactive_threshold=ABANDONED_CONSUMER_S if self.durable else 120.0,
            mem_storage=not self.durable,
        )
        await self.js.add_consumer(self.stream, config)
        self.last_consumer_seq = 0
        self.last_stream_seq = start_seq - 1
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(
            self._inbox,
            cb=self._on_message,
            pending_msgs_limit=4 * self.batch + 100,
            pending_bytes_limit=1024 * 1024 * 1024,
        )
        self.direct = direct_delivery(self.nc, self._sub._id, self._deliver)

    async def close(self, *, delete: bool = False) -> None:
        await self._unsubscribe()
        if delete:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, self.consumer)

    async def _unsubscribe(self) -> None:
        if self._sub is not None:
            direct_delivery(self.nc, self._sub._id, None)
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def fetch(self, wait: float = 1.0, linger: float = 0.0, *, block: bool = True) -> Fetched | None:
        """The next messages (up to ``batch``); None if none arrived within ``wait`` seconds.

        With ``linger``, a small batch waits that long once for more: each DuckDB commit costs
        milliseconds of CPU, and under a steady trickle committing every few events starves
        the actors sharing the machine. With ``block=False``, only what is there already.
        """
        msgs = await self._request(self.batch, no_wait=True)
        if not msgs and block:
            msgs = await self._request(1, expires=wait)
            if msgs and self.batch > 1:
                msgs.extend(await self._request(self.batch - 1, no_wait=True))
        if msgs and block and linger > 0 and len(msgs) < self.batch // 4:
            await asyncio.sleep(linger)
            msgs.extend(await self._request(self.batch - len(msgs), no_wait=True))
        return self._check(msgs) if msgs else None

    async def ack(self, fetched: Fetched) -> None:
        """Acknowledge the batch's last message and everything delivered before it."""
        if self.durable and len(fetched):
            await self.nc.publish(fetched.last_reply, b"+ACK")

    def _check(self, msgs: Deliveries) -> Fetched:
        # The hot loop of ingest (< 1 µs a message): only the stream sequence of each
        # message is parsed. Consumer sequences grow by one per delivery, redeliveries
        # included, so first/last/count prove nothing was lost; strictly growing stream
        # sequences prove nothing was delivered twice.
        replies = msgs.replies
        first, last = position(replies[0]), position(replies[-1])
        expected = self.last_consumer_seq + 1
        if first.consumer_seq != expected or last.consumer_seq - expected + 1 != len(msgs):
            raise FeedDesync(
                f"{self.stream}/{self.consumer}: deliveries {first.consumer_seq}.."
                f"{last.consumer_seq} ({len(msgs)} messages) where {expected} was next"
            )
        try:
            # every reply of a batch comes from one server: one shape (9 or 12 tokens)
            index = 5 if replies[0].count(b".") == 8 else 7
            seqs = [int(reply.split(b".", index + 1)[index]) for reply in replies]
        except (ValueError, IndexError):
            raise FeedDesync(f"{self.stream}/{self.consumer}: malformed reply subject") from None
        previous = self.last_stream_seq
        for seq in seqs:
            if seq <= previous:
                raise FeedDesync(f"{self.stream}/{self.consumer}: sequence {seq} redelivered")
            previous = seq
        self.last_consumer_seq = last.consumer_seq
        self.last_stream_seq = previous
        self.last_pending = last.pending
        return Fetched(msgs, seqs, last.pending)

    async def _request(self, batch: int, *, no_wait: bool = False, expires: float | None = None) -> Deliveries:
        if self._sub is None:
            raise FeedDesync(f"{self.stream}/{self.consumer}: feed is not reset")
        meta = self.keep_meta
        self._buffer = Deliveries(subjects=[], headers=[] if meta else None)
        self._wanted = batch
        self._status = None
        self._done.clear()
        request = pull_request(batch, expires=expires, no_wait=no_wait)
        await self.nc.publish(self._next_subject, request, reply=self._inbox)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives just as the wait ends, and the projector then never stopped
            async with asyncio.timeout((expires or 0.0) + REQUEST_GRACE_S):
                await self._done.wait()
        except TimeoutError:
            # the server never answered: whatever it still sends belongs to a lost request
            await self._unsubscribe()
            raise FeedDesync(f"{self.stream}/{self.consumer}: pull request unanswered") from None
        if self._status is not None and self._status.startswith("409"):
            # consumer deleted, leadership change, limits: start over from the checkpoint
            raise FeedDesync(f"{self.stream}/{self.consumer}: {self._status}")
        return self._buffer

    def _deliver(self, subject: bytes, reply: bytes, data: bytes, headers: Any) -> None:
        """One delivery to the inbox (called by the client's parser; must not block)."""
        if not data and headers:
            status = inline_status(headers)
            if status is not None:
                if status.startswith(HEARTBEAT):
                    return
                # 404 no messages, 408 request expired, 409 ...: this request is over
                self._status = status
                self._done.set()
                return
        buffer = self._buffer
        buffer.replies.append(reply)
        buffer.bodies.append(data)
        if buffer.subjects is not None:
            buffer.subjects.append(subject)
        if buffer.headers is not None:
            buffer.headers.append(headers)
        if len(buffer.replies) >= self._wanted:
            self._done.set()

    async def _on_message(self, msg: Msg) -> None:
        # the fallback path, when direct delivery could not be hooked in
        self._deliver(msg.subject.encode(), msg.reply.encode(), msg.data, msg.headers)
