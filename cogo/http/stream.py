"""``GET /api/tasks/{task_id}/stream``: a task's output as Server-Sent Events (DESIGN §11).

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

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cogo.errors import ProjectionBusy, TaskNotFound, Unavailable
from cogo.http.endpoint import Success, endpoint
from cogo.http.schemas import TaskPath
from cogo.http.state import AppState, state_of
from cogo.http.tasks import task_status
from cogo.streams.events import iso
from cogo.streams.outputs import Output, encode_output, last_seq, output_subject, read_output

EVENT_STREAM = "text/event-stream"
IDLE_S = 2.0  # a quiet stream: ask whether the task ended, and send a keep-alive, this often
KEEPALIVE_EVERY = 5  # quiet periods between keep-alive comments


@endpoint(
    path=TaskPath,
    ok={200: Success(
        "Server-Sent Events: a `chunk` event per ctx.emit (id = stream sequence), then one "
        "`end` event with the final status", media_type=EVENT_STREAM,
    )},
    errors=(TaskNotFound, ProjectionBusy, Unavailable),
)  # fmt: skip
async def stream_task(request: Request, path: TaskPath) -> Response:
    """A task's streamed output (ctx.emit), from the first chunk, until it ends."""
    state = state_of(request)
    task_id = path.task_id
    try:
        await task_status(state, task_id)
    except TaskNotFound:
        if not await last_seq(state.js, output_subject(task_id)):
            raise
    after = request.headers.get("last-event-id", "").strip()
    return StreamingResponse(
        _events(state, task_id, int(after) if after.isdigit() else 0),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(state: AppState, task_id: str, after: int) -> AsyncIterator[bytes]:
    async def finished() -> Output | None:
        try:
            status = await task_status(state, task_id)
        except (TaskNotFound, Unavailable, ProjectionBusy):
            return None
        if not status.finished:
            return None
        return Output(task_id=task_id, attempt=status.attempt, at=iso(), end=True,
                      status=status.status, error_code=status.error_code,
                      error=status.error)  # fmt: skip

    quiet = 0
    yield b": cogo task output\n\n"  # headers and a first byte at once: the client is live
    async for seq, output in read_output(
        state.js, task_id, finished=finished, idle_s=IDLE_S, after_seq=after, ticks=True,
        verifier=state.sealer.outputs if state.sealer is not None else None,
    ):  # fmt: skip
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
        yield f"id: {seq}\nevent: chunk\ndata: ".encode() + data + b"\n\n"


routes = [Route("/api/tasks/{task_id}/stream", stream_task, methods=["GET"])]
