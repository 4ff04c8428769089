"""JetStream message schedules: publish a message to a ``TASKS`` subject at a given time.

A message on ``schedules.<key>`` (a subject of ``TASKS``, which is created with
``allow_msg_schedules``) with ``Nats-Schedule: @at <RFC 3339>`` and ``Nats-Schedule-Target:
<subject>`` is held by the server, which publishes its body (with the custom headers) to the
target at that time and then purges the schedule. Nothing runs in any Cogo process while it
waits, and a restart of every process loses nothing. Re-publishing the same key replaces the
schedule; ``cancel_schedule`` purges it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

SCHEDULE_SUBJECTS = "schedules.>"  # added to TASKS, which gets allow_msg_schedules=True
SCHEDULE_PREFIX = "schedules."


def _at(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def publish_at(
    js: Any, *, key: str, target: str, data: bytes, at: float,
    headers: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Publish ``data`` to ``target`` (a TASKS subject) at unix time ``at``, once; the
    schedule's subject is ``schedules.<key>`` (re-publishing the same key replaces it)."""
    hdrs = dict(headers or {})
    hdrs["Nats-Schedule"] = f"@at {_at(at)}"
    hdrs["Nats-Schedule-Target"] = target
    # the schedule message itself is not de-duplicated: a replacement must always land
    hdrs.pop("Nats-Msg-Id", None)
    await js.publish(SCHEDULE_PREFIX + key, data, headers=hdrs, timeout=10)


async def cancel_schedule(js: Any, *, key: str) -> None:
    """Drop the schedule ``key`` if it has not fired (purge of its subject)."""
    # the stream holding SCHEDULE_SUBJECTS (cogo.streams.topology.TASKS, which imports this)
    await js.purge_stream("TASKS", subject=SCHEDULE_PREFIX + key)
