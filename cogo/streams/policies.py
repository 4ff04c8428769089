"""Route policies in the JetStream KV bucket ``policies``: the registry of declared routes.

One key per declared task route (``echo.run.0``); the value is a ``PolicyRecord``: who
declared the route and its policy, built from layers, lowest first (docs/design.md §10):

    [policy.default]  <  the agent's ``policy=``  <  cogo.toml's route table  <  ``cogo policy set``

The first three make the record's ``seed``, recomputed by whoever declares the route (so an
edited cogo.toml takes effect at the next start); ``cogo policy set`` changes are kept apart as
``overrides`` and laid over every new seed, until ``cogo policy reset`` drops them. ``policy``
is the result, what dispatchers enforce; every dispatcher watches the bucket, so a change is
live everywhere without a restart and is recorded as a ``policy_changed`` event.

A route without a record was never declared: the dispatcher fails its tasks with
``route.unknown`` and ``cogo policy set`` refuses it.

``resolve_assignment`` lays a task's ``__assignment`` over its route's policy: absent keys
come from the policy, anything above a ceiling is refused (the dispatcher and the workflow
planner both use it).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cogo.config import Backoff, Config, RoutePolicy, check_policy, deep_merge
from cogo.errors import (
    AttemptsAboveCeiling,
    CogoError,
    ConfigError,
    CostAboveCeiling,
    ModelNotAllowed,
    RouteConflict,
    TimeoutAboveCeiling,
    TokensAboveCeiling,
    TtlAboveCeiling,
    UnknownRoute,
)
from cogo.streams.catalogue import POLICY_CHANGED, ROUTE_FORGOTTEN
from cogo.streams.envelope import DEFAULT_PRIORITY, Assignment, ResolvedAssignment
from cogo.streams.events import EventLog, iso, make_event
from cogo.streams.kvview import KvView
from cogo.streams.routes import check_route
from cogo.streams.topology import POLICY_BUCKET

log = logging.getLogger(__name__)
_CAS_ATTEMPTS = 10


class PolicyRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """A declared route's entry in ``policies``."""

    policy: RoutePolicy  # what dispatchers enforce: ``seed`` with ``overrides`` laid over it
    seed: RoutePolicy  # [policy.default] < the agent's policy= < cogo.toml, as last declared
    overrides: dict[str, Any] = msgspec.field(default_factory=dict)  # `cogo policy set`
    app: str | None = None
    agent: str | None = None
    declared_at: str | None = None


_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(PolicyRecord)
_policy_decoder = msgspec.json.Decoder(RoutePolicy)


def decode_record(data: bytes) -> PolicyRecord:
    """A stored record; a bare ``RoutePolicy`` (what earlier releases stored) is adopted as one."""
    try:
        return _record_decoder.decode(data)
    except msgspec.ValidationError:
        policy = _policy_decoder.decode(data)
        return PolicyRecord(policy=policy, seed=policy)


def effective(seed: RoutePolicy, overrides: dict[str, Any], route: str) -> RoutePolicy:
    """``overrides`` laid over ``seed``, checked; ConfigError naming the field otherwise."""
    try:
        policy = msgspec.convert(deep_merge(msgspec.to_builtins(seed), overrides), RoutePolicy)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid policy for {route!r}: {exc}", detail=str(exc)) from exc
    check_policy(policy, route)
    return policy


