"""Events: the facts Cogo appends to the ``EVENTS`` stream (docs/design.md §5).

Every event is one ``Event`` struct on ``events.<type>[.<route>]``, published with
``Nats-Msg-Id = event_id``. Ids of facts that must happen once per task are deterministic
(``<task_id>:terminal``), so a dispatcher that handles a message twice, or two dispatchers
racing, still append one terminal event: the stream's duplicate window drops the second.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.client import JetStreamContext

from cogo import tracing
from cogo.streams.catalogue import REQUIRED, checked_data
from cogo.streams.envelope import MSG_ID, Usage, new_id
from cogo.streams.publisher import Publisher
from cogo.streams.seal import guard_id


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """One fact in the event log."""

    event_id: str
    type: str
    at: str  # ISO-8601 UTC with microseconds
    task_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    route: str | None = None
    actor: str | None = None
    attempt: int | None = None
    queue_wait_ms: float | None = None
    duration_ms: float | None = None
    backoff_ms: int | None = None
    next_attempt_at: str | None = None
    error_code: str | None = None
    error: str | None = None
    usage: Usage | None = None
    version: str | None = None
    cohort: str | None = None
    # a catalogue struct or a dict checked against one when built here (make_event); a
    # dict when decoded: read it with cogo.streams.catalogue.data_of
    data: Any = None
    trace_id: str | None = None  # the OpenTelemetry trace it happened in (cogo.tracing)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


# whole second -> its "YYYY-MM-DDTHH:MM:SS"; an event carries several nearby instants
# (now, submitted_at, deadline, claimed_at), so a one-entry cache would keep missing
_iso_seconds: dict[int, str] = {}


def iso(ts: float | None = None) -> str:
    """Unix seconds as ISO-8601 UTC with microseconds (``2026-11-24T06:29:46.123456Z``)."""
    if ts is None:
        ts = time.time()
    fraction, whole = math.modf(ts)
    micros = round(fraction * 1e6)  # as datetime.fromtimestamp rounds (half to even)
    second = int(whole)
    if micros < 0:
        second, micros = second - 1, micros + 1_000_000
    elif micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    # formatting a datetime costs microseconds and runs several times per task: reuse the
    # date and time of day while the second stays the same
    text = _iso_seconds.get(second)
    if text is None:
        if len(_iso_seconds) >= 4096:
            _iso_seconds.clear()
        text = _iso_seconds[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{micros:06d}Z"


def make_event(type: str, *, event_id: str | None = None, **fields: Any) -> Event:
    """Build an event stamped now; ``event_id`` defaults to a fresh random id.

    The event is checked against the catalogue (``cogo.streams.catalogue``): its type must
    be there, ``data`` must be that type's struct or a dict that validates against it, and
    the event fields the type requires must be set. A mistake fails here, where the event
    is built, never on the stream's readers.
    """
    checked_data(type, fields.get("data"))
    if tracing.enabled() and "trace_id" not in fields:
        fields["trace_id"] = tracing.current_trace_id()
    event = Event(event_id=event_id or new_id(), type=type, at=iso(), **fields)
    for name in REQUIRED.get(type, ()):
        if getattr(event, name) is None:
            raise TypeError(f"{type} events need {name}")
    return event


def order_event(type: str, order: Any, *, event_id: str, **fields: Any) -> Event:
    """An event about one attempt of a task (a ``WorkOrder``): its ids, route, attempt,
    version and cohort come from the order; ``fields`` add to or override them."""
    base = {
        "task_id": order.task_id,
        "correlation_id": order.correlation_id,
        "causation_id": order.causation_id,
        "route": order.route,
        "attempt": order.attempt,
        "version": order.version,
        "cohort": order.cohort,
    }
    return make_event(type, event_id=event_id, **{**base, **fields})


def event_subject(event: Event) -> str:
    """``events.<type>`` plus ``.<route>`` when the event belongs to a route."""
    return f"events.{event.type}.{event.route}" if event.route else f"events.{event.type}"


def event_message(event: Event, token: str | None = None) -> tuple[str, bytes, dict[str, str]]:
    """``(subject, data, headers)`` of an event, for publishing it with other messages; with
    the task's ``token``, its de-duplication id is guarded (``cogo.streams.seal``)."""
    msg_id = guard_id(token, event.event_id) if token else event.event_id
    return event_subject(event), _encoder.encode(event), {MSG_ID: msg_id}


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    return _decoder.decode(data)


class EventLog:
    """Appends events to the ``EVENTS`` stream with de-duplication by ``event_id``."""

    def __init__(self, js: JetStreamContext, publisher: Publisher | None = None) -> None:
        self._js = js
        self._publisher = publisher  # an actor's: cheaper per event than js.publish

    async def append(self, event: Event, *, timeout: float = 10.0, msg_id: str | None = None) -> bool:
        """Append one event and wait for the stream's ack; False if it was a duplicate.
        ``msg_id``: the de-duplication id, when not the event id (a guarded one,
        ``cogo.streams.seal``)."""
        headers = {MSG_ID: msg_id or event.event_id}
        if self._publisher is not None:
            subject, data, _ = event_message(event)
            (ack,) = await self._publisher.publish_all([(subject, data, headers)], timeout)
            return not ack.duplicate
        pub = await self._js.publish(event_subject(event), encode_event(event), timeout=timeout, headers=headers)
        return not pub.duplicate

    async def append_async(self, event: Event) -> asyncio.Future[Any]:
        """Start appending; the returned future resolves to the stream's PubAck."""
        return await self._js.publish_async(event_subject(event), encode_event(event), headers={MSG_ID: event.event_id})
