"""A worker process's listeners for what its durable runs wait for.

A run that calls ``ctx.wait_signal`` or ``ctx.call`` first waits in memory for a while
(``cogo.sdk.durable``): if the signal or the child's end arrives meanwhile, the handler goes
on without suspending. ``Waiters`` holds one subscription per route for the whole process
(``events.task_signaled.<route>.*`` and ``events.call_completed.<route>.*``, made on the
first wait of one of the route's tasks) and hands each journal entry to the run waiting for
it. What arrives while nobody waits is not lost: it is in the journal, which a run reads
first.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec

from cogo.streams.catalogue import (
    CALL_COMPLETED,
    TASK_SIGNALED,
    CallCompleted,
    TaskSignaled,
    data_of,
)
from cogo.streams.events import decode_event


class Waiters:
    """A worker's in-process listeners for signals and child results (one subscription each
    for the whole process), so a handler that gets its answer quickly never suspends."""

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self._subs: list[Any] = []
        self._starting: dict[str, asyncio.Event] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def start(self, route: str) -> None:
        """Subscribe to ``route``'s entries, once: on the first call or signal wait of one of
        its tasks in this process (a worker that never waits needs no such traffic, and under
        ``--auth`` an app may hear its own routes' only)."""
        starting = self._starting.get(route)
        if starting is not None:
            await starting.wait()
            return
        starting = self._starting[route] = asyncio.Event()
        try:
            for kind in (TASK_SIGNALED, CALL_COMPLETED):
                self._subs.append(await self._nc.subscribe(f"events.{kind}.{route}.*", cb=self._on_event))
            await self._nc.flush()  # the server has the interest before anything is asked
        finally:
            starting.set()

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        self._starting.clear()

    def register(self, task_id: str, key: str) -> asyncio.Future[Any]:
        fut = self._pending.get((task_id, key))
        if fut is None or fut.cancelled():
            fut = self._pending[(task_id, key)] = asyncio.get_running_loop().create_future()
        return fut

    def discard(self, task_id: str, key: str, fut: asyncio.Future[Any]) -> None:
        if self._pending.get((task_id, key)) is fut:
            del self._pending[(task_id, key)]

    async def _on_event(self, msg: Any) -> None:
        if not self._pending:
            return
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            return
        value: Any
        if event.type == TASK_SIGNALED:
            signaled = data_of(event, TaskSignaled)
            key, value = f"signal:{signaled.name}", msgspec.to_builtins(signaled)
        elif event.type == CALL_COMPLETED:
            done = data_of(event, CallCompleted)
            key, value = f"call:{done.child_id}", msgspec.to_builtins(done)
        else:
            return
        fut = self._pending.get((event.task_id or "", key))
        if fut is not None and not fut.done():
            fut.set_result(value)
