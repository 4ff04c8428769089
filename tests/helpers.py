"""Test helpers: run actors and a projector in-process, submit tasks, read the event log,
wait for a condition."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.client import JetStreamContext
from starlette.routing import BaseRoute

from cogo.config import Config
from cogo.http.app import create_app
from cogo.http.state import AppState
from cogo.projections.projector import Projector
from cogo.runtime.base import Actor
from cogo.runtime.worker import as_actor
from cogo.streams.catalogue import TERMINAL_TYPES
from cogo.streams.connection import connect
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID, encoder, new_id
from cogo.streams.events import Event, decode_event
from cogo.streams.policies import PolicyStore
from cogo.testing import TEST_CONFIG

# The suite's cogo.toml: cogo.testing's fast settings, and the echo test double's retries as
# fast as the rest (its own declaration waits longer between attempts).
SUITE_CONFIG = (
    TEST_CONFIG
    + """
[policy.routes."echo.run.0"]
model = "local"
timeout_ms = 10000
backoff = { initial_ms = 100, multiplier = 2.0, max_ms = 2000 }
"""
)


@contextlib.asynccontextmanager
async def running(url: str, config: Config, *actor_classes: type[Any], **kwargs: Any) -> AsyncIterator[list[Actor]]:
    """Run actors in this process, each on its own connection; drain them on exit."""
    actors: list[Actor] = []
    conns: list[NATS] = []
    try:
        for target in actor_classes:
            cls = as_actor(target)  # a cogo.Worker (echo) runs joined with the runtime's runner
            nc = await connect(url, f"test-{cls.kind}")
            conns.append(nc)
            actor = cls(nc, config, **kwargs)
            await actor.start()
            actors.append(actor)
        yield actors
    finally:
        await asyncio.gather(*(actor.stop(grace=5) for actor in actors))
        await asyncio.gather(*(nc.close() for nc in conns))


async def submit(
    js: JetStreamContext,
    route: str = "echo.run.0",
    payload: dict[str, Any] | None = None,
    task_id: str | None = None,
    **extra: Any,
) -> str:
    task_id = task_id or new_id()
    body = {"task_id": task_id, "route": route, "payload": payload or {}, **extra}
    await js.publish(EXECUTE_SUBJECT, encoder.encode(body), headers={MSG_ID: task_id})
    return task_id


class EventReader:
    """Reads the EVENTS stream from the start through an ephemeral consumer."""

    def __init__(self, js: JetStreamContext, subject: str = "events.>") -> None:
        self.js = js
        self.subject = subject
        self.events: list[Event] = []
        self._sub: Any = None

    async def poll(self, wait: float = 0.2) -> list[Event]:
        if self._sub is None:
            try:
                self._sub = await self._subscribe()
            except (TimeoutError, nats.errors.Error):
                return []  # e.g. a cluster electing a new leader: try again on the next poll
        fresh: list[Event] = []
        while True:
            try:
                msgs = await self._sub.fetch(1000, timeout=wait)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            except nats.errors.Error:
                break  # a transient server error (failover); the next poll continues
            fresh.extend(decode_event(m.data) for m in msgs)
            if len(msgs) < 1000:
                break
        self.events.extend(fresh)
        return fresh

    async def _subscribe(self) -> Any:
        return await self.js.pull_subscribe(
            self.subject,
            stream="EVENTS",
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=60.0,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )

    def terminal(self) -> dict[str, list[Event]]:
        out: dict[str, list[Event]] = {}
        for e in self.events:
            if e.type in TERMINAL_TYPES and e.task_id:
                out.setdefault(e.task_id, []).append(e)
        return out

    def of(self, task_id: str) -> list[Event]:
        return [e for e in self.events if e.task_id == task_id]

    async def wait_terminal(self, task_ids: Iterable[str], timeout: float = 30.0) -> dict[str, Event]:
        """Wait until every task has a terminal event; return the first of each."""
        wanted = set(task_ids)
        deadline = time.monotonic() + timeout
        while True:
            await self.poll()
            done = self.terminal()
            if wanted <= done.keys():
                return {t: done[t][0] for t in wanted}
            if time.monotonic() > deadline:
                missing = sorted(wanted - done.keys())
                raise AssertionError(f"{len(missing)} task(s) without terminal event: {missing[:5]}")
            await asyncio.sleep(0.05)


async def wait_until(
    check: Callable[[], Any], timeout: float = 30.0, what: Any = "condition", interval: float = 0.1
) -> Any:
    """Poll ``check()`` (a function, or a coroutine function) until it returns something true,
    and return that; fail naming ``what`` (text, or a function giving it: e.g. the logs as
    they are when the wait gives up)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what}: not within {timeout}s")
        await asyncio.sleep(interval)


async def submit_many(
    js: JetStreamContext,
    ids: list[str],
    payload: dict[str, Any] | None = None,
    route: str = "echo.run.0",
) -> None:
    """Submit one task per id at once (its payload: ``payload``, else ``{"result": id}``)."""
    futures = []
    for tid in ids:
        body = {"task_id": tid, "route": route, "payload": payload or {"result": tid}}
        futures.append(await js.publish_async(EXECUTE_SUBJECT, encoder.encode(body), headers={MSG_ID: tid}))
    await asyncio.gather(*futures)


async def run_task(js: JetStreamContext, route: str, payload: dict[str, Any]) -> Event:
    """Submit one task and return its terminal event."""
    task_id = await submit(js, route, payload)
    return (await EventReader(js).wait_terminal([task_id], timeout=25))[task_id]


@contextlib.asynccontextmanager
async def projecting(nc: NATS, config: Config, data_dir: Path, **kwargs: Any) -> AsyncIterator[Projector]:
    """A projector in this process, folding into ``data_dir``."""
    projector = Projector(nc, config, data_dir=data_dir, **kwargs)
    await projector.start()
    try:
        yield projector
    finally:
        await projector.stop()


@contextlib.asynccontextmanager
async def facade(
    nc: NATS,
    config: Config,
    data_dir: Path,
    *,
    token: str | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    timeout: float = 5.0,
    **state: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP facade in this process, called through ASGI (no socket), over a live policy
    view; with ``token`` it is required and every request carries it. ``state``: more
    ``AppState`` fields (``projector``, ``max_body_bytes``)."""
    policies = PolicyStore(nc.jetstream())
    await policies.start()
    try:
        app_state = AppState(nc=nc, config=config, policies=policies, data_dir=data_dir, api_token=token, **state)
        app = create_app(app_state, extra_routes=list(extra_routes))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://cogo",
            headers=headers,
            timeout=timeout,
        ) as client:
            yield client
    finally:
        await policies.stop()