class PolicyStore:
    """Live view of every declared route's policy, kept current by a KV watch."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._view: KvView[PolicyRecord] = KvView(
            lambda: js.key_value(POLICY_BUCKET), decode_record, name="policy-watch"
        )

    async def start(self) -> None:
        """Load every policy and keep watching for changes."""
        await self._view.start()

    async def stop(self) -> None:
        await self._view.stop()

    def routes(self) -> list[str]:
        return sorted(self._view.items)

    def record(self, route: str) -> PolicyRecord:
        """The record of ``route``; UnknownRoute if nobody declared it."""
        record = self._view.items.get(route)
        if record is None:
            raise UnknownRoute(
                f"unknown route {route!r}: no app declared it (declare it with "
                "@app.agent(...) and start the app with `cogo run` or `cogo up --app`)"
            )
        return record

    def get(self, route: str) -> RoutePolicy:
        """The current policy of ``route``; UnknownRoute if nobody declared it."""
        return self.record(route).policy

    async def lookup(self, route: str) -> RoutePolicy:
        """``get``, but on a miss ask the bucket itself: a route declared a moment ago may
        not have reached the watch yet."""
        record = self._view.items.get(route)
        if record is None:
            check_route(route, builtin=True)
            kv = await self._js.key_value(POLICY_BUCKET)
            try:
                entry = await kv.get(route)
            except KeyNotFoundError:
                return self.get(route)  # raises UnknownRoute
            record = decode_record(entry.value or b"")
        return record.policy


async def declare_policies(
    js: JetStreamContext, config: Config, routes: Sequence[tuple[str, str, str, dict[str, Any]]]
) -> list[str]:
    """Create or refresh the records of ``(route, app, agent, declared policy)``; return
    warnings for runtime overrides that now mask a different configured value."""
    kv = await js.key_value(POLICY_BUCKET)
    warnings: list[str] = []
    for route, app, agent, declared in routes:
        seed = config.route_policy(route, declared)
        for _ in range(_CAS_ATTEMPTS):
            record, revision = await _read(kv, route)
            if record is not None and record.app not in (None, app):
                raise RouteConflict(
                    f"route {route!r} is declared by app {record.app!r} (agent {record.agent!r}); "
                    f"app {app!r} (agent {agent!r}) declares it too. A route belongs to one app: "
                    f"rename one, or `cogo routes forget {route}` if {record.app!r} is gone"
                )
            overrides = record.overrides if record is not None else {}
            try:
                policy = effective(seed, overrides, route)
            except ConfigError as exc:  # the overrides no longer fit the new seed: keep them
                assert record is not None
                warnings.append(f"{exc}; keeping the stored policy of {route!r} unchanged")
                break
            new = PolicyRecord(
                policy=policy,
                seed=seed,
                overrides=overrides,
                app=app,
                agent=agent,
                declared_at=record.declared_at if record is not None and record.declared_at else iso(),
            )
            if record is not None and record == new:
                break
            try:
                if revision is None:
                    await kv.create(route, _encoder.encode(new))
                else:
                    await kv.update(route, _encoder.encode(new), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another declarer or a `policy set` got there first: read again
            break
        warnings.extend(_masked(route, seed, overrides))
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _masked(route: str, seed: RoutePolicy, overrides: dict[str, Any]) -> list[str]:
    """One line per runtime override that differs from the configured value under it."""
    configured = msgspec.to_builtins(seed)
    out = []
    for path, value in _leaves(overrides):
        below: Any = configured
        for key in path:
            below = below.get(key) if isinstance(below, dict) else None
        if below != value:
            name = ".".join(path)
            out.append(
                f"route {route!r}: `cogo policy set` keeps {name}={_json(value)} over the "
                f"configured {_json(below)} (`cogo policy reset {route}` returns to the "
                "configuration)"
            )
    return out


def _json(value: Any) -> str:
    """A value as the JSON `cogo policy set` takes (``null``, not Python's ``None``)."""
    return msgspec.json.encode(value).decode()


def _leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.extend(_leaves(value, (*prefix, key)))
        else:
            out.append(((*prefix, key), value))
    return out


async def _read(kv: KeyValue, route: str) -> tuple[PolicyRecord | None, int | None]:
    check_route(route, builtin=True)  # InvalidRoute: a wildcard is no KV key (a traceback)
    try:
        entry = await kv.get(route)
    except KeyNotFoundError:
        return None, None
    if not entry.value:  # deleted: the route was forgotten
        return None, entry.revision
    return decode_record(entry.value), entry.revision


async def read_record(js: JetStreamContext, route: str) -> PolicyRecord:
    """The record of ``route``; UnknownRoute if nobody declared it."""
    record, _ = await _read(await js.key_value(POLICY_BUCKET), route)
    if record is None:
        raise UnknownRoute(f"unknown route {route!r}: no app declared it")
    return record


async def read_policy(js: JetStreamContext, route: str) -> RoutePolicy:
    return (await read_record(js, route)).policy


async def set_policy(js: JetStreamContext, route: str, changes: dict[str, Any], *, actor: str = "cli") -> RoutePolicy:
    """Lay ``changes`` over the route's policy (kept as runtime overrides), store it and
    record a ``policy_changed`` event. Refused if the result is invalid (a default above a
    ceiling, a model the allow-list does not have) or the route was never declared."""
    return await _change(js, route, lambda overrides: deep_merge(overrides, changes), actor, {"changes": changes})


async def reset_policy(js: JetStreamContext, route: str, *, actor: str = "cli") -> RoutePolicy:
    """Drop every runtime override of ``route``: back to the configured policy."""
    return await _change(js, route, lambda _: {}, actor, {"reset": True})


async def forget_route(js: JetStreamContext, route: str, *, actor: str = "cli") -> None:
    """Remove a route from the registry (its stream subject and consumer stay: no data is
    dropped); tasks for it fail with ``route.unknown`` until something declares it again."""
    kv = await js.key_value(POLICY_BUCKET)
    await read_record(js, route)  # UnknownRoute if there is nothing to forget
    await kv.delete(route)
    await EventLog(js).append(make_event(ROUTE_FORGOTTEN, route=route, actor=actor, data={"route": route}))


async def _change(js: JetStreamContext, route: str, update: Any, actor: str, data: dict[str, Any]) -> RoutePolicy:
    kv = await js.key_value(POLICY_BUCKET)
    for _ in range(_CAS_ATTEMPTS):
        record, revision = await _read(kv, route)
        if record is None:
            raise UnknownRoute(f"unknown route {route!r}: no app declared it, so it has no policy to change")
        overrides = update(record.overrides)
        policy = effective(record.seed, overrides, route)
        new = msgspec.structs.replace(record, policy=policy, overrides=overrides)
        try:
            await kv.update(route, _encoder.encode(new), last=revision)
        except KeyWrongLastSequenceError:
            continue
        await EventLog(js).append(
            make_event(
                POLICY_CHANGED,
                route=route,
                actor=actor,
                data={**data, "policy": msgspec.to_builtins(policy), "overrides": overrides},
            )
        )
        return policy
    raise ConfigError(f"policy of {route!r} kept changing under us; try again")


def resolve_assignment(requested: Assignment, policy: RoutePolicy) -> ResolvedAssignment:
    """Fill absent keys from the route policy and reject anything above its ceilings."""
    c = policy.ceilings
    bypass = set(requested.bypass)
    b = requested.backoff
    resolved = ResolvedAssignment(
        model=requested.model or policy.model,
        max_tokens=requested.max_tokens or policy.max_tokens,
        max_cost_usd=(requested.max_cost_usd if requested.max_cost_usd is not None else policy.max_cost_usd),
        timeout_ms=requested.timeout_ms or policy.timeout_ms,
        ttl_ms=requested.ttl_ms or policy.ttl_ms,
        max_attempts=requested.max_attempts or policy.max_attempts,
        backoff=Backoff(
            initial_ms=b.initial_ms if b and b.initial_ms is not None else policy.backoff.initial_ms,
            multiplier=b.multiplier if b and b.multiplier is not None else policy.backoff.multiplier,
            max_ms=b.max_ms if b and b.max_ms is not None else policy.backoff.max_ms,
        ),
        key=requested.key,
        priority=requested.priority if requested.priority is not None else DEFAULT_PRIORITY,
    )
    check_ceilings(resolved, policy, bypass)
    if c.allowed_models:  # what ctx.llm may call: the ceiling, and a bypassed model
        allowed = dict.fromkeys([*c.allowed_models, resolved.model])
        resolved = msgspec.structs.replace(resolved, allowed_models=tuple(allowed))
    return resolved


def check_ceilings(resolved: ResolvedAssignment, policy: RoutePolicy, bypass: Collection[str] = ()) -> None:
    """Raise the ``PolicyViolation`` of the first ceiling ``resolved`` is above (the checks
    named in ``bypass`` excepted): at submission, and again on every retry."""
    c = policy.ceilings
    if c.allowed_models and resolved.model not in c.allowed_models and "model" not in bypass:
        raise ModelNotAllowed(
            f"model {resolved.model!r} is not allowed on this route (allowed: {', '.join(c.allowed_models)})"
        )
    checks: list[tuple[str, float, float, type[CogoError]]] = [
        ("max_tokens", resolved.max_tokens, c.max_tokens, TokensAboveCeiling),
        ("max_cost_usd", resolved.max_cost_usd, c.max_cost_usd, CostAboveCeiling),
        ("max_attempts", resolved.max_attempts, c.max_attempts, AttemptsAboveCeiling),
        ("timeout_ms", resolved.timeout_ms, c.max_timeout_ms, TimeoutAboveCeiling),
        ("ttl_ms", resolved.ttl_ms, c.max_ttl_ms, TtlAboveCeiling),
    ]
    for field, value, ceiling, error in checks:
        if value > ceiling and field not in bypass:
            raise error(f"{field}={value} is above the route ceiling {ceiling}")
