"""Tasks' streamed output: the ``OUTPUTS`` stream, ``outputs.<task_id>`` (docs/design.md §11).

``ctx.emit(chunk)`` appends one ``Output`` to the task's subject: the chunk (``data``, any JSON value)
with the attempt, delivery and sequence that produced it, so a reader can tell a retry's
output from the first attempt's. When the task ends, the dispatcher (the one place that
decides a task ended) appends the end marker with the final status, in the same batch as
the terminal event, for every task that may have emitted, failed ones included:

- an attempt reports that it emitted (``WorkResult.emitted``) and the dispatcher carries
  that across retries (``WorkOrder.emitted``);
- a redelivered attempt (its worker died) may have emitted before it died: it counts as
  emitted, as does every dead-lettered task;
- the marker's ``Nats-Msg-Id`` is ``<task_id>:end``, so a redelivered result adds none.

Readers (``GET /api/tasks/{id}/stream``, ``TaskHandle.stream()``, ``cogo submit --follow``)
replay from the first chunk with an ordered consumer and stop after the end marker.

Anyone who may publish on ``outputs.>`` could write to any task's subject (permissions
cannot tell one task id from another), so under ``--auth`` every message carries a MAC
(``Cogo-Mac``) under the task's own output token, which only the task's worker (from its
sealed order) and the dispatcher hold; a reader given the output key (``cogo.streams.seal``)
skips anything without a valid one: a forged chunk is never shown, a forged end marker
never closes the stream, and the genuine marker's guarded message id cannot be taken first. A task
that never emitted has neither chunks nor marker: a reader that sees nothing for a moment
asks whether the task ended and stops then.

A subject per task costs the stream's per-subject index memory for its retention; here the
contract asks for it (one task's output must be found among all of them at once), and the
stream is a bounded buffer (``[outputs] max_age_s``, ``max_bytes``; oldest dropped first)
holding subjects only for tasks that emitted. The step journal, which every agent task
would pay for, avoids it (``cogo.sdk.steps``).
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cogo.config import Config
from cogo.streams.envelope import MSG_ID, WorkOrder
from cogo.streams.events import iso
from cogo.streams.seal import OutputVerifier
from cogo.streams.status import TaskStatus

OUTPUTS = "OUTPUTS"
PREFIX = "outputs"
ESCAPED = "~"  # first token of a task id that cannot be a subject as it is (base64url after)
_PLAIN = re.compile(r"[!-~]+")  # printable ASCII, no space


class Output(msgspec.Struct, frozen=True, omit_defaults=True):
    """One message of a task's output: a chunk, or (``end``) the marker that closes it."""

    task_id: str
    attempt: int
    at: str
    seq: int = 0  # 1, 2, ... within one delivery of an attempt; 0 on the end marker
    delivery: int = 1
    data: Any = None  # the chunk, as emitted
    end: bool = False
    status: str | None = None  # the end marker's: succeeded | failed | cancelled
    error_code: str | None = None
    error: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Output)


def end_of(status: TaskStatus) -> Output | None:
    """The end marker a finished task's status stands for (``None`` while it runs): what a
    reader shows when the marker itself is not in the stream (aged out, or never written)."""
    if not status.finished:
        return None
    return Output(
        task_id=status.task_id,
        attempt=status.attempt,
        at=iso(),
        end=True,
        status=status.status,
        error_code=status.error_code,
        error=status.error,
    )


def output_subject(task_id: str) -> str:
    """``outputs.<task_id>``; an id that is no plain subject (beyond printable ASCII, an
    empty, ``*`` or ``>`` token, or a leading ``~``) as ``outputs.~.<base64url of the id>``."""
    tokens = task_id.split(".")
    plain = _PLAIN.fullmatch(task_id) and not task_id.startswith(ESCAPED)
    if plain and all(t and t not in ("*", ">") for t in tokens):
        return f"{PREFIX}.{task_id}"
    encoded = base64.urlsafe_b64encode(task_id.encode()).decode().rstrip("=")
    return f"{PREFIX}.{ESCAPED}.{encoded}"


