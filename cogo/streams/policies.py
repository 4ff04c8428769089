"""Route policies in the JetStream KV bucket ``policies``, watched live by dispatchers.

One key per route (``echo.run.0``); the value is a ``RoutePolicy`` as JSON. ``cogo up``
seeds missing keys from the configuration; ``cogo policy set`` changes them at runtime and
appends a ``policy_changed`` event, and every dispatcher picks the change up from its watch.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from cogo.config import Config, RoutePolicy, deep_merge
from cogo.errors import ConfigError, UnknownRoute
from cogo.streams.events import EventLog, make_event
from cogo.streams.kvview import KvView
from cogo.streams.topology import POLICY_BUCKET

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RoutePolicy)


class PolicyStore:
    """Live view of every route's policy, kept current by a KV watch."""

    def __init__(self, js: JetStreamContext) -> None:
        self._view: KvView[RoutePolicy] = KvView(
            lambda: js.key_value(POLICY_BUCKET), _decoder, name="policy-watch"
        )

    async def start(self) -> None:
        """Load every policy and keep watching for changes."""
        await self._view.start()

    async def stop(self) -> None:
        await self._view.stop()

    def routes(self) -> list[str]:
        return sorted(self._view.items)

    def get(self, route: str) -> RoutePolicy:
        """The current policy of ``route``; UnknownRoute if no actor is configured for it."""
        policy = self._view.items.get(route)
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
        policy = msgspec.convert(deep_merge(current, changes), RoutePolicy)
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
