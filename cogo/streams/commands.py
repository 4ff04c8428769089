"""Commands to the dispatcher about durable tasks: wake-ups (signals, children's outcomes,
timers) and cancels, with ``Cogo-Kind: wake | cancel``, on ``COMMAND_SUBJECT``: the
dispatcher's own queue (its retries travel there too), which under ``--auth`` the
dispatcher, the orchestrator and the ``client`` user may publish to and no app may, so an
app cannot wake, signal or cancel another app's task. The same header on the public submit
subject makes nothing but a malformed task.

Handling one twice does nothing twice (``cogo.runtime.suspension``: fixed journal ids, a
record per task), so they do not rely on the stream's de-duplication: a signal's or a
cancel's ``Nats-Msg-Id`` is unique per sending (``<task>:signal:<name>:<nonce>``,
``<task>:cancel:<nonce>``), and a child's wake-up's (``<child>:wake``) is guarded by the
child's token. De-duplication spans the whole stream, and apps may publish to other
subjects of it (``ctx.call``): with a predictable id an app could publish first and have
the genuine command dropped as a duplicate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from cogo.errors import MalformedMessage
from cogo.streams.catalogue import CallCompleted
from cogo.streams.envelope import KIND_HEADER, MSG_ID, RETRY_SUBJECT, encoder, new_id

WAKE_KIND = "wake"
CANCEL_KIND = "cancel"
COMMAND_SUBJECT = RETRY_SUBJECT
# a worker's running handlers hear a cancel here (core NATS: a handler that misses it is
# cancelled anyway, its outcome fenced by the task's terminal event)
CANCEL_SUBJECT = "cogo.tasks.cancel"


class Wake(msgspec.Struct, frozen=True, omit_defaults=True):
    """A wake-up command: a signal, a child's outcome or a timer, for ``task_id``."""

    task_id: str
    kind: str  # signal | call | timer
    name: str = ""
    data: Any = None
    route: str | None = None
    correlation_id: str | None = None
    done: CallCompleted | None = None


class CancelRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """A cancel command for ``task_id`` (``parent_id`` when its parent's cancel sent it)."""

    task_id: str
    reason: str | None = None
    route: str | None = None
    parent_id: str | None = None
    since: float | None = None  # unix seconds, at or before the task's submission


_wake_decoder = msgspec.json.Decoder(Wake)
_cancel_decoder = msgspec.json.Decoder(CancelRequest)


def decode_wake(data: bytes) -> Wake:
    try:
        return _wake_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"invalid wake-up: {exc}") from exc


def decode_cancel(data: bytes) -> CancelRequest:
    try:
        return _cancel_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"invalid cancel request: {exc}") from exc


def signal_message(
    task_id: str, name: str, data: Any, *, route: str | None = None
) -> tuple[str, bytes, dict[str, str]]:
    """The command that signals ``task_id`` (the first of a name counts)."""
    wake = Wake(task_id=task_id, kind="signal", name=name, data=data, route=route)
    headers = {MSG_ID: f"{task_id}:signal:{name}:{new_id()}", KIND_HEADER: WAKE_KIND}
    return COMMAND_SUBJECT, encoder.encode(wake), headers


def cancel_message(
    task_id: str,
    reason: str | None = None,
    *,
    route: str | None = None,
    parent_id: str | None = None,
    since: float | None = None,
) -> tuple[str, bytes, dict[str, str]]:
    """The command that cancels ``task_id`` and its descendants (idempotent); ``since`` (its
    submission, or earlier) bounds the search of its journal for its children."""
    request = CancelRequest(task_id=task_id, reason=reason, route=route, parent_id=parent_id, since=since)
    headers = {MSG_ID: f"{task_id}:cancel:{new_id()}", KIND_HEADER: CANCEL_KIND}
    return COMMAND_SUBJECT, encoder.encode(request), headers


def since_of(submitted_at: str | None) -> float | None:
    """An ISO submission time (``TaskStatus.submitted_at``) as unix seconds, a minute early
    (clocks drift); None when unknown."""
    if not submitted_at:
        return None
    try:
        return datetime.fromisoformat(submitted_at.replace("Z", "+00:00")).timestamp() - 60.0
    except ValueError:
        return None
