"""``GET /api/tasks/{task_id}/stream``: a task's output as Server-Sent Events (docs/design.md §11).

From the first chunk on (or after ``Last-Event-ID``, the stream sequence each chunk is sent
with, so a client that reconnects picks up where it was), one ``chunk`` event per
``ctx.emit``, then one ``end`` event with the task's final status, and the response ends.
A task that never emitted gets its ``end`` as soon as it has ended. A comment line goes out
every few quiet seconds so proxies keep the connection. An id nothing is known of (no
status, no output) is a 404 before any event.

    GET /api/tasks/t-1/stream
    id: 17
    event: chunk
    data: {"task_id": "t-1", "attempt": 1, "seq": 1, "delivery": 1, "data": "Hel", ...}

    event: end
    data: {"task_id": "t-1", "attempt": 1, "end": true, "status": "succeeded", ...}
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator

import nats.errors
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cogo.errors import JsonNumberOutOfRange, ProjectionBusy, TaskNotFound, Unavailable
from cogo.http.endpoint import Success, endpoint
from cogo.http.schemas import TaskPath
from cogo.http.state import AppState, state_of
from cogo.http.tasks import task_status
from cogo.streams.outputs import Output, encode_output, end_of, last_seq, output_subject, read_output

EVENT_STREAM = "text/event-stream"
IDLE_S = 2.0  # a quiet stream: ask whether the task ended, and send a keep-alive, this often
KEEPALIVE_EVERY = 5  # quiet periods between keep-alive comments
PULL_BATCH = 32  # chunks in flight per reader: the facade's connection serves them all
RESUME_FOR_S = 60.0  # a bus failing this long ends the response with an `error` event
MAX_SEQ = 2**64 - 1  # a Last-Event-ID from here on was never a stream sequence

log = logging.getLogger(__name__)


@endpoint(
    path=TaskPath,
    ok={
        200: Success(
            "Server-Sent Events: a `chunk` event per ctx.emit (id = stream sequence), then one "
            "`end` event with the final status",
            media_type=EVENT_STREAM,
        )
    },
    errors=(TaskNotFound, ProjectionBusy, Unavailable, JsonNumberOutOfRange),
)
async def stream_task(request: Request, path: TaskPath) -> Response:
    """A task's streamed output (ctx.emit), from the first chunk, until it ends."""
    state = state_of(request)
    task_id = path.task_id
    try:
        await task_status(state, task_id)
    except TaskNotFound:
        if not await last_seq(state.js, output_subject(task_id)):
            raise
    return StreamingResponse(
        _events(state, task_id, _last_event_id(request)),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _last_event_id(request: Request) -> int:
    """The stream sequence a reconnecting client saw last (0: none, or not one of ours)."""
    after = request.headers.get("last-event-id", "").strip()
    if not (after.isascii() and after.isdigit()):
        return 0
    if len(after) > 20 or int(after) >= MAX_SEQ:
        # JetStream's sequences are 64-bit: this id was never sent, and the server would
        # refuse the consumer it asks for (the stream used to be cut after its 200)
        raise JsonNumberOutOfRange(f"Last-Event-ID {after[:40]} is past 64 bits")
    return int(after)


async def _events(state: AppState, task_id: str, after: int) -> AsyncIterator[bytes]:
    async def finished() -> Output | None:
        try:
            status = await task_status(state, task_id)
        except (TaskNotFound, Unavailable, ProjectionBusy, TimeoutError, nats.errors.Error):
            return None  # not known (yet): asked again at the next quiet moment
        return end_of(status)

    quiet = 0
    failing_since: float | None = None
    yield b": cogo task output\n\n"  # headers and a first byte at once: the client is live
    while True:
        try:
            async for seq, output in read_output(
                state.js,
                task_id,
                finished=finished,
                idle_s=IDLE_S,
                after_seq=after,
                ticks=True,
                pull_batch=PULL_BATCH,
                verifier=state.sealer.outputs if state.sealer is not None else None,
            ):
                failing_since = None
                if output is None:
                    quiet += 1
                    if quiet % KEEPALIVE_EVERY == 0:
                        yield b": keep-alive\n\n"
                    continue
                quiet = 0
                data = encode_output(output)
                if output.end:
                    yield b"event: end\ndata: " + data + b"\n\n"
                    return
                after = seq
                yield f"id: {seq}\nevent: chunk\ndata: ".encode() + data + b"\n\n"
            return
        except (TimeoutError, nats.errors.Error) as exc:
            # many readers at once can make the bus answer late (a consumer's creation, a
            # last-message lookup): carry on after the last chunk sent instead of cutting
            # the response without its end
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > RESUME_FOR_S:
                log.warning("task %s: output stream given up: %r", task_id, exc)
                error = {
                    "task_id": task_id,
                    "code": "bus.unavailable",
                    "error": f"the task's output cannot be read: {type(exc).__name__}",
                }
                yield b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
                return
            await asyncio.sleep(random.uniform(0.1, 0.5))


routes = [Route("/api/tasks/{task_id}/stream", stream_task, methods=["GET"])]
