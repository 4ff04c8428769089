"""``cogo.Client``: submit tasks and wait for them, from any Python program (docs/design.md §12).

    async with cogo.Client("nats://127.0.0.1:4222") as client:
        handle = await client.submit("lexicon.count.0", {"text": "a b c"})
        print(await handle.result(timeout=30))       # or raises cogo.TaskFailed

Waiting costs what the terminal event costs. ``submit`` subscribes to the route's terminal
events (``events.execute_done.<route>``, ``events.execute_failed.<route>``) *before* it
publishes, so the handle it returns learns its end from that event alone: no request to the
projector, no wait for DuckDB. Until then ``handle.status()`` reads ``queued`` where the
projection knows nothing yet (this client knows it submitted the task).

A task submitted elsewhere (``client.handle(task_id)``) is looked up once: the projector
answers with what it has applied (``cogo.tasks.status`` with ``"wait": false``) and how far
that is; the terminal events the stream holds past that point are read from the bus, so the
answer never waits for DuckDB to catch up. Without a projector on the bus the route's
terminal events are read from the stream. Either way the subscription, made first, catches
an end that comes later. A reconnection can drop events: after one, a waiter looks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, overload

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError, KeyNotFoundError

from cogo import tracing
from cogo.config import resolve_data_dir
from cogo.endpoints import read_endpoints
from cogo.errors import (
    BackpressureError,
    CogoError,
    TaskFinished,
    TaskNotFound,
    UnknownRoute,
)
from cogo.sdk.handle import (
    TaskHandle,
    Watch,
    payload_dict,
    return_type,
    route_name,
)
from cogo.sdk.terminal import from_event, scan_terminal, terminal_subjects
from cogo.streams.commands import cancel_message, signal_message, since_of
from cogo.streams.envelope import ASSIGNMENT_KEY, EXECUTE_SUBJECT, MSG_ID, encoder, new_id
from cogo.streams.events import decode_event
from cogo.streams.outputs import Output, end_of, read_output
from cogo.streams.routes import check_route
from cogo.streams.seal import OutputVerifier
from cogo.streams.status import TERMINAL, TaskStatus
from cogo.streams.topology import POLICY_BUCKET, STATUS_SUBJECT

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")
# an ``@app.agent`` handler: ``(ctx, payload: P) -> R``; it stands for its route
AgentFunction = Callable[[Any, P], Awaitable[R]]

RECHECK_S = 5.0  # while waiting, ask the projector this often (a safety net; see Watch)
STATUS_TIMEOUT_S = 10.0
_status_decoder = msgspec.json.Decoder(TaskStatus)


class Client:
    """A connection to Cogo's bus for submitting tasks and following them.

    ``nats_url`` defaults to the running ``cogo up`` of ``data_dir`` (its ``endpoints.json``,
    which also holds the ``client`` user's credentials under ``--auth``).
    """

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        data_dir: str | Path | None = None,
        name: str = "cogo-client",
    ) -> None:
        self._url = nats_url
        self._user, self._password = user, password
        # found as every command finds it: data_dir=, COGO_DATA_DIR, the project's cogo.toml
        self._data_dir = resolve_data_dir(data_dir)
        self._name = name
        self._nc: NATS | None = None
        self._known_routes: set[str] = set()
        self._subscribed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[TaskStatus]]] = {}
        self._watches: weakref.WeakValueDictionary[str, Watch] = weakref.WeakValueDictionary()
        self._outputs = OutputVerifier.from_env()  # COGO_OUTPUT_KEY, else endpoints.json

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise CogoError("the client is not connected: use `async with cogo.Client(...)`")
        return self._nc

    async def connect(self) -> None:
        from cogo.streams.connection import connect

        url, user, password = self._url, self._user, self._password
        if url is None:
            endpoints = read_endpoints(self._data_dir)
            if endpoints is None:
                raise CogoError(
                    f"no running `cogo up` in {self._data_dir} (no endpoints.json there): "
                    "start one with `cogo up`, or say where yours is with "
                    "Client(data_dir=...), COGO_DATA_DIR or a cogo.toml (data_dir) in your "
                    "project, or connect anywhere with Client(nats_url)"
                )
            url = endpoints.nats_url
            user = user or endpoints.nats_user
            password = password or endpoints.nats_password
            if endpoints.output_key:  # under --auth: outputs are verified
                self._outputs = OutputVerifier(endpoints.output_key)
        self._nc = await connect(url, self._name, user=user, password=password)
        await asyncio.to_thread(tracing.enabled)  # decided (SDK imported if on) off the loop

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None

    # -- submitting --------------------------------------------------------------------

    @overload
    async def submit(
        self,
        route: AgentFunction[P, R],
        payload: P | dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        assignment: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> TaskHandle[R]: ...
    @overload
    async def submit(
        self,
        route: str,
        payload: Any = None,
        *,
        task_id: str | None = None,
        assignment: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> TaskHandle[Any]: ...
    async def submit(
        self,
        route: Any,
        payload: Any = None,
        *,
        task_id: str | None = None,
        assignment: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> TaskHandle[Any]:
        """Submit a task to ``route``; ``assignment`` becomes its ``__assignment``.

        ``route`` is a route (``"lexicon.count.0"``) or the ``@app.agent`` function declared
        on it (``client.submit(count, Text(text="a b"))``: the handle's ``result()`` then
        returns the function's return type, decoded from the JSON result). ``payload`` is a dict or the type the agent
        declared (a msgspec Struct, pydantic model, dataclass, TypedDict). Resubmitting a
        ``task_id`` within the duplicate window runs nothing twice (``handle.duplicate``).
        UnknownRoute if no app declared ``route``.
        """
        result_type = return_type(route)
        route = route_name(route)
        await self._check_route(route)
        body: dict[str, Any] = payload_dict(payload)
        if assignment is not None:
            body[ASSIGNMENT_KEY] = assignment
        task_id = task_id or new_id()
        message: dict[str, Any] = {"task_id": task_id, "route": route, "payload": body}
        if correlation_id:
            message["correlation_id"] = correlation_id
        # the end is caught from here on: nothing the task does can come before this
        watch = await self._watch(task_id, route)
        submitted_at = time.time()
        ack = await self._publish_task(encoder.encode(message), self._task_headers(task_id, route))
        handle: TaskHandle[Any] = TaskHandle(
            self,
            task_id,
            route,
            duplicate=bool(ack.duplicate),
            seq=ack.seq,
            submitted_at=submitted_at,
            watch=watch,
        )
        handle.result_type = result_type
        return handle

    def _task_headers(self, task_id: str, route: str) -> dict[str, str]:
        """The headers of a submission: its ``Nats-Msg-Id`` is the task id, and, with
        tracing on, the submit span's ``traceparent``."""
        return tracing.submitted({MSG_ID: task_id}, task_id=task_id, route=route)

    async def _publish_task(self, data: bytes, headers: dict[str, str]) -> Any:
        try:
            return await self.nc.jetstream().publish(EXECUTE_SUBJECT, data, headers=headers, timeout=10)
        except APIError as exc:  # the TASKS stream refuses (full): nothing was accepted
            raise BackpressureError(f"the bus refused the task: {exc.description}") from None

    async def _watch(self, task_id: str, route: str) -> Watch:
        """Subscribe to ``route``'s terminal events (once) and track ``task_id``'s end."""
        await self._subscribe(route)
        watch = self._watches.get(task_id)
        # an ended watch belongs to an earlier run of this id: a resubmission past the
        # duplicate window is a new run (a duplicate looks its end up: see _await_watch)
        if watch is None or watch.final.done():
            future: asyncio.Future[TaskStatus] = asyncio.get_running_loop().create_future()
            watch = Watch(route, future, self._reconnects())
            self._watches[task_id] = watch
        return watch

    def _reconnects(self) -> int:
        return int(self.nc.stats.get("reconnects", 0))

    def handle(self, task_id: str, route: str | None = None) -> TaskHandle[Any]:
        """A handle on a task submitted elsewhere (by id; ``route`` helps waiting)."""
        return TaskHandle(self, task_id, route, submitted_at=0.0)

    async def _check_route(self, route: str) -> None:
        if route in self._known_routes:
            return
        check_route(route, builtin=True)  # InvalidRoute before a wildcard reaches the bucket
        kv = await self.nc.jetstream().key_value(POLICY_BUCKET)
        try:
            entry = await kv.get(route)
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            raise UnknownRoute(f"unknown route {route!r}: no app declared it")
        self._known_routes.add(route)

    # -- durable tasks -----------------------------------------------------------------

    async def signal(self, task_id: str, name: str, data: Any = None) -> None:
        """Send signal ``name`` (with JSON ``data``) to a task's ``ctx.wait_signal(name)``;
        kept until the task ends if it does not wait yet, the first of a name counts.
        TaskNotFound for an unknown task, TaskFinished for one that ended.

            await client.signal(task_id, "approve", {"by": "ana"})
        """
        status = await self._live(task_id, "signal")
        subject, body, headers = signal_message(task_id, name, data, route=status.route)
        await self.nc.jetstream().publish(subject, body, headers=headers, timeout=10)

    async def cancel(self, task_id: str, reason: str | None = None) -> None:
        """Cancel a task and its descendants: a queued or suspended one ends at once, a
        running handler gets ``CancelledError`` at its next await; it ends ``cancelled``.
        Idempotent; TaskNotFound for an unknown task, TaskFinished for one that ended."""
        status = await self._live(task_id, "cancel", cancelled_ok=True)
        if status.status == "cancelled":
            return
        subject, body, headers = cancel_message(
            task_id, reason, route=status.route, since=since_of(status.submitted_at)
        )
        await self.nc.jetstream().publish(subject, body, headers=headers, timeout=10)

    async def _live(self, task_id: str, what: str, *, cancelled_ok: bool = False) -> TaskStatus:
        status: TaskStatus | None = None
        for _ in range(20):  # a task submitted a moment ago may not be projected yet
            try:
                status = await self.status(task_id)
                break
            except TaskNotFound:
                await asyncio.sleep(0.1)
        if status is None:
            raise TaskNotFound(f"no task {task_id!r} is known")
        if status.finished and not (cancelled_ok and status.status == "cancelled"):
            raise TaskFinished(f"task {task_id!r} already ended ({status.status}): no {what}")
        return status

    # -- following ---------------------------------------------------------------------

    async def status(self, task_id: str) -> TaskStatus:
        """The task's status: its end if this client saw it, else the projection's answer;
        ``queued`` for a task this client submitted that the projection does not know yet.
        TaskNotFound for a task nothing is known of."""
        watch = self._watches.get(task_id)
        ended = watch is not None and watch.final.done() and not watch.final.cancelled()
        # an end seen here is projected a moment later: catch up, for the whole record
        status, _ = await self._projected(task_id, wait=watch is None or ended)
        if watch is not None and watch.final.done() and not watch.final.cancelled():
            if status is None or not status.finished:
                return watch.final.result()  # the projection has not caught up with the end
        if status is not None:
            return status
        if watch is not None:  # submitted here, not dispatched (or not projected) yet
            return TaskStatus(task_id, watch.route, "queued", 0)
        raise TaskNotFound(f"no events for task {task_id!r} (unknown, or not dispatched yet)")

    async def _projected(self, task_id: str, *, wait: bool) -> tuple[TaskStatus | None, int | None]:
        """The projector's answer (None: it has no event of the task) and the stream
        sequence it has projected up to (None if it does not say). With ``wait`` it first
        catches up with the stream as of the request."""
        request: dict[str, Any] = {"task_id": task_id}
        if not wait:
            request["wait"] = False
        try:
            reply = await self.nc.request(STATUS_SUBJECT, json.dumps(request).encode(), timeout=STATUS_TIMEOUT_S)
        except nats.errors.NoRespondersError:
            raise CogoError(
                "no projector answers task status requests (run `cogo up`, or `cogo run projector`)"
            ) from None
        answer = msgspec.json.decode(reply.data)
        if not isinstance(answer, dict):
            raise CogoError("the projector's answer is not an object")
        seq = answer.pop("projected_seq", None)
        seq = seq if isinstance(seq, int) else None
        if "task_id" not in answer:  # {"error": {code, message}}
            if answer["error"].get("code") == TaskNotFound.code:
                return None, seq
            raise CogoError(answer["error"].get("message", "status unavailable"))
        return msgspec.convert(answer, TaskStatus), seq

    async def stream(self, task_id: str, *, idle_s: float = 1.0) -> AsyncIterator[Output]:
        """``task_id``'s output chunks until its end marker (see ``TaskHandle.stream``)."""

        async def finished() -> Output | None:
            try:
                status = await self.status(task_id)
            except TaskNotFound:
                return None  # submitted, not dispatched yet: keep waiting
            return end_of(status)

        async for _, output in read_output(
            self.nc.jetstream(),
            task_id,
            finished=finished,
            idle_s=idle_s,
            verifier=self._outputs,
        ):
            if output is None:
                continue
            if output.end:
                return
            yield output

    async def wait(self, handle: TaskHandle[Any], timeout: float | None = None) -> TaskStatus:
        """Until ``handle``'s task ends (see the module docstring)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = handle._watch or self._watches.get(handle.task_id)
        if watch is not None:
            return await self._await_watch(handle, watch, deadline, timeout)
        return await self._await_lookup(handle, deadline, timeout)

    async def _await_watch(
        self, handle: TaskHandle[Any], watch: Watch, deadline: float | None, timeout: float | None
    ) -> TaskStatus:
        """A task submitted here: its terminal event ends the wait. A resubmission (a
        duplicate) may have ended before the subscription, so it is looked up first."""
        if handle.duplicate and not watch.final.done():
            self._settle(watch, await self._lookup(handle, bus=True))
        while True:
            left = _left(deadline, handle.task_id, timeout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # (wait_for may swallow a cancel)
                    return await asyncio.shield(watch.final)
            # no end for a while: events dropped by a reconnection are read from the bus,
            # else the projector is asked (a backstop; costs nothing while the task runs)
            reconnects = self._reconnects()
            scan = reconnects != watch.reconnects
            watch.reconnects = reconnects
            self._settle(watch, await self._lookup(handle, bus=scan))

    async def _await_lookup(self, handle: TaskHandle[Any], deadline: float | None, timeout: float | None) -> TaskStatus:
        """A task submitted elsewhere: subscribe, then look it up once (it may have ended)."""
        future: asyncio.Future[TaskStatus] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(handle.task_id, []).append(future)
        try:
            await self._subscribe(handle.route)
            reconnects = self._reconnects()
            known = await self._lookup(handle, bus=True)
            while known is None:
                left = _left(deadline, handle.task_id, timeout)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        return await asyncio.shield(future)
                scan = self._reconnects() != reconnects
                reconnects = self._reconnects()
                known = await self._lookup(handle, bus=scan)
            return known
        finally:
            waiting = self._waiters.get(handle.task_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiters.pop(handle.task_id, None)
            future.cancel()

    @staticmethod
    def _settle(watch: Watch, status: TaskStatus | None) -> None:
        if status is not None and not watch.final.done():
            watch.final.set_result(status)

    async def _lookup(self, handle: TaskHandle[Any], *, bus: bool) -> TaskStatus | None:
        """The task's final status if it already ended, else None. The projector answers
        with what it has; with ``bus``, the terminal events past what it has projected are
        read from the stream, so nothing waits for DuckDB to catch up."""
        try:
            status, projected = await self._projected(handle.task_id, wait=False)
        except CogoError:  # no projector on this bus: read the route's terminal events
            return await scan_terminal(self.nc, handle) if bus else None
        if status is not None and status.finished:
            return status
        if not bus or projected is None:
            return None
        return await scan_terminal(self.nc, handle, after_seq=projected)

    async def _subscribe(self, route: str | None) -> None:
        added = False
        for subject in terminal_subjects(route):
            if subject not in self._subscribed:
                await self.nc.subscribe(subject, cb=self._on_terminal)
                self._subscribed.add(subject)
                added = True
        if added:  # the server has the interest before the task goes out or is looked up
            await self.nc.flush()

    async def _on_terminal(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            return
        task_id = event.task_id or ""
        if event.type not in TERMINAL:
            return
        watch = self._watches.get(task_id)
        waiting = self._waiters.get(task_id)
        if watch is None and not waiting:
            return
        status = from_event(event)
        if watch is not None:
            self._settle(watch, status)
        for future in waiting or ():
            if not future.done():
                future.set_result(status)


def _left(deadline: float | None, task_id: str, timeout: float | None) -> float:
    """Seconds to wait before looking again; TimeoutError past ``deadline``."""
    if deadline is None:
        return RECHECK_S
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"task {task_id} did not end within {timeout}s")
    return min(RECHECK_S, left)
