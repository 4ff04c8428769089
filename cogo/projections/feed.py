"""Reading one JetStream stream in order, in large batches, for the projector.

The projection's checkpoint lives in DuckDB, not in the consumer: on every (re)start the
feed recreates its consumer at ``checkpoint + 1`` (``reset``), so the consumer's own state
never decides what is applied. The consumer acks with ``AckPolicy.ALL`` after each commit,
which keeps ``nats consumer info`` honest (ack floor = applied) at one ack per batch.

nats-py's ``fetch()`` costs ~15 µs a message (a queue round trip each); here pull requests
are sent by hand to an inbox whose callback only appends to a list, about 3x faster. One
request is outstanding at a time (no pull requests left behind; DESIGN §9): first a
``no_wait`` request for everything available, and only when nothing is, a lingering request
for one message, then ``no_wait`` again for the rest.

A feed trusts nothing it cannot check: a consumer sequence that skips (a lost delivery)
or a redelivery raises ``FeedDesync``, and the caller resets from its checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.errors import NotFoundError

STATUS = "Status"
HEARTBEAT = "100"
# how long past a request's own expiry we wait before declaring the feed lost
REQUEST_GRACE_S = 5.0


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


def position(reply: str) -> Position:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``.

    Also the newer form with domain and account hash (12 tokens) that servers may send.
    """
    tokens = reply.split(".")
    base = 2 if len(tokens) == 9 else 4
    return Position(
        stream_seq=int(tokens[base + 3]),
        consumer_seq=int(tokens[base + 4]),
        delivered=int(tokens[base + 2]),
        timestamp_ns=int(tokens[base + 5]),
        pending=int(tokens[base + 6]),
    )


@dataclass(frozen=True, slots=True)
class Fetched:
    """One batch as delivered: the messages and their stream sequences."""

    msgs: list[Msg]
    seqs: list[int]
    pending: int  # messages the consumer still holds after this batch

    def __len__(self) -> int:
        return len(self.msgs)

    def timestamps_ns(self) -> list[int]:
        """When each message was stored (parsed on demand: only DLQ rows need it)."""
        return [position(m.reply).timestamp_ns for m in self.msgs]


class StreamFeed:
    """Batches of one stream's messages, in stream order, from ``reset(start_seq)`` on."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        *,
        batch: int = 5000,
        durable: bool = True,
        description: str = "cogo projector",
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = stream
        self.consumer = consumer
        self.batch = batch
        self.durable = durable
        self.description = description
        self.last_consumer_seq = 0
        self.last_stream_seq = 0
        self.last_pending = 0
        self._sub: Subscription | None = None
        self._inbox = ""
        self._buffer: list[Msg] = []
        self._wanted = 0
        self._status: str | None = None
        self._done = asyncio.Event()

    async def reset(self, start_seq: int) -> None:
        """Recreate the consumer so its first delivery is ``start_seq`` (or the first kept)."""
        await self._unsubscribe()
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(self.stream, self.consumer)
        config = api.ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer if self.durable else None,
            description=self.description,
            deliver_policy=(
                api.DeliverPolicy.BY_START_SEQUENCE if start_seq > 1 else api.DeliverPolicy.ALL
            ),
            opt_start_seq=start_seq if start_seq > 1 else None,
            # durable: ack the last message of each committed batch; replay: no acks at all
            ack_policy=api.AckPolicy.ALL if self.durable else api.AckPolicy.NONE,
            ack_wait=300.0,
            max_ack_pending=max(8 * self.batch, 10_000),
            max_waiting=16,
            inactive_threshold=None if self.durable else 120.0,
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

    async def close(self, *, delete: bool = False) -> None:
        await self._unsubscribe()
        if delete:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, self.consumer)

    async def _unsubscribe(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def fetch(self, wait: float = 1.0, linger: float = 0.0) -> Fetched | None:
        """The next messages (up to ``batch``); None if none arrived within ``wait`` seconds.

        With ``linger``, a small batch waits that long once for more: each DuckDB commit costs
        milliseconds of CPU, and under a steady trickle committing every few events starves
        the actors sharing the machine.
        """
        msgs = await self._request(self.batch, no_wait=True)
        if not msgs:
            msgs = await self._request(1, expires=wait)
            if msgs and self.batch > 1:
                msgs += await self._request(self.batch - 1, no_wait=True)
        if msgs and linger > 0 and len(msgs) < self.batch // 4:
            await asyncio.sleep(linger)
            msgs += await self._request(self.batch - len(msgs), no_wait=True)
        return self._check(msgs) if msgs else None

    async def ack(self, msg: Msg) -> None:
        """Acknowledge ``msg`` and everything delivered before it."""
        if self.durable and msg.reply:
            await self.nc.publish(msg.reply, b"+ACK")

    def _check(self, msgs: list[Msg]) -> Fetched:
        # The hot loop of ingest (~1 µs a message): only the stream sequence of each
        # message is parsed. Consumer sequences grow by one per delivery, redeliveries
        # included, so first/last/count prove nothing was lost; strictly growing stream
        # sequences prove nothing was delivered twice.
        first, last = position(msgs[0].reply), position(msgs[-1].reply)
        expected = self.last_consumer_seq + 1
        if first.consumer_seq != expected or last.consumer_seq - expected + 1 != len(msgs):
            raise FeedDesync(
                f"{self.stream}/{self.consumer}: deliveries {first.consumer_seq}.."
                f"{last.consumer_seq} ({len(msgs)} messages) where {expected} was next"
            )
        seqs: list[int] = []
        previous = self.last_stream_seq
        for msg in msgs:
            tokens = msg.reply.split(".")
            seq = int(tokens[5] if len(tokens) == 9 else tokens[7])
            if seq <= previous:
                raise FeedDesync(f"{self.stream}/{self.consumer}: sequence {seq} redelivered")
            seqs.append(seq)
            previous = seq
        self.last_consumer_seq = last.consumer_seq
        self.last_stream_seq = previous
        self.last_pending = last.pending
        return Fetched(msgs, seqs, last.pending)

    async def _request(
        self, batch: int, *, no_wait: bool = False, expires: float | None = None
    ) -> list[Msg]:
        if self._sub is None:
            raise FeedDesync(f"{self.stream}/{self.consumer}: feed is not reset")
        self._buffer = []
        self._wanted = batch
        self._status = None
        self._done.clear()
        request: dict[str, object] = {"batch": batch}
        if no_wait:
            request["no_wait"] = True
        if expires is not None:
            request["expires"] = int(expires * 1e9)
        await self.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}",
            json.dumps(request).encode(),
            reply=self._inbox,
        )
        try:
            await asyncio.wait_for(self._done.wait(), (expires or 0.0) + REQUEST_GRACE_S)
        except TimeoutError:
            # the server never answered: whatever it still sends belongs to a lost request
            await self._unsubscribe()
            raise FeedDesync(f"{self.stream}/{self.consumer}: pull request unanswered") from None
        if self._status is not None and self._status.startswith("409"):
            # consumer deleted, leadership change, limits: start over from the checkpoint
            raise FeedDesync(f"{self.stream}/{self.consumer}: {self._status}")
        return self._buffer

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        if not msg.data and headers and STATUS in headers:
            status = headers[STATUS]
            if status == HEARTBEAT:
                return
            # 404 no messages, 408 request expired, 409 ...: this request is over
            self._status = f"{status} {headers.get('Description', '')}".strip()
            self._done.set()
            return
        self._buffer.append(msg)
        if len(self._buffer) >= self._wanted:
            self._done.set()
