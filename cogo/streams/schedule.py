"""Delayed messages: JetStream message schedules on the ``TASKS`` stream.

A message published to ``schedules.<key>`` with ``Nats-Schedule: @at <RFC 3339>`` and
``Nats-Schedule-Target: <subject>`` is held by the server, not by any consumer: at its time
the server publishes the body (with the custom headers) to the target, a subject of the same
stream, and removes the schedule. So a wait of a day costs one stored message, never a slot
of a consumer's ``max_ack_pending`` (a message held with ``nak(delay)`` does cost one: enough
of them stall the consumer for everyone, which is how held retries used to starve fresh work).

Re-publishing on the same key replaces the schedule; ``cancel_schedule`` purges it. The key
is the caller's to make unique and a valid subject suffix (``retry.<hash>.<attempt>``).
``TASKS`` is created with ``allow_msg_schedules`` (``cogo.streams.topology``); only trusted
users (the dispatcher, the orchestrator) may publish on ``schedules.>`` (``cogo.streams.auth``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

SCHEDULE_SUBJECTS = "schedules.>"  # added to TASKS, which gets allow_msg_schedules=True
SCHEDULE_PREFIX = "schedules"
SCHEDULE_STREAM = "TASKS"  # cogo.streams.topology.TASKS (which imports this module)
SCHEDULE_HEADER = "Nats-Schedule"
TARGET_HEADER = "Nats-Schedule-Target"


def schedule_subject(key: str) -> str:
    return f"{SCHEDULE_PREFIX}.{key}"


def at_header(at: float) -> str:
    """``@at <RFC 3339 UTC>`` with milliseconds (the server accepts sub-second times)."""
    fraction, whole = math.modf(max(at, 0.0))
    stamp = datetime.fromtimestamp(int(whole), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"@at {stamp}.{int(fraction * 1000):03d}Z"


def schedule_message(
    *, key: str, target: str, data: bytes, at: float, headers: dict[str, str] | None = None
) -> tuple[str, bytes, dict[str, str]]:
    """``(subject, data, headers)`` of a schedule, to publish with other messages at once."""
    return (
        schedule_subject(key),
        data,
        {**(headers or {}), SCHEDULE_HEADER: at_header(at), TARGET_HEADER: target},
    )


async def publish_at(
    js: Any,
    *,
    key: str,
    target: str,
    data: bytes,
    at: float,
    headers: dict[str, str] | None = None,
) -> None:
    """Publish `data` to `target` (a TASKS subject) at unix time `at`, once; the schedule's
    subject is `schedules.<key>` (re-publishing the same key replaces it)."""
    subject, body, hdrs = schedule_message(key=key, target=target, data=data, at=at, headers=headers)
    await js.publish(subject, body, headers=hdrs, timeout=10)


async def cancel_schedule(js: Any, *, key: str) -> None:
    """Drop the schedule `key` if it has not fired (purge of its subject)."""
    await js.purge_stream(SCHEDULE_STREAM, subject=schedule_subject(key))
