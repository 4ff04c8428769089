"""A task's end, read from its terminal events (``execute_done``, ``execute_failed``,
``execute_cancelled`` in ``EVENTS``): what ``Client.wait`` learns without the projector."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import api

from cogo.sdk.handle import TaskHandle
from cogo.streams.catalogue import (
    EXECUTE_DONE,
    EXECUTE_FAILED,
    ExecuteDone,
    ExecuteFailed,
    data_of,
)
from cogo.streams.events import Event, decode_event, iso
from cogo.streams.status import TERMINAL, TaskStatus
from cogo.streams.topology import EVENTS

MAX_SCAN = 50_000  # terminal events read from the stream for one lookup, at most
SCAN_FETCH_TIMEOUT_S = 10.0


def terminal_subjects(route: str | None) -> list[str]:
    """The subjects of ``route``'s terminal events (every route's, without one)."""
    if route:
        return [f"events.{kind}.{route}" for kind in TERMINAL]
    return [f"events.{kind}.>" for kind in TERMINAL]


def from_event(event: Event) -> TaskStatus:
    """The final status a terminal event tells."""
    data: ExecuteDone | ExecuteFailed = (
        data_of(event, ExecuteDone)
        if event.type == EXECUTE_DONE
        else data_of(event, ExecuteFailed)
        if event.type == EXECUTE_FAILED
        else ExecuteFailed()
    )
    return TaskStatus(
        task_id=event.task_id or "",
        route=event.route,
        status=TERMINAL[event.type],
        attempt=event.attempt or 0,
        result=data.result if isinstance(data, ExecuteDone) else None,
        error_code=event.error_code,
        error=event.error,
        usage=msgspec.to_builtins(event.usage) if event.usage else {},
        submitted_at=data.submitted_at,
        finished_at=event.at,
    )


async def scan_terminal(nc: NATS, handle: TaskHandle[Any], after_seq: int | None = None) -> TaskStatus | None:
    """The task's terminal event in ``EVENTS``: after ``after_seq``, or (no projector)
    since shortly before it was submitted, or over the route's whole history."""
    subjects = terminal_subjects(handle.route)
    if after_seq is not None:
        deliver: dict[str, Any] = {
            "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
            "opt_start_seq": after_seq + 1,
        }
    elif handle.route is None:
        return None  # every route's whole history: too much to read for one task
    elif handle.submitted_at:
        deliver = {
            "deliver_policy": api.DeliverPolicy.BY_START_TIME,
            # the server takes RFC 3339 text; nats-py's annotation says datetime
            "opt_start_time": iso(handle.submitted_at - 5.0),
        }
    else:
        deliver = {"deliver_policy": api.DeliverPolicy.ALL}
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=30.0,
        filter_subjects=subjects,
        **deliver,
    )
    sub = await nc.jetstream().pull_subscribe(subjects[0], stream=EVENTS, config=config)
    try:
        # read what the stream holds now, then stop: no fetch waits at the end
        left = (await sub.consumer_info()).num_pending or 0
        if left > MAX_SCAN:  # far behind (a projector replaying): wait for the event
            return None
        while left > 0:
            try:
                msgs = await sub.fetch(min(left, 500), timeout=SCAN_FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                return None
            left -= len(msgs)
            for msg in msgs:
                with contextlib.suppress(msgspec.DecodeError):
                    event = decode_event(msg.data)
                    if event.task_id == handle.task_id and event.type in TERMINAL:
                        return from_event(event)
        return None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
