"""A rollout stage's samples: what is submitted for them and how their figures are read.

Dev E2E and smoke submit their own samples, pinned to a cohort: tasks (as many for the
baseline as for the candidate) or the route's sample workflow with the candidate pinned.
Canary and promote sample the route's real traffic. Either way the figures come from the
projection (``cogo.rollouts.gates`` computes them in DuckDB), never while a replay rebuilds
it. The controller (``cogo.rollouts.controller``) decides what the figures mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import time
from typing import Any

from nats.js.client import JetStreamContext

from cogo.errors import ProjectionBusy
from cogo.rollouts import gates
from cogo.rollouts.canary import BASELINE, CANARY
from cogo.rollouts.split import Gate, Rollout
from cogo.streams.envelope import COHORT_KEY, EXECUTE_SUBJECT, MSG_ID, encoder

POLL_S = 0.5


class Samples:
    """Submits a rollout's samples and reads their figures from the projection."""

    def __init__(self, js: JetStreamContext, projector: Any, data_dir: Any = None) -> None:
        self.js = js
        self.projector = projector
        self.data_dir = data_dir
        self.policy_of: Any = None  # a route -> RoutePolicy lookup, for workflow plans

    async def figures(self, route: str, since: dt.datetime, correlation: str | None) -> dict[str, gates.Figures] | None:
        """The cohorts' figures, or None while a replay runs."""
        with contextlib.suppress(TimeoutError):
            await self.projector.wait_caught_up(timeout=5.0)
        figures: dict[str, gates.Figures] | None = await self.read(
            lambda cur: gates.cohort_figures(cur, route=route, since=since, correlation_id=correlation)
        )
        return figures

    async def read(self, fn: Any) -> Any:
        """``fn(cursor)`` on the projection, or None while a replay rebuilds or swaps it.

        A replay never decides a rollout: its swap closes the store for a moment (a read
        then fails with ProjectionBusy, which used to roll the rollout back), and what is
        read while it runs may be about to be replaced. The gates wait for it instead.
        """
        if self.projector.rebuilding:
            return None
        try:
            result = await self.projector.store.read(fn)
        except ProjectionBusy:
            return None
        return None if self.projector.rebuilding else result

    async def submit(self, rollout: Rollout, correlation: str, count: int) -> None:
        """``count`` sample tasks pinned to the candidate, as many pinned to the baseline."""
        futures = []
        for cohort in (CANARY, BASELINE):
            for i in range(count):
                task_id = f"{correlation}-{cohort}-{i}"
                body = {
                    "task_id": task_id,
                    "route": rollout.route,
                    "correlation_id": correlation,
                    "payload": {**rollout.sample_payload, COHORT_KEY: cohort},
                }
                futures.append(
                    await self.js.publish_async(EXECUTE_SUBJECT, encoder.encode(body), headers={MSG_ID: task_id})
                )
        await asyncio.gather(*futures)

    async def run_workflow(self, rollout: Rollout, run_id: str, workflow: dict[str, Any], deadline: float) -> Gate:
        """Run the sample workflow with the candidate pinned on the rollout's route."""
        from cogo.workflows.definition import Catalog
        from cogo.workflows.inbox import StartRun, send_command
        from cogo.workflows.planner import plan_workflow

        workflow_id = str(workflow.get("workflowId") or workflow.get("workflow_id"))
        catalog = Catalog.for_data_dir(self.data_dir)
        definition = copy.deepcopy(await asyncio.to_thread(catalog.get, workflow_id))
        _pin_route(definition.get("nodes") or [], rollout.route)
        plan = plan_workflow(definition, workflow.get("parameters") or {}, self.policy_of)
        await send_command(self.js, StartRun(run_id=run_id, plan=plan.to_json()))
        while time.monotonic() < deadline:
            waited = time.monotonic()
            outcome = await self.read(lambda cur: _run_outcome(cur, run_id))
            if outcome is None and self.projector.rebuilding:
                await asyncio.sleep(POLL_S)
                deadline += time.monotonic() - waited  # a replay's time is not the stage's
                continue
            if outcome is not None:
                status, error = outcome
                return Gate(
                    name="sample_workflow",
                    passed=status == "workflow_succeeded",
                    detail=f"{workflow_id} run {run_id}: {status}" + (f" ({error})" if error else ""),
                )
            await asyncio.sleep(POLL_S)
        return Gate(name="sample_workflow", passed=False, detail=f"{workflow_id} run {run_id} did not finish in time")


def _pin_route(nodes: list[Any], route: str) -> None:
    """Pin every node publishing to ``route`` (nested ones too) to the canary cohort."""
    for node in nodes:
        if not isinstance(node, dict):
            continue
        if node.get("route") == route and isinstance(node.get("payload"), dict):
            node["payload"][COHORT_KEY] = CANARY
        inner = node.get("node")
        if isinstance(inner, dict):
            _pin_route([inner], route)


def _run_outcome(cur: Any, run_id: str) -> tuple[str, str | None] | None:
    """The run's outcome event type and error, from its record (``workflow_runs``)."""
    row = cur.execute(
        "SELECT outcome, error FROM workflow_runs WHERE run_id = ? AND outcome IS NOT NULL",
        [run_id],
    ).fetchone()
    return (row[0], row[1]) if row else None
