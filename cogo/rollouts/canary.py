"""Canary routing: which version of a route's workers gets each task, and bypass audits.

The dispatcher calls ``CanaryRouter.route`` once per submitted task. For a route under
rollout (a ``RouteSplit`` in the ``rollouts`` KV bucket), a task goes to the candidate when
``sha256(task_id) % 100 < percent``: deterministic, so a task and all its retries land on
the same version, and a replayed submission makes the same choice. Candidate orders carry
``cohort="canary"`` and ``version=<candidate>`` and are published to ``<route>.<candidate>``;
the rest are ``cohort="baseline"`` on the baseline's subject. A payload may pin its cohort
with ``"__cohort": "canary" | "baseline"`` (the rollout controller's Dev E2E and smoke tasks).

Versioned workers (``cogo run echo --version v2``) consume ``<route>.<version>`` through
their own durable (``echo-run-0-v2``), created at start: the filters of a route and of its
versions never overlap, as a work-queue stream requires.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from cogo.config import Config, RoutePolicy
from cogo.errors import BypassDenied
from cogo.rollouts.split import RouteSplit, SplitWatch
from cogo.streams.catalogue import POLICY_BYPASSED
from cogo.streams.envelope import ASSIGNMENT_KEY, COHORT_KEY, WorkOrder, decode_assignment
from cogo.streams.events import EventLog, make_event
from cogo.streams.registry import declare_version
from cogo.streams.routes import check_version, versioned_route
from cogo.streams.seal import Sealer, guard_id

BASELINE, CANARY = "baseline", "canary"


def share_bucket(task_id: str) -> int:
    """The task's bucket in 0..99; buckets below the rollout percent go to the candidate."""
    digest = hashlib.sha256(task_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def choose(order: WorkOrder, split: RouteSplit | None) -> WorkOrder:
    """The order with the version and cohort the split assigns it."""
    if split is None:
        return msgspec.structs.replace(order, cohort=BASELINE)
    pin = order.payload.get(COHORT_KEY)
    canary = split.candidate is not None and (
        pin == CANARY or (pin != BASELINE and split.percent > 0 and share_bucket(order.task_id) < split.percent)
    )
    if canary:
        return msgspec.structs.replace(order, version=split.candidate, cohort=CANARY)
    return msgspec.structs.replace(order, version=split.baseline, cohort=BASELINE)


def subject_of(order: WorkOrder) -> str:
    """Where an order is published: its route, or ``<route>.<version>`` for a version."""
    return versioned_route(order.route, order.version)


def bypassed_checks(order: WorkOrder, policy: RoutePolicy) -> list[str]:
    """The ceiling checks named in ``__assignment.bypass`` that this order really skipped."""
    raw = order.payload.get(ASSIGNMENT_KEY)
    if not isinstance(raw, dict) or not raw.get("bypass"):
        return []
    requested = set(decode_assignment(order.payload).bypass)
    a, c = order.assignment, policy.ceilings
    over = {
        "model": bool(c.allowed_models) and a.model not in c.allowed_models,
        "max_tokens": a.max_tokens > c.max_tokens,
        "max_cost_usd": a.max_cost_usd > c.max_cost_usd,
        "max_attempts": a.max_attempts > c.max_attempts,
        "timeout_ms": a.timeout_ms > c.max_timeout_ms,
        "ttl_ms": a.ttl_ms > c.max_ttl_ms,
    }
    return sorted(name for name in requested if over.get(name))


def bypass_grant(order: WorkOrder, principal: str | None, config: Config) -> str | None:
    """What grants ``order`` its bypass: ``"canary"`` (a task of the route's canary cohort,
    what the rollout seed asks bypass for), ``"principal"`` (a submitter named in
    ``[policy] bypass_principals``), or None: refused."""
    if principal is not None and principal in config.policy.bypass_principals:
        return "principal"
    if config.policy.bypass_for_canary and order.cohort == CANARY:
        return "canary"
    return None


class CanaryRouter:
    """The dispatcher's view of rollouts: splits tasks, grants and audits policy bypasses."""

    def __init__(self, js: Any, config: Config, sealer: Sealer | None = None) -> None:
        self.js = js
        self.config = config
        self.sealer = sealer
        self.splits = SplitWatch(js, config.bus.replicas)
        self.events = EventLog(js)

    async def start(self) -> None:
        await self.splits.start()

    async def stop(self) -> None:
        await self.splits.stop()

    async def route(
        self, order: WorkOrder, policy: RoutePolicy, *, actor: str, principal: str | None = None
    ) -> WorkOrder:
        """Assign the order's version and cohort; a bypass it uses needs a grant (else
        ``BypassDenied``) and is recorded as ``policy_bypassed``."""
        order = choose(order, self.splits.splits.get(order.route))
        bypassed = bypassed_checks(order, policy)
        if bypassed:
            granted_by = bypass_grant(order, principal, self.config)
            if granted_by is None:
                who = f"submitter {principal!r}" if principal else "an anonymous submitter"
                raise BypassDenied(
                    f"__assignment.bypass of {', '.join(bypassed)} needs a grant: the route's "
                    f"canary cohort, or a submitter named in [policy] bypass_principals "
                    f"(this is {who})",
                    detail={"bypass": bypassed, "principal": principal},
                )
            order = msgspec.structs.replace(order, bypass=tuple(bypassed))
            event_id = f"{order.task_id}:bypass"
            token = self.sealer.token(order.task_id) if self.sealer else None
            await self.events.append(
                make_event(
                    POLICY_BYPASSED,
                    event_id=event_id,
                    task_id=order.task_id,
                    correlation_id=order.correlation_id,
                    route=order.route,
                    actor=actor,
                    version=order.version,
                    cohort=order.cohort,
                    data={
                        "bypassed": bypassed,
                        "assignment": msgspec.to_builtins(order.assignment),
                        "ceilings": msgspec.to_builtins(policy.ceilings),
                        "granted_by": granted_by,
                        "principal": principal if granted_by == "principal" else None,
                    },
                ),
                msg_id=guard_id(token, event_id),
            )
        return order


async def versioned_routes(worker: Any) -> list[str]:
    """A versioned worker's subjects (``<route>.<version>``), their consumers made if missing."""
    if not worker.version:
        return list(worker.routes)
    version = check_version(worker.version)
    return [
        route if route.endswith(f".{version}") else await declare_version(worker.js, worker.config, route, version)
        for route in worker.routes
    ]
