"""A durable task's record in the ``suspensions`` bucket, and the rules that read it.

One key per task (``record_key``): suspended with the order and what it waits for, running
(what arrived while it ran), or cancelled. The rules are pure: when a suspended task is due
(``due``), what among the arrivals and the clock wakes it (``woken``), whether a wake-up is
the one that resumed it (``resumed_by``), and the record of its next run (``resumed``).
The dispatcher (``cogo.runtime.suspension``) changes records by compare-and-set; a worker
reads its task's record to hear of a cancel (``is_cancelled``).
"""

from __future__ import annotations

import hashlib

import msgspec

from cogo.streams.commands import Wake
from cogo.streams.envelope import Waiting, WorkOrder

# a scheduled wake-up may land a moment before its time by another host's clock
DUE_SLACK_S = 1.0
EXPIRED = "ttl"  # ``Record.woken_by`` of a task its TTL ended while it waited


class Record(msgspec.Struct, frozen=True, omit_defaults=True):
    """A durable task as the dispatcher keeps it: suspended (``order``, ``waiting``), running
    run ``run`` (``arrived``: what came while it ran) or cancelled."""

    state: str  # running | suspended | cancelled
    run: int = -1  # the order's ``resumes``; -1: whichever run is current
    order: WorkOrder | None = None
    waiting: list[Waiting] = []
    arrived: list[str] = []
    woken_by: str | None = None
    # wake-ups that came while the task ran and whose route was not known then: journaled
    # on the route of the run when it suspends
    pending: list[Wake] = []


record_decoder = msgspec.json.Decoder(Record)


def record_key(task_id: str) -> str:
    """The KV key of a task (task ids may hold characters keys cannot)."""
    return "t" + hashlib.sha256(task_id.encode()).hexdigest()[:40]


def is_cancelled(value: bytes | None) -> bool:
    """Whether a stored record says its task was cancelled."""
    if not value:
        return False
    try:
        return record_decoder.decode(value).state == "cancelled"
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False


def arrival(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def due(waiting: list[Waiting], deadline: float) -> float:
    """When the earliest timer, signal timeout or the TTL of a suspended task is due."""
    return min([w.until for w in waiting if w.until is not None] + [deadline])


def resumed_by(record: Record, wake: Wake) -> bool:
    """Whether ``wake`` is what resumed ``record``'s current run (a timer wakes a run as
    ``timer:<name>`` or ``timeout:<name>``, whichever of its waits was due)."""
    woken_by = record.woken_by or ""
    if wake.kind == "timer":
        return woken_by.startswith(("timer:", "timeout:"))
    return woken_by == arrival(wake.kind, wake.name)


def woken(record: Record, arrived: list[str], now: float) -> str | None:
    """What, among ``arrived`` and the clock, wakes a suspended ``record`` (None: nothing)."""
    wanted = {arrival(w.kind, w.name) for w in record.waiting if w.kind != "timer"}
    for came in arrived:
        if came in wanted:
            return came
    for w in record.waiting:
        if w.until is not None and w.until <= now + DUE_SLACK_S:
            return arrival(w.kind, w.name) if w.kind == "timer" else f"timeout:{w.name}"
    return None


def resumed(record: Record, woken_by: str) -> Record:
    """The record of the suspended task's next run, woken by ``woken_by``."""
    assert record.order is not None
    order = msgspec.structs.replace(record.order, resumes=record.order.resumes + 1)
    return Record(state="running", run=order.resumes, order=order, woken_by=woken_by)
