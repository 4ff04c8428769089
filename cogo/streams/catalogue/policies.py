"""Route policies and rollouts: overrides changed, routes forgotten, bypasses audited, and
each step of a rollout."""

from __future__ import annotations

from typing import Any

from cogo.streams.catalogue.base import EventData
from cogo.streams.envelope import ResolvedAssignment

# route policies and rollouts
POLICY_CHANGED = "policy_changed"
ROUTE_FORGOTTEN = "route_forgotten"
POLICY_BYPASSED = "policy_bypassed"
ROLLOUT_STARTED = "rollout_started"
ROLLOUT_STAGE_CHANGED = "rollout_stage_changed"
ROLLOUT_GATE_EVALUATED = "rollout_gate_evaluated"
ROLLOUT_PROMOTED = "rollout_promoted"
ROLLOUT_ROLLED_BACK = "rollout_rolled_back"
ROLLOUT_PAUSED = "rollout_paused"


class PolicyChanged(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A route's runtime overrides changed (``changes`` laid over, or ``reset``)."""

    policy: dict[str, Any]
    overrides: dict[str, Any]
    changes: dict[str, Any] | None = None
    reset: bool | None = None


class RouteForgotten(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A route left the registry."""

    route: str


class PolicyBypassed(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A task ran with some policy checks bypassed: the audit of an honoured grant."""

    bypassed: list[str]
    assignment: ResolvedAssignment
    ceilings: dict[str, Any]
    # what granted it: "canary" (the route's canary cohort) or "principal" (a submitter named
    # in [policy] bypass_principals, then ``principal`` names it)
    granted_by: str | None = None
    principal: str | None = None


class RolloutData(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """Every rollout event names its rollout."""

    rollout_id: str


class RolloutStarted(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    candidate: str
    baseline: str | None = None
    slo_p90_ms: float | None = None
    min_samples: int | None = None


class RolloutStageChanged(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    stage: str
    title: str
    percent: int


class RolloutGateEvaluated(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    """One gate's verdict at the end of a stage, with the figures it was decided on."""

    stage: str
    name: str
    passed: bool
    detail: str
    candidate: float | None = None
    baseline: float | None = None
    limit: float | None = None


class RolloutPromoted(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    manual: bool
    previous_baseline: str | None = None


class RolloutRolledBack(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    stage: str | None = None
    reason: str


class RolloutPaused(RolloutData, frozen=True, kw_only=True, omit_defaults=True):
    stage: str | None = None
    percent: int


TYPES: dict[str, type[EventData]] = {
    POLICY_CHANGED: PolicyChanged,
    ROUTE_FORGOTTEN: RouteForgotten,
    POLICY_BYPASSED: PolicyBypassed,
    ROLLOUT_STARTED: RolloutStarted,
    ROLLOUT_STAGE_CHANGED: RolloutStageChanged,
    ROLLOUT_GATE_EVALUATED: RolloutGateEvaluated,
    ROLLOUT_PROMOTED: RolloutPromoted,
    ROLLOUT_ROLLED_BACK: RolloutRolledBack,
    ROLLOUT_PAUSED: RolloutPaused,
}
