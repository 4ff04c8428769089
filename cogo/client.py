"""``cogo.Client``: submit tasks and wait for them, from any Python program (DESIGN §12).

    async with cogo.Client("nats://127.0.0.1:4222") as client:
        handle = await client.submit("lexicon.count.0", {"text": "a b c"})
        print(await handle.result(timeout=30))       # or raises cogo.TaskFailed

Waiting needs no polling: the client subscribes to the route's terminal events
(``events.execute_done.<route>``, ``events.execute_failed.<route>``) before it asks where the
task is, then asks once (``cogo.tasks.status``, answered by the projector after it has caught
up with the stream), so a task that finished before anyone waited answers at once and one
that finishes later is seen the moment its event is published. Without a projector on the
bus it reads the route's terminal events from the stream instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import APIError, KeyNotFoundError

from cogo.config import DATA_DIR_ENV, env
from cogo.errors import (
    BackpressureError,
    CogoError,
    TaskFailed,
    TaskFinished,
    TaskNotFound,
    UnknownRoute,
)
from cogo.projections.tasks import STATUS_SUBJECT, TERMINAL, TaskStatus
from cogo.streams.catalogue import (
    EXECUTE_CANCELLED,
    EXECUTE_DONE,
    EXECUTE_FAILED,
    ExecuteDone,
    ExecuteFailed,
    data_of,
)
from cogo.streams.commands import cancel_message, signal_message, since_of
from cogo.streams.envelope import ASSIGNMENT_KEY, EXECUTE_SUBJECT, MSG_ID, encoder, new_id
from cogo.streams.events import Event, decode_event, iso
from cogo.streams.outputs import Output, read_output
from cogo.streams.topology import EVENTS, POLICY_BUCKET

RECHECK_S = 5.0  # while waiting, ask again this often (a reconnect can miss an event)
_status_decoder = msgspec.json.Decoder(TaskStatus)


class TaskHandle:
    """A submitted task: ``await handle.result()``, ``await handle.status()``."""

    def __init__(
        self, client: Client, task_id: str, route: str | None, *, duplicate: bool = False,
        seq: int | None = None, submitted_at: float | None = None,
    ) -> None:  # fmt: skip
        self._client = client
        self.task_id = task_id
        self.route = route
        self.duplicate = duplicate  # the bus already had this task_id (it runs once)
        self.seq = seq
        self.submitted_at = submitted_at or time.time()

    def __repr__(self) -> str:
        return f"TaskHandle({self.task_id!r}, route={self.route!r})"

    async def status(self) -> TaskStatus:
        """Where the task is now (TaskNotFound if nothing is known of it yet)."""
        return await self._client.status(self.task_id)

    async def wait(self, timeout: float | None = None) -> TaskStatus:
        """Until the task ends; its final status. TimeoutError after ``timeout`` seconds."""
        return await self._client.wait(self, timeout)

    def stream(self, *, idle_s: float = 1.0) -> AsyncIterator[Output]:
        """The task's output chunks (``ctx.emit``), from the first, until the task ends.

        async for chunk in handle.stream():
            print(chunk.attempt, chunk.seq, chunk.data)

        Each chunk carries the ``attempt`` (and ``delivery``) that emitted it: a retried
        attempt starts its output again at ``seq`` 1, after the failed one's.
        """
        return self._client.stream(self.task_id, idle_s=idle_s)

    async def result(self, timeout: float | None = None) -> Any:
        """The task's result; ``cogo.TaskFailed`` (``code``, ``message``, ``attempts``) if it
        failed, TimeoutError if it has not ended within ``timeout`` seconds."""
        final = await self.wait(timeout)
        if final.status != "succeeded":
            raise TaskFailed(
                final.error_code or "task.failed", final.error or "the task failed",
                final.attempt, task_id=self.task_id,
            )  # fmt: skip
        return final.result


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
        self._data_dir = Path(data_dir or env(DATA_DIR_ENV, ".cogo"))
        self._name = name
        self._nc: NATS | None = None
        self._known_routes: set[str] = set()
        self._subscribed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[TaskStatus]]] = {}

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
            endpoints = _endpoints(self._data_dir)
            url = endpoints.get("nats_url")
            user = user or endpoints.get("nats_user")
            password = password or endpoints.get("nats_password")
            if not url:
                raise CogoError(f"no nats_url given and no running `cogo up` in {self._data_dir}")
        self._nc = await connect(url, self._name, user=user, password=password)

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None

    # -- submitting --------------------------------------------------------------------

    async def submit(
        self,
        route: str,
        payload: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        assignment: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> TaskHandle:
        """Submit a task to ``route``; ``assignment`` becomes its ``__assignment``.

        Resubmitting a ``task_id`` within the duplicate window runs nothing twice
        (``handle.duplicate``). UnknownRoute if no app declared ``route``.
        """
        await self._check_route(route)
        body: dict[str, Any] = dict(payload or {})
        if assignment is not None:
            body[ASSIGNMENT_KEY] = assignment
        task_id = task_id or new_id()
        message: dict[str, Any] = {"task_id": task_id, "route": route, "payload": body}
        if correlation_id:
            message["correlation_id"] = correlation_id
        submitted_at = time.time()
        try:
            ack = await self.nc.jetstream().publish(
                EXECUTE_SUBJECT, encoder.encode(message), headers={MSG_ID: task_id}, timeout=10
            )
        except APIError as exc:  # the TASKS stream refuses (full): nothing was accepted
            raise BackpressureError(f"the bus refused the task: {exc.description}") from None
        return TaskHandle(
            self, task_id, route, duplicate=bool(ack.duplicate), seq=ack.seq,
            submitted_at=submitted_at,
        )  # fmt: skip

    def handle(self, task_id: str, route: str | None = None) -> TaskHandle:
        """A handle on a task submitted elsewhere (by id; ``route`` helps waiting)."""
        return TaskHandle(self, task_id, route, submitted_at=0.0)

    async def _check_route(self, route: str) -> None:
        if route in self._known_routes:
            return
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
        """The task's status from the projection (TaskNotFound if it has no events yet)."""
        try:
            reply = await self.nc.request(
                STATUS_SUBJECT, json.dumps({"task_id": task_id}).encode(), timeout=10
            )
        except nats.errors.NoRespondersError:
            raise CogoError(
                "no projector answers task status requests (run `cogo up`, or `cogo run projector`)"
            ) from None
        answer = msgspec.json.decode(reply.data)
        if isinstance(answer, dict) and "task_id" not in answer:  # {"error": {code, message}}
            if answer["error"].get("code") == TaskNotFound.code:
                raise TaskNotFound(answer["error"].get("message", task_id))
            raise CogoError(answer["error"].get("message", "status unavailable"))
        return msgspec.convert(answer, TaskStatus)

    async def stream(self, task_id: str, *, idle_s: float = 1.0) -> AsyncIterator[Output]:
        """``task_id``'s output chunks until its end marker (see ``TaskHandle.stream``)."""

        async def finished() -> Output | None:
            try:
                status = await self.status(task_id)
            except TaskNotFound:
                return None  # submitted, not dispatched yet: keep waiting
            if not status.finished:
                return None
            return Output(task_id=task_id, attempt=status.attempt, at=iso(), end=True,
                          status=status.status, error_code=status.error_code,
                          error=status.error)  # fmt: skip

        async for _, output in read_output(
            self.nc.jetstream(), task_id, finished=finished, idle_s=idle_s
        ):
            if output is None:
                continue
            if output.end:
                return
            yield output

    async def wait(self, handle: TaskHandle, timeout: float | None = None) -> TaskStatus:
        """Until ``handle``'s task ends (see the module docstring)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TaskStatus] = loop.create_future()
        self._waiters.setdefault(handle.task_id, []).append(future)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            await self._subscribe(handle.route)
            known = await self._lookup(handle)
            if known is not None:
                return known
            while True:
                left = (
                    RECHECK_S if deadline is None else min(RECHECK_S, deadline - time.monotonic())
                )
                if left <= 0:
                    raise TimeoutError(f"task {handle.task_id} did not end within {timeout}s")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):  # (wait_for may swallow a cancel)
                        return await asyncio.shield(future)
                known = await self._lookup(handle)
                if known is not None:
                    return known
        finally:
            waiting = self._waiters.get(handle.task_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiters.pop(handle.task_id, None)
            future.cancel()

    async def _lookup(self, handle: TaskHandle) -> TaskStatus | None:
        """The task's final status if it already ended, else None."""
        try:
            status = await self.status(handle.task_id)
        except TaskNotFound:
            return None
        except CogoError:  # no projector on this bus: read the route's terminal events
            return await self._scan(handle)
        return status if status.finished else None

    async def _scan(self, handle: TaskHandle) -> TaskStatus | None:
        if handle.route is None:
            return None
        js = self.nc.jetstream()
        since = handle.submitted_at - 5.0 if handle.submitted_at else None
        subjects = [
            f"events.{EXECUTE_DONE}.{handle.route}",
            f"events.{EXECUTE_FAILED}.{handle.route}",
            f"events.{EXECUTE_CANCELLED}.{handle.route}",
        ]
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
            deliver_policy=api.DeliverPolicy.BY_START_TIME if since else api.DeliverPolicy.ALL,
            # the server takes RFC 3339 text; nats-py's annotation says datetime
            opt_start_time=_rfc3339(since) if since else None,  # type: ignore[arg-type]
            filter_subjects=subjects,
        )
        sub = await js.pull_subscribe(subjects[0], stream=EVENTS, config=config)
        try:
            while True:
                try:
                    msgs = await sub.fetch(500, timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    return None
                for msg in msgs:
                    event = decode_event(msg.data)
                    if event.task_id == handle.task_id:
                        return _from_event(event)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _subscribe(self, route: str | None) -> None:
        kinds = (EXECUTE_DONE, EXECUTE_FAILED, EXECUTE_CANCELLED)
        subjects = [f"events.{k}.{route}" if route else f"events.{k}.>" for k in kinds]
        for subject in subjects:
            if subject not in self._subscribed:
                await self.nc.subscribe(subject, cb=self._on_terminal)
                self._subscribed.add(subject)
        await self.nc.flush()  # the server has the interest before anyone looks the task up

    async def _on_terminal(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            return
        waiting = self._waiters.get(event.task_id or "")
        if not waiting or event.type not in TERMINAL:
            return
        status = _from_event(event)
        for future in waiting:
            if not future.done():
                future.set_result(status)


def _from_event(event: Event) -> TaskStatus:
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


def _rfc3339(ts: float) -> str:
    from cogo.streams.events import iso

    return iso(ts)


def _endpoints(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((data_dir / "endpoints.json").read_text())  # type: ignore[no-any-return]
    except (OSError, json.JSONDecodeError):
        return {}