def stream_config(config: Config) -> api.StreamConfig:
    """``OUTPUTS``: limits retention, a bounded buffer that drops its oldest output."""
    return api.StreamConfig(
        name=OUTPUTS,
        description="tasks' streamed output (ctx.emit), closed by an end marker",
        subjects=[f"{PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=config.bus.replicas,
        # only end markers carry a msg id: a short window is enough for a redelivered result
        duplicate_window=min(120.0, config.bus.duplicate_window_s),
        max_age=config.outputs.max_age_s,
        max_bytes=config.outputs.max_bytes,
        discard=api.DiscardPolicy.OLD,
    )


def encode_output(output: Output) -> bytes:
    return _encoder.encode(output)


def decode_output(data: bytes) -> Output:
    return _decoder.decode(data)


def end_marker(
    order: WorkOrder,
    status: str,
    *,
    attempt: int,
    error_code: str | None = None,
    error: str | None = None,
) -> tuple[str, bytes, dict[str, str]]:
    """``(subject, data, headers)`` of the marker that closes ``order``'s task output."""
    marker = Output(
        task_id=order.task_id,
        attempt=attempt,
        at=iso(),
        end=True,
        status=status,
        error_code=error_code,
        error=error,
    )
    return output_subject(order.task_id), encode_output(marker), {MSG_ID: f"{order.task_id}:end"}


# what a reader asks while nothing arrives: the task's end marker if the task has ended
Finished = Callable[[], Awaitable[Output | None]]


async def read_output(
    js: JetStreamContext,
    task_id: str,
    *,
    finished: Finished | None = None,
    idle_s: float = 1.0,
    after_seq: int = 0,
    ticks: bool = False,
    pull_batch: int = 0,
    verifier: OutputVerifier | None = None,
) -> AsyncIterator[tuple[int, Output | None]]:
    """``(stream sequence, Output)`` of ``task_id`` from its first chunk (or after
    ``after_seq``), up to and including the end marker; with ``ticks``, also ``(0, None)``
    after each quiet ``idle_s`` (a server's cue for a keep-alive).

    With ``pull_batch``, read through a pull consumer, at most that many messages in flight:
    a server reading for many clients on one connection (the HTTP facade) must not have
    their outputs pushed at it all at once, or nats-server cuts the connection as a slow
    consumer (60 readers of a 4 MB output did, ending every stream without its end).

    ``finished`` is asked at the start and whenever nothing arrived for ``idle_s``: once it
    returns an end marker (the task ended), what the stream holds for the task up to now is
    still read, and that marker closes the reading if the stream has none of its own.
    With ``verifier``, a message without the task's valid MAC is skipped.
    """
    subject = output_subject(task_id)
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if after_seq else api.DeliverPolicy.ALL,
        opt_start_seq=after_seq + 1 if after_seq else None,
        inactive_threshold=30.0,
        # a pull consumer's own: nothing to ack (it only reads), one fetch at a time
        ack_policy=api.AckPolicy.NONE if pull_batch else None,
        max_waiting=1 if pull_batch else None,
    )
    if pull_batch:
        psub = await js.pull_subscribe(subject, stream=OUTPUTS, config=config)

        async def fetch() -> list[Any]:
            return await psub.fetch(pull_batch, timeout=idle_s)

        sub: Any = psub
    else:
        sub = await js.subscribe(subject, stream=OUTPUTS, ordered_consumer=True, config=config, idle_heartbeat=5.0)

        async def fetch() -> list[Any]:
            return [await sub.next_msg(timeout=idle_s)]

    seen = after_seq
    ended: Output | None = None  # the task ended; read up to ``until``, then this closes
    until = 0
    try:
        if finished is not None:  # a task that already ended: read what it left, then stop
            ended = await finished()
            if ended is not None:
                until = await last_seq(js, subject)
        while True:
            if ended is not None and seen >= until:
                yield 0, ended
                return
            try:
                msgs = await fetch()
            except (TimeoutError, nats.errors.TimeoutError):
                if finished is not None and ended is None:
                    ended = await finished()
                    if ended is not None:
                        until = await last_seq(js, subject)
                if ticks:
                    yield 0, None
                continue
            for msg in msgs:
                seen = msg.metadata.sequence.stream
                if verifier is not None and not verifier.valid(task_id, msg.data, msg.headers):
                    continue  # not written by the task's worker or the dispatcher: never shown
                try:
                    output = decode_output(msg.data)
                except msgspec.DecodeError:
                    continue  # not ours: nothing a reader could show
                if output.task_id != task_id:
                    continue
                yield seen, output
                if output.end:
                    return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if pull_batch:
            with contextlib.suppress(Exception):
                await js.delete_consumer(OUTPUTS, str(config.name))  # named by pull_subscribe


async def last_seq(js: JetStreamContext, subject: str) -> int:
    """The stream sequence of the last message on ``subject`` (0: there is none)."""
    try:
        msg = await js.get_last_msg(OUTPUTS, subject)
    except NotFoundError:
        return 0
    return int(msg.seq or 0)
