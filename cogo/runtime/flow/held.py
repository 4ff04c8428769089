"""A task held back by flow control, as admission reads it from ``FLOW``.

Admission decodes only the fields it decides on (``Head``: the route, attempt, deadline,
fairness key and priority), not the whole ``WorkOrder``: a route with many thousands held
is loaded faster that way. The held copy itself (``Held.data``) is forwarded untouched when
the task is admitted.
"""

from __future__ import annotations

import msgspec
from nats.aio.msg import Msg

from cogo.runtime.flow.fairness import Held
from cogo.streams.envelope import WorkOrder
from cogo.streams.flow import slot_key


class HeadAssignment(msgspec.Struct):
    key: str | None = None
    priority: int = 5


class Head(msgspec.Struct):
    """The fields of a held ``WorkOrder`` admission needs (decoding the rest costs more)."""

    task_id: str
    route: str
    attempt: int
    deadline: float
    assignment: HeadAssignment


_head_decoder = msgspec.json.Decoder(Head)


def held_of(msg: Msg, route: str) -> Held:
    """The held task a ``FLOW`` message of ``route`` carries (msgspec's errors when it
    cannot be read: the caller leaves such a message alone)."""
    meta = msg.metadata
    head = _head_decoder.decode(msg.data)
    return Held(
        seq=meta.sequence.stream,
        task_id=head.task_id,
        attempt=head.attempt,
        key=head.assignment.key or "",
        priority=head.assignment.priority,
        deadline=head.deadline,
        held_at=meta.timestamp.timestamp(),
        slot=slot_key(route, head.task_id, head.attempt),
        data=msg.data,
    )


def wait_started(order: WorkOrder) -> float:
    """When the attempt began to wait: its submission, or (a retry) the end of its backoff."""
    return order.not_before if order.attempt > 1 else order.submitted_at
