"""Declaring routes on the bus: ``declare(js, config, routes)``.

Order matters, because the dispatcher treats a policy record as "this route exists": the
subjects join ``TASKS`` first, then the consumer is made, and only then is the record
written. A task accepted for a route can therefore always be stored on its subject.
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.js.client import JetStreamContext

from cogo.config import Config
from cogo.errors import RouteConflict
from cogo.streams.policies import declare_policies
from cogo.streams.routes import RouteDecl, check_consumer
from cogo.streams.topology import TASKS, ensure_consumer, ensure_topology, stream_of


def check_unique(decls: Sequence[RouteDecl]) -> None:
    """Refuse one route declared by two apps or agents (naming both)."""
    seen: dict[str, RouteDecl] = {}
    for decl in decls:
        other = seen.get(decl.route)
        if other is not None and (other.app, other.agent) != (decl.app, decl.agent):
            raise RouteConflict(
                f"route {decl.route!r} is declared by app {other.app!r} (agent {other.agent!r}) "
                f"and by app {decl.app!r} (agent {decl.agent!r})"
            )
        seen[decl.route] = decl


async def declare(js: JetStreamContext, config: Config, decls: Sequence[RouteDecl]) -> list[str]:
    """Make every route of ``decls`` exist: subjects, consumer, policy record (task routes).

    Idempotent and never destructive; returns warnings (a runtime policy override masking a
    configured value). RouteConflict if a route belongs to another app.
    """
    check_unique(decls)
    routes = list(dict.fromkeys(d.route for d in decls))
    if await _has_tasks(js):
        for route in routes:
            await check_consumer(js, stream_of(route), route)
    await ensure_topology(js, config, routes)
    return await declare_policies(js, config, [(d.route, d.app, d.agent, d.policy) for d in decls if d.task])


async def declare_version(js: JetStreamContext, config: Config, route: str, version: str) -> str:
    """The consumer of ``<route>.<version>`` (a canary's subject, inside ``<route>.*``),
    created if missing (an existing one is left as it is: under ``--auth`` a worker may read
    its consumer but not change it)."""
    from cogo.streams.routes import check_version, versioned_route

    subject = versioned_route(route, check_version(version))
    if await check_consumer(js, TASKS, subject) is None:
        await ensure_consumer(js, subject, config)
    return subject


async def _has_tasks(js: JetStreamContext) -> bool:
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(TASKS)
    except NotFoundError:
        return False
    return True
