"""The rollout controller: a candidate version through Dev E2E, CI smoke, canary and promote.

``cogo up`` runs one in-process (component ``rollouts``); ``/api/rollouts`` drives it.

    dev_e2e   a few sample tasks pinned to the candidate (and as many to the baseline), or
              the route's sample workflow (e.g. codeBuildTest) with the candidate pinned
    smoke     a batch of smoke tasks, pinned the same way
    canary    ``canary_percent`` of the route's real traffic (by task-id hash)
    promote   100% of the traffic, until ``min_samples`` tasks confirm it

Each stage ends with gates computed in DuckDB over that stage's samples
(``cogo.rollouts.samples`` submits and reads them, ``cogo.rollouts.gates`` judges them). A failed gate rolls back at once: the split goes back to the
baseline at 0%. After the last stage the candidate becomes the route's baseline.
The split the dispatchers follow and every rollout's record live in the KV bucket
``rollouts`` (``cogo.rollouts.split``); every change is also an event:
``rollout_started``, ``rollout_stage_changed``, ``rollout_gate_evaluated``,
``rollout_promoted``, ``rollout_rolled_back``, ``rollout_paused``.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import logging
import re
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from cogo.aio import cancel_and_wait
from cogo.config import Config
from cogo.errors import RolloutConflict, RolloutNotFound
from cogo.rollouts import gates
from cogo.rollouts.canary import BASELINE, CANARY
from cogo.rollouts.samples import POLL_S, Samples
from cogo.rollouts.split import (
    PAUSED,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    Gate,
    Rollout,
    RolloutStore,
    RouteSplit,
    Stage,
)
from cogo.streams.catalogue import (
    ROLLOUT_GATE_EVALUATED,
    ROLLOUT_PAUSED,
    ROLLOUT_PROMOTED,
    ROLLOUT_ROLLED_BACK,
    ROLLOUT_STAGE_CHANGED,
    ROLLOUT_STARTED,
)
from cogo.streams.connection import actor_id
from cogo.streams.envelope import new_id
from cogo.streams.events import EventLog, iso, make_event
from cogo.streams.routes import check_version

log = logging.getLogger(__name__)

DEV_E2E, SMOKE, CANARY_STAGE, PROMOTE = "dev_e2e", "smoke", "canary", "promote"
STAGES = (DEV_E2E, SMOKE, CANARY_STAGE, PROMOTE)
STAGE_TITLES = {
    DEV_E2E: "Dev E2E",
    SMOKE: "CI smoke",
    CANARY_STAGE: "Canary",
    PROMOTE: "Promote 100%",
}
_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
EARLY_FAILURE_SAMPLES = 10  # canary/promote stop early once failures are this clear


class RolloutSpec(msgspec.Struct, frozen=True):
    """What ``POST /api/rollouts`` asks for."""

    route: str
    candidate: str
    slo_p90_ms: float | None = None
    min_samples: int = 20
    canary_percent: int = 10
    dev_e2e_tasks: int = 5
    smoke_tasks: int = 20
    stage_timeout_s: float = 300.0
    sample_payload: dict[str, Any] = msgspec.field(default_factory=dict)
    # {"workflowId": ..., "parameters": {...}}: Dev E2E runs this workflow instead of tasks
    dev_e2e_workflow: dict[str, Any] | None = None


def _naive(at: str) -> dt.datetime:
    return dt.datetime.fromisoformat(at.replace("Z", "+00:00")).replace(tzinfo=None)


class _Halted(Exception):
    """Raised inside a driver when its rollout stopped running under it."""


class RolloutController:
    """Runs rollouts: one driver task per running rollout, state in KV, facts as events."""

    kind = "rollouts"

    def __init__(self, nc: NATS, config: Config, projector: Any, *, data_dir: Any = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.config = config
        self.name = actor_id("rollout-controller")
        self.store = RolloutStore(self.js, config.bus.replicas)
        self.events = EventLog(self.js)
        self.samples = Samples(self.js, projector, data_dir)
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every rollout that was running when the last ``cogo up`` stopped."""
        await self.store.kv()
        for rollout in await self.store.all():
            if rollout.status == RUNNING:
                self._drive(rollout)

    async def stop(self) -> None:
        drivers = list(self._drivers.values())
        await cancel_and_wait(drivers)

    # -- reading -----------------------------------------------------------------------

    async def list(self) -> list[Rollout]:
        return await self.store.all()

    async def get(self, rollout_id: str) -> Rollout:
        # ids are hex; anything else cannot be a KV key, let alone a rollout
        rollout = await self.store.get(rollout_id) if _ID.match(rollout_id) else None
        if rollout is None:
            raise RolloutNotFound(f"no rollout {rollout_id!r}")
        return rollout

    # -- commands ----------------------------------------------------------------------

    async def begin(self, spec: RolloutSpec) -> Rollout:
        """Start a rollout of ``spec.candidate`` on ``spec.route``."""
        check_version(spec.candidate)
        for other in await self.store.all():
            if other.route == spec.route and other.status in (RUNNING, PAUSED):
                raise RolloutConflict(f"route {spec.route!r} already has rollout {other.id} ({other.status})")
        split = await self.store.split(spec.route)
        if split.baseline == spec.candidate:
            raise RolloutConflict(f"{spec.candidate!r} already is the baseline of {spec.route!r}")
        now = iso()
        rollout = Rollout(
            id=new_id()[:12],
            route=spec.route,
            candidate=spec.candidate,
            baseline=split.baseline,
            created_at=now,
            updated_at=now,
            slo_p90_ms=spec.slo_p90_ms,
            min_samples=spec.min_samples,
            canary_percent=spec.canary_percent,
            dev_e2e_tasks=spec.dev_e2e_tasks,
            smoke_tasks=spec.smoke_tasks,
            stage_timeout_s=spec.stage_timeout_s,
            sample_payload=spec.sample_payload,
            dev_e2e_workflow=spec.dev_e2e_workflow,
        )
        await self.store.put(rollout)
        await self._event(
            rollout,
            ROLLOUT_STARTED,
            data={
                "candidate": rollout.candidate,
                "baseline": rollout.baseline,
                "slo_p90_ms": rollout.slo_p90_ms,
                "min_samples": rollout.min_samples,
            },
        )
        self._drive(rollout)
        return rollout

    async def pause(self, rollout_id: str) -> Rollout:
        """Stop advancing; the traffic split stays where it is."""
        await self._halt(rollout_id)
        async with self._lock(rollout_id):
            rollout = await self._active(rollout_id)
            if rollout.status == PAUSED:
                return rollout
            rollout.status = PAUSED
            await self._save(rollout)
            await self._event(rollout, ROLLOUT_PAUSED, data={"stage": rollout.stage, "percent": rollout.percent})
            return rollout

    async def promote(self, rollout_id: str) -> Rollout:
        """Promote the candidate to 100% now, skipping the stages still to come."""
        await self._halt(rollout_id)
        async with self._lock(rollout_id):
            rollout = await self._active(rollout_id)
            self._close_stage(rollout, "aborted")
            await self._promoted(rollout, manual=True)
            return rollout

    async def rollback(self, rollout_id: str, reason: str | None = None) -> Rollout:
        """Send every task back to the baseline."""
        await self._halt(rollout_id)
        async with self._lock(rollout_id):
            rollout = await self._active(rollout_id)
            self._close_stage(rollout, "aborted")
            await self._rolled_back(rollout, reason or "rolled back by an operator")
            return rollout

    # -- internals ---------------------------------------------------------------------

    def _lock(self, rollout_id: str) -> asyncio.Lock:
        return self._locks.setdefault(rollout_id, asyncio.Lock())

    async def _active(self, rollout_id: str) -> Rollout:
        rollout = await self.get(rollout_id)
        if rollout.final:
            raise RolloutConflict(f"rollout {rollout_id} is already {rollout.status}")
        return rollout

    async def _halt(self, rollout_id: str) -> None:
        task = self._drivers.pop(rollout_id, None)
        await cancel_and_wait([task])

    def _drive(self, rollout: Rollout) -> None:
        task = asyncio.create_task(self._run(rollout.id), name=f"rollout-{rollout.id}")
        self._drivers[rollout.id] = task
        task.add_done_callback(lambda t: self._done(rollout.id, t))

    def _done(self, rollout_id: str, task: asyncio.Task[None]) -> None:
        if self._drivers.get(rollout_id) is task:
            del self._drivers[rollout_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("rollout %s driver failed", rollout_id, exc_info=task.exception())

    async def _run(self, rollout_id: str) -> None:
        try:
            await self._stages(rollout_id)
        except _Halted:
            pass
        except Exception as exc:  # a broken stage must not leave traffic on the candidate
            log.exception("rollout %s: stage failed", rollout_id)
            async with self._lock(rollout_id):
                rollout = await self.get(rollout_id)
                if rollout.status == RUNNING:
                    self._close_stage(rollout, "failed")
                    await self._rolled_back(rollout, f"the stage could not run: {exc}")

    async def _stages(self, rollout_id: str) -> None:
        rollout = await self.get(rollout_id)
        # a resumed rollout reruns the stage it was in: its samples restart with it
        start = STAGES.index(rollout.stage) if rollout.stage in STAGES else 0
        for name in STAGES[start:]:
            async with self._lock(rollout_id):
                rollout = await self.get(rollout_id)
                if rollout.status != RUNNING:
                    return
                stage = await self._enter(rollout, name)
            verdict = await self._run_stage(rollout, stage)
            async with self._lock(rollout_id):
                fresh = await self.get(rollout_id)
                if fresh.status != RUNNING:
                    return
                fresh.stages[-1] = stage
                stage.status = "passed" if all(g.passed for g in verdict) else "failed"
                stage.ended_at = iso()
                await self._save(fresh)
                for gate in verdict:
                    await self._event(
                        fresh,
                        ROLLOUT_GATE_EVALUATED,
                        event_id=(f"rollout:{fresh.id}:{name}:{len(fresh.stages)}:{gate.name}"),
                        data={"stage": name, **msgspec.to_builtins(gate)},
                    )
                if stage.status == "failed":
                    failed = ", ".join(f"{g.name} ({g.detail})" for g in verdict if not g.passed)
                    await self._rolled_back(fresh, f"{STAGE_TITLES[name]} gate failed: {failed}")
                    return
        async with self._lock(rollout_id):
            rollout = await self.get(rollout_id)
            if rollout.status == RUNNING:
                await self._promoted(rollout, manual=False)

    async def _enter(self, rollout: Rollout, name: str) -> Stage:
        percent = {CANARY_STAGE: rollout.canary_percent, PROMOTE: 100}.get(name, 0)
        stage = Stage(name=name, status="running", started_at=iso(), percent=percent)
        rollout.stage, rollout.percent = name, percent
        rollout.stages.append(stage)
        await self.store.put_split(
            RouteSplit(
                route=rollout.route,
                baseline=rollout.baseline,
                candidate=rollout.candidate,
                percent=percent,
                rollout_id=rollout.id,
            )
        )
        await self._save(rollout)
        await self._event(
            rollout, ROLLOUT_STAGE_CHANGED, data={"stage": name, "title": STAGE_TITLES[name], "percent": percent}
        )
        return stage

    async def _run_stage(self, rollout: Rollout, stage: Stage) -> builtins.list[Gate]:
        """Produce or wait for the stage's samples, then judge them."""
        deadline = time.monotonic() + rollout.stage_timeout_s
        since = _naive(stage.started_at)
        extra: list[Gate] = []
        if stage.name in (DEV_E2E, SMOKE):
            workflow = rollout.dev_e2e_workflow if stage.name == DEV_E2E else None
            correlation = f"rollout-{rollout.id}-{stage.name.replace('_', '-')}"
            if workflow:
                gate = await self.samples.run_workflow(rollout, correlation, workflow, deadline)
                extra.append(gate)
                wanted = None
            else:
                count = rollout.dev_e2e_tasks if stage.name == DEV_E2E else rollout.smoke_tasks
                await self.samples.submit(rollout, correlation, count)
                wanted = count
            figures = await self._wait_samples(rollout, stage, since, correlation, wanted=wanted, deadline=deadline)
            min_samples = wanted if wanted is not None else 1
        else:
            figures = await self._wait_samples(
                rollout, stage, since, None, wanted=rollout.min_samples, deadline=deadline
            )
            min_samples = rollout.min_samples
        candidate, baseline = figures[CANARY], figures[BASELINE]
        if stage.name == PROMOTE and baseline.finished == 0:
            # no baseline traffic at 100%: compare with the baseline of the canary stage
            baseline = self._previous_baseline(rollout)
        stage.samples = {"candidate": candidate.as_dict(), "baseline": baseline.as_dict()}
        verdict = gates.evaluate(candidate, baseline, min_samples=min_samples, slo_p90_ms=rollout.slo_p90_ms)
        stage.gates = [*extra, *verdict]
        return stage.gates

    def _previous_baseline(self, rollout: Rollout) -> gates.Figures:
        for stage in reversed(rollout.stages):
            if stage.name == CANARY_STAGE and stage.samples:
                return gates.Figures.from_dict(stage.samples.get("baseline"))
        return gates.Figures()

    async def _wait_samples(
        self,
        rollout: Rollout,
        stage: Stage,
        since: dt.datetime,
        correlation: str | None,
        *,
        wanted: int | None,
        deadline: float,
    ) -> dict[str, gates.Figures]:
        """Poll the projection until the stage has its samples (or its time is up)."""
        synthetic = correlation is not None
        while True:
            waited = time.monotonic()
            figures = await self.samples.figures(rollout.route, since, correlation)
            if figures is None:  # a replay: no verdict from it, and its time is not the stage's
                await asyncio.sleep(POLL_S)
                deadline += time.monotonic() - waited
                continue
            candidate = figures[CANARY]
            stage.samples = {k: v.as_dict() for k, v in (("candidate", candidate), ("baseline", figures[BASELINE]))}
            await self._save_progress(rollout, stage)
            if synthetic:
                if wanted is None or (candidate.finished >= wanted and figures[BASELINE].finished >= wanted):
                    return figures
            elif candidate.finished >= (wanted or 0):
                return figures
            elif (
                candidate.finished >= EARLY_FAILURE_SAMPLES
                and not gates.failure_gate(candidate, figures[BASELINE]).passed
            ):
                return figures  # clearly worse already: no need to expose more traffic
            if time.monotonic() > deadline:
                return figures
            await asyncio.sleep(POLL_S)

    async def _save_progress(self, rollout: Rollout, stage: Stage) -> None:
        async with self._lock(rollout.id):
            fresh = await self.get(rollout.id)
            if fresh.status != RUNNING or not fresh.stages:
                raise _Halted  # paused or ended meanwhile
            fresh.stages[-1].samples = stage.samples
            await self._save(fresh)

    def _close_stage(self, rollout: Rollout, status: str) -> None:
        if rollout.stages and rollout.stages[-1].status == "running":
            rollout.stages[-1].status = status
            rollout.stages[-1].ended_at = iso()

    async def _promoted(self, rollout: Rollout, *, manual: bool) -> None:
        await self.store.put_split(RouteSplit(route=rollout.route, baseline=rollout.candidate, rollout_id=rollout.id))
        rollout.status, rollout.percent = PROMOTED, 100
        rollout.reason = "promoted by an operator" if manual else "every gate passed"
        await self._save(rollout)
        await self._event(rollout, ROLLOUT_PROMOTED, data={"manual": manual, "previous_baseline": rollout.baseline})

    async def _rolled_back(self, rollout: Rollout, reason: str) -> None:
        await self.store.put_split(RouteSplit(route=rollout.route, baseline=rollout.baseline, rollout_id=rollout.id))
        rollout.status, rollout.percent, rollout.reason = ROLLED_BACK, 0, reason
        await self._save(rollout)
        await self._event(rollout, ROLLOUT_ROLLED_BACK, error=reason, data={"stage": rollout.stage, "reason": reason})

    async def _save(self, rollout: Rollout) -> None:
        rollout.updated_at = iso()
        await self.store.put(rollout)

    async def _event(self, rollout: Rollout, type: str, *, event_id: str | None = None, **fields: Any) -> None:
        await self.events.append(
            make_event(
                type,
                event_id=event_id,
                correlation_id=f"rollout-{rollout.id}",
                route=rollout.route,
                actor=self.name,
                version=rollout.candidate,
                cohort=CANARY,
                **{"data": {"rollout_id": rollout.id, **fields.pop("data", {})}, **fields},
            )
        )


def rollout_component(system: Any) -> RolloutController:
    """The controller of ``system`` (a ``cogo.runtime.system.System``), on the projector's database."""
    controller = RolloutController(system.nc, system.config, system.projector, data_dir=system.data_dir)
    controller.samples.policy_of = system.policies.get
    return controller
