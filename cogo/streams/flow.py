"""Flow control on the bus: where held tasks wait, what a running attempt holds, who admits.

Names and wire types only; the admitting is ``cogo.runtime.flow.admission``, the fair choice of the
next task ``cogo.runtime.flow.fairness``.

- **Held tasks** wait in the ``FLOW`` stream (limits retention) on
  ``flow.<route>.<priority>.<key>``, one subject per route, priority and key, so no held task
  sits in ``TASKS`` (in stream order behind it, or un-acked against ``max_ack_pending``) and
  none is nak'd again and again (each redelivery would count against ``max_deliver``). The
  body is the ``WorkOrder`` of the attempt; its admitter deletes it once it is forwarded.
- **Slots**: an admitted attempt holds the slot ``slot.<route>.<task>.<attempt>`` (its
  ``WorkOrder.flow_slot``) until its result is handled. Its admitter records it in the
  route's **slot log**, one record per batch of admissions and releases: records
  ``log.<route>.<session>.<n>`` in the KV bucket ``flow`` (a ``SlotLogRecord``, applied in
  stream order: a start counts a slot, an end frees it), each with a per-message TTL that
  ends a little after the latest deadline it names (``Nats-TTL``, the server's clock): an
  attempt cannot run past its deadline (its worker stops it there), so a slot whose release
  was lost never outlives what it stood for. A new admitter replays the log; each admitter
  checkpoints what runs now and purges the records before it, so the log stays about as
  long as what runs. A dispatcher that handles a result of a route it does not admit purges
  the slot's key in the same bucket (a marker the admitter's watch turns into an end of its
  log). A slot stored under its key (a ``Slot``, as dispatchers before the slot log wrote
  them) still counts until it is purged or expires.
- **Admission** of a route belongs to one dispatcher at a time: the routes are hashed into
  ``FLOW_PARTITIONS`` partitions, leased in the same bucket (``cogo.streams.leases``).
- **What an admitter sees** (per key: running, waiting, rate) is ``state.<route>`` in the same
  bucket, rewritten every second or so while it changes: ``GET /api/flow`` reads it.

Keys and task ids are free text; in subjects and KV keys they appear base64url-encoded, and a
route by its consumer name (``echo-run-0``), which the registry keeps unique.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from typing import Any

import msgspec

from cogo.streams.envelope import WorkOrder
from cogo.streams.publisher import Outgoing
from cogo.streams.routes import durable_name
from cogo.streams.topology import FLOW, FLOW_BUCKET

FLOW_PARTITIONS = 8
HELD_PREFIX = "flow"
# a slot outlives its task's deadline by this much: the result of an attempt that ran to the
# deadline is still on its way to a dispatcher then
SLOT_GRACE_S = 10.0
RELEASE_MARKER_TTL_S = 60  # purge markers of released slots go after this (whole seconds)
SNAPSHOT_TTL_S = 30  # an admitter that stopped writing its snapshot drops out of /api/flow
TTL_HEADER = "Nats-TTL"
NOT_FOUND = 10037  # "no message found": deleting a held task somebody already deleted
SEQ_NOT_FOUND = 10043


class Slot(msgspec.Struct, frozen=True):
    """What one admitted attempt holds, as stored under its slot key."""

    task_id: str
    attempt: int
    key: str
    admitted_at: float  # unix seconds
    expires_at: float  # unix seconds: the task's deadline plus SLOT_GRACE_S
    admitter: str


class SlotLogRecord(msgspec.Struct, frozen=True, array_like=True):
    """One batch of the slot log: slots taken, then slots freed, by one admitter session."""

    session: str
    starts: list[tuple[str, str, float]] = []  # (slot key, flow key, expires_at)
    ends: list[str] = []  # slot keys


class KeyFigures(msgspec.Struct, frozen=True, omit_defaults=True):
    """One key of a route as its admitter sees it."""

    key: str
    running: int = 0
    waiting: int = 0
    waiting_by_priority: dict[str, int] = msgspec.field(default_factory=dict)
    rate_per_s: float = 0.0  # attempts started per second, over the last few seconds
    tokens: float | None = None  # what the key's token bucket holds (a rate limit is set)
    held_by: str | None = None  # the limit its waiting tasks wait for


class RouteSnapshot(msgspec.Struct, frozen=True):
    """A route's flow as its admitter sees it (``state.<route>`` in the ``flow`` bucket)."""

    route: str
    admitter: str
    updated_at: float
    limits: dict[str, Any]
    running: int
    waiting: int
    rate_per_s: float
    keys: list[KeyFigures]
    keys_omitted: int = 0  # keys past the snapshot's limit (the busiest are listed)


