"""Declared routes: what makes a route exist on the bus.

A route (``<service>.<role>.<shard>``) exists once something *declares* it: ``cogo up`` for
every app it loads, and every ``cogo run`` process for the agents it runs (so a system that
is already up picks up a newly started app). Declaring is idempotent and never destructive:

1. its subject (and ``<route>.*``, the versions a rollout sends to) joins ``TASKS``: the
   stream's subjects only ever grow, and a subject an existing wildcard already covers is
   not added again (JetStream refuses overlapping subjects in one stream);
2. its durable pull consumer exists (created, or updated in place);
3. for a task route, its policy record exists in the ``policies`` KV bucket
   (``cogo.streams.policies``): that record is the registry the dispatcher and the HTTP
   facade consult, so a task for a route nobody declared fails at once (``route.unknown``).

Stream updates carry the whole configuration, so two processes declaring at once could
each write a subject list without the other's: every update is read back and retried until
the subjects it needs are there.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cogo.errors import ConfigError, InvalidRoute, RouteConflict

ROUTE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.[0-9]{1,6}$"
_ROUTE = re.compile(ROUTE_PATTERN)
# services whose subjects belong to Cogo itself: the dispatcher's and orchestrator's routes,
# the other streams (events, dead letters, task output, held tasks) and control subjects
RESERVED_SERVICES = frozenset({"orchestrator", "events", "dlq", "outputs", "flow", "cogo"})
_SUBJECT_UPDATE_ATTEMPTS = 8

VERSION_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
_VERSION = re.compile(VERSION_PATTERN)


def check_version(version: str) -> str:
    """A version usable as a subject token and in a consumer name; ConfigError otherwise."""
    if not _VERSION.match(version):
        raise ConfigError(f"invalid version {version!r}: use 1-64 letters, digits, '-' or '_'")
    return version


def versioned_route(route: str, version: str | None) -> str:
    """The subject the workers of ``version`` consume: ``<route>.<version>``, or ``<route>``."""
    return f"{route}.{version}" if version else route


@dataclass(frozen=True)
class RouteDecl:
    """One route as an app declares it."""

    route: str
    app: str
    agent: str
    # a task route takes tasks through the dispatcher (it has a policy); the dispatcher's
    # and orchestrator's own input routes do not
    task: bool = True
    policy: dict[str, Any] = field(default_factory=dict)


def check_route(route: str, *, builtin: bool = False) -> str:
    """``route`` if it is a valid ``<service>.<role>.<shard>`` a user may declare."""
    if not isinstance(route, str) or not _ROUTE.match(route):
        raise InvalidRoute(
            f"invalid route {route!r}: routes are <service>.<role>.<shard> "
            "(letters, digits, '-' or '_'; the shard a number), e.g. 'lexicon.count.0'"
        )
    service = route.split(".", 1)[0]
    if service in RESERVED_SERVICES and not builtin:
        raise InvalidRoute(f"invalid route {route!r}: the service {service!r} is reserved by Cogo")
    return route


def durable_name(route: str) -> str:
    """The durable consumer of a route (consumer names cannot contain dots)."""
    return route.replace(".", "-")


def route_subjects(route: str) -> list[str]:
    """The ``TASKS`` subjects of a route: itself and its versions (``<route>.<version>``)."""
    return [route, f"{route}.*"]


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether every subject matching ``subject`` (which may hold wildcards) matches ``pattern``."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i  # '>' needs at least one more token
        if i >= len(s):
            return False
        if token == "*":
            if s[i] == ">":
                return False
            continue
        if token != s[i]:
            return False
    return len(p) == len(s)


def missing_subjects(existing: Sequence[str], wanted: Iterable[str]) -> list[str]:
    """The subjects of ``wanted`` that no subject of ``existing`` covers, in order."""
    out: list[str] = []
    for subject in wanted:
        if subject in out:
            continue
        if not any(subject_covers(have, subject) for have in existing):
            out.append(subject)
    return out


async def ensure_subjects(js: JetStreamContext, stream: str, wanted: Iterable[str]) -> list[str]:
    """Add the ``wanted`` subjects ``stream`` lacks; return those added. Never removes one."""
    wanted = list(wanted)
    added: list[str] = []
    for _ in range(_SUBJECT_UPDATE_ATTEMPTS):
        info = await js.stream_info(stream)
        have = list(info.config.subjects or [])
        missing = missing_subjects(have, wanted)
        if not missing:
            return added
        # a subject we add may itself cover ones already there (a user's `x.>`): keep both
        # only if they do not overlap, as JetStream demands
        keep = [s for s in have if not any(subject_covers(m, s) for m in missing)]
        config = info.config
        config.subjects = keep + missing
        await js.update_stream(config)
        added.extend(m for m in missing if m not in added)
        await asyncio.sleep(0)  # read back: a concurrent declarer may have overwritten ours
    raise ConfigError(f"could not add {wanted} to stream {stream}: concurrent updates kept racing")


async def check_consumer(js: JetStreamContext, stream: str, route: str) -> api.ConsumerInfo | None:
    """The route's consumer, or None; RouteConflict if its durable serves another subject."""
    try:
        info = await js.consumer_info(stream, durable_name(route))
    except NotFoundError:
        return None
    subject = info.config.filter_subject
    if subject and subject != route:
        raise RouteConflict(
            f"route {route!r}: its consumer {durable_name(route)!r} already serves {subject!r} "
            "(routes that differ only in '.' versus '-' share a consumer name; rename one)"
        )
    return info  # type: ignore[no-any-return]  # nats-py: consumer_info is unannotated
