"""Route policies in the JetStream KV bucket ``policies``, watched live by dispatchers.

One key per route (``echo.run.0``); the value is a ``RoutePolicy`` as JSON. ``cogo up``
seeds missing keys from the configuration; ``cogo policy set`` changes them at runtime and
appends a ``policy_changed`` event, and every dispatcher picks the change up from its watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cogo.config import Config, RoutePolicy, _merge
from cogo.errors import ConfigError, UnknownRoute
from cogo.streams.events import EventLog, make_event
from cogo.streams.topology import POLICY_BUCKET

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RoutePolicy)


class PolicyStore:
    """Live view of every route's policy, kept current by a KV watch."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._kv: KeyValue | None = None
        self._policies: dict[str, RoutePolicy] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def start(self) -> None:
        """Load every policy and keep watching for changes."""
        self._kv = await self._js.key_value(POLICY_BUCKET)
        watcher = await self._kv.watchall()
        self._watch_task = asyncio.create_task(self._watch(watcher), name="policy-watch")
        await asyncio.wait_for(self._loaded.wait(), 10)

    async def _watch(self, watcher: Any) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # end of the initial values
                    self._loaded.set()
                    continue
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._policies.pop(entry.key, None)
                    continue
                try:
                    self._policies[entry.key] = _decoder.decode(entry.value)
                except msgspec.DecodeError as exc:  # keep the last good policy
                    log.error("ignoring invalid policy for %s: %s", entry.key, exc)
        finally:
            self._loaded.set()
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task

    def routes(self) -> list[str]:
        return sorted(self._policies)

    def get(self, route: str) -> RoutePolicy:
        """The current policy of ``route``; UnknownRoute if no actor is configured for it."""
        policy = self._policies.get(route)
        if policy is None:
            raise UnknownRoute(f"unknown route {route!r}: no actor consumes it")
        return policy


async def seed_policies(js: JetStreamContext, config: Config) -> None:
    """Write each configured route's policy into KV unless a runtime value already exists."""
    kv = await js.key_value(POLICY_BUCKET)
    for route in config.routes:
        with contextlib.suppress(KeyWrongLastSequenceError):
            try:
                await kv.get(route)
            except KeyNotFoundError:
                await kv.create(route, _encoder.encode(config.route_policy(route)))


async def read_policy(js: JetStreamContext, route: str) -> RoutePolicy:
    kv = await js.key_value(POLICY_BUCKET)
    try:
        entry = await kv.get(route)
    except KeyNotFoundError as exc:
        raise UnknownRoute(f"unknown route {route!r}") from exc
    return _decoder.decode(entry.value or b"")


async def set_policy(
    js: JetStreamContext, route: str, changes: dict[str, Any], *, actor: str = "cli"
) -> RoutePolicy:
    """Merge ``changes`` into the route's policy, store it and record a ``policy_changed`` event."""
    kv = await js.key_value(POLICY_BUCKET)
    try:
        entry = await kv.get(route)
        current = msgspec.to_builtins(_decoder.decode(entry.value or b""))
        revision: int | None = entry.revision
    except KeyNotFoundError:
        current, revision = msgspec.to_builtins(RoutePolicy()), None
    try:
        policy = msgspec.convert(_merge(current, changes), RoutePolicy)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid policy change for {route!r}: {exc}") from exc
    value = _encoder.encode(policy)
    if revision is None:
        await kv.create(route, value)
    else:
        await kv.update(route, value, last=revision)
    await EventLog(js).append(
        make_event(
            "policy_changed",
            route=route,
            actor=actor,
            data={"changes": changes, "policy": msgspec.to_builtins(policy)},
        )
    )
    return policy