_encoder = msgspec.json.Encoder()
_slot_decoder = msgspec.json.Decoder(Slot)
_snapshot_decoder = msgspec.json.Decoder(RouteSnapshot)
_log_decoder = msgspec.json.Decoder(SlotLogRecord)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def key_of(order: WorkOrder) -> str:
    """The flow key of an attempt: ``__assignment.key``, or ``""`` for tasks without one."""
    return order.assignment.key or ""


def route_token(route: str) -> str:
    return durable_name(route)


def key_token(key: str) -> str:
    """A subject token for a key (``k`` + base64url: never empty, never a wildcard)."""
    return "k" + _b64(key)


def held_subject(order: WorkOrder) -> str:
    """Where ``order`` waits while it is held: ``flow.<route>.<priority>.<key>``."""
    priority = order.assignment.priority
    return f"{HELD_PREFIX}.{route_token(order.route)}.{priority}.{key_token(key_of(order))}"


def held_filter(route: str) -> str:
    """Every held task of ``route``."""
    return f"{HELD_PREFIX}.{route_token(route)}.>"


def held_msg_id(order: WorkOrder) -> str:
    """Holding an attempt twice (a redelivered submission) stores it once."""
    return f"{order.task_id}:{order.attempt}:held"


def slot_key(route: str, task_id: str, attempt: int) -> str:
    """The slot attempt ``attempt`` of ``task_id`` holds while it runs."""
    return f"slot.{route_token(route)}.{_b64(task_id)}.{attempt}"


def slot_prefix(route: str) -> str:
    return f"slot.{route_token(route)}."


def log_prefix(route: str) -> str:
    """The slot log of ``route`` (its records are ``<prefix><session>.<n>``)."""
    return f"log.{route_token(route)}."


def log_filter(route: str) -> str:
    """Every record of the slot log of ``route``, as a subject of the bucket's stream."""
    return _kv_subject(log_prefix(route) + ">")


def snapshot_key(route: str) -> str:
    return f"state.{route_token(route)}"


def partition_of(route: str) -> int:
    """The admission partition of ``route`` (stable across processes and releases)."""
    return zlib.crc32(route.encode()) % FLOW_PARTITIONS


def _kv_subject(key: str) -> str:
    return f"$KV.{FLOW_BUCKET}.{key}"


def _ttl(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


def release_message(key: str) -> Outgoing:
    """Release a slot: purge its key (the marker itself goes after a minute)."""
    headers = {
        "KV-Operation": "PURGE",
        "Nats-Rollup": "sub",
        TTL_HEADER: _ttl(RELEASE_MARKER_TTL_S),
    }
    return _kv_subject(key), b"", headers


def log_message(route: str, session: str, n: int, record: SlotLogRecord, until: float, now: float) -> Outgoing:
    """Record ``record`` in the slot log of ``route``; it may go once every slot it names has
    expired (``until``, the latest expiry among them)."""
    subject = _kv_subject(f"{log_prefix(route)}{session}.{n}")
    return subject, _encoder.encode(record), {TTL_HEADER: _ttl(max(until - now, 0.0) + 1)}


def decode_log_record(data: bytes) -> SlotLogRecord:
    return _log_decoder.decode(data)


def snapshot_message(snapshot: RouteSnapshot) -> Outgoing:
    data = _encoder.encode(snapshot)
    return _kv_subject(snapshot_key(snapshot.route)), data, {TTL_HEADER: _ttl(SNAPSHOT_TTL_S)}


def delete_held_message(seq: int) -> Outgoing:
    """Delete one held task by its ``FLOW`` sequence.

    A request to the stream API sent through the actor's publisher, whose answers come back
    like stream acks (a refusal is raised, success carries no sequence): many deletes share
    one round trip. ``no_erase``: the message is gone either way; overwriting it first
    costs a disk write and buys nothing here."""
    body = json.dumps({"seq": seq, "no_erase": True}).encode()
    return f"$JS.API.STREAM.MSG.DELETE.{FLOW}", body, None


def decode_slot(data: bytes) -> Slot:
    return _slot_decoder.decode(data)


def decode_snapshot(data: bytes) -> RouteSnapshot:
    return _snapshot_decoder.decode(data)


def encode_snapshot(snapshot: RouteSnapshot) -> bytes:
    return _encoder.encode(snapshot)
