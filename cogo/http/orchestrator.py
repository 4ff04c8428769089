"""Workflow routes: plan, execute, inspect and cancel runs; per-workflow metrics.

``POST /api/orchestrator/plan``      validate; return the resolved plan (nothing runs)
``POST /api/orchestrator/execute``   start a run from a ``plan``, a ``workflowId`` or a
                                     ``definition`` -> 202 ``{"runId"}``
``POST /api/workflows/execute``      ``{"workflowId", "parameters"}`` -> 202 ``{"runId"}``
``POST /api/orchestrator/cancel``    ``{"runId", "reason"}`` -> 202
``GET  /api/orchestrator/state``     ``?runId=``: status, nodes, gate verdicts, artifacts
``GET  /api/orchestrator/runs``      ``?workflowId=&status=&limit=``, newest first
``GET  /api/workflows``              the definitions and their parameters
``GET  /api/metrics/workflows/{id}`` runs, outcomes, duration p50/p90, gate pass rate

Runs start by sending a command to the orchestrator (``orchestrator.workflow.0``); state
is a fold of the workflow events read back from ``EVENTS`` (see ``cogo.workflows.history``),
so this process needs no database of its own. Metrics come from the projection's
``workflow_runs`` when a projector runs in this process (their cost is then the
workflow's runs, not the stream), else from the same fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import nats.errors
import pydantic
from nats.js.errors import APIError
from pydantic import ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.actors.orchestrator import CancelRun, StartRun, send_command
from cogo.errors import InvalidWorkflow, WorkflowNotFound
from cogo.http.app import (
    AppState,
    ValidationFailed,
    field_error,
    json_body,
    state_of,
    validate,
)
from cogo.projections import queries
from cogo.streams.envelope import new_id
from cogo.workflows import history
from cogo.workflows.definition import RUN_ID, WORKFLOW_ID, Catalog
from cogo.workflows.planner import Plan, load_plan, plan_workflow
from cogo.workflows.run import GATE_FAILED, GATE_PASSED, RunState

RECENT_RUNS = 20
CATCH_UP_S = 2.0


class _Body(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PlanRequest(_Body):
    """What to plan: a workflow by id, or an inline definition, with its parameters."""

    workflow_id: str | None = Field(None, alias="workflowId", pattern=WORKFLOW_ID)
    definition: dict[str, Any] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class ExecuteRequest(PlanRequest):
    """What to run: a plan from ``/plan``, or what ``PlanRequest`` takes."""

    plan: dict[str, Any] | None = None
    run_id: str | None = Field(None, alias="runId", pattern=RUN_ID)


class WorkflowExecuteRequest(_Body):
    workflow_id: str = Field(alias="workflowId", pattern=WORKFLOW_ID)
    parameters: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = Field(None, alias="runId", pattern=RUN_ID)


class CancelRequest(_Body):
    run_id: str = Field(alias="runId", pattern=RUN_ID)
    reason: str | None = Field(None, max_length=1000)


def _catalog(state: AppState) -> Catalog:
    return Catalog.for_data_dir(state.data_dir)


async def _plan(state: AppState, body: PlanRequest | ExecuteRequest) -> Plan:
    """Plan what the body names; field-level 422s for everything wrong with it."""
    given = [
        name
        for name, value in (
            ("workflowId", body.workflow_id),
            ("definition", body.definition),
            ("plan", getattr(body, "plan", None)),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise ValidationFailed(
            [field_error(["body"], "give exactly one of workflowId, definition or plan"
                         + (f" (got {', '.join(given)})" if given else ""))]
        )  # fmt: skip
    if given == ["plan"] and body.parameters:
        raise ValidationFailed(
            [field_error(["body", "parameters"], "a plan already holds its parameters")]
        )
    try:
        if isinstance(body, ExecuteRequest) and body.plan is not None:
            return load_plan(body.plan, state.policies.get)
        if body.workflow_id is not None:
            definition = await asyncio.to_thread(_catalog(state).get, body.workflow_id)
        else:
            definition = body.definition or {}
        return plan_workflow(definition, body.parameters, state.policies.get)
    except WorkflowNotFound as exc:
        raise HTTPException(404, exc.message) from None
    except InvalidWorkflow as exc:
        raise ValidationFailed(
            [field_error(["body", *e["loc"]], e["msg"], e["type"]) for e in exc.detail or []]
            or [field_error(["body"], exc.message, exc.code)]
        ) from None


def _plan_view(plan: Plan) -> dict[str, Any]:
    return {"workflowId": plan.workflow_id, "routes": plan.routes, "plan": plan.to_json()}


async def plan_endpoint(request: Request) -> JSONResponse:
    state = state_of(request)
    plan = await _plan(state, validate(PlanRequest, await json_body(request)))
    return JSONResponse(_plan_view(plan))


async def _start(state: AppState, plan: Plan, run_id: str | None) -> JSONResponse:
    run_id = run_id or new_id()
    try:
        fresh = await send_command(state.js, StartRun(run_id=run_id, plan=plan.to_json()))
    except APIError as exc:
        raise HTTPException(503, f"the bus refused the run: {exc.description}") from None
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
            nats.errors.ConnectionClosedError) as exc:  # fmt: skip
        raise HTTPException(503, f"the bus is unavailable: {type(exc).__name__}") from None
    return JSONResponse(
        {"runId": run_id, "workflowId": plan.workflow_id, "duplicate": not fresh},
        status_code=202,
    )


async def execute_endpoint(request: Request) -> JSONResponse:
    state = state_of(request)
    body = validate(ExecuteRequest, await json_body(request))
    plan = await _plan(state, body)
    return await _start(state, plan, body.run_id)


async def workflows_execute_endpoint(request: Request) -> JSONResponse:
    state = state_of(request)
    body = validate(WorkflowExecuteRequest, await json_body(request))
    plan = await _plan(state, PlanRequest(workflowId=body.workflow_id, parameters=body.parameters))
    return await _start(state, plan, body.run_id)


def _run_id_param(request: Request) -> str:
    run_id = request.query_params.get("runId") or request.query_params.get("run_id")
    if not run_id:
        raise ValidationFailed([field_error(["query", "runId"], "field required", "missing")])
    try:
        return CancelRequest(runId=run_id).run_id
    except pydantic.ValidationError:
        raise ValidationFailed(
            [field_error(["query", "runId"], f"must match {RUN_ID}", "string_pattern_mismatch")]
        ) from None


async def _existing_run(state: AppState, run_id: str) -> RunState:
    run = await history.read_run(state.js, run_id)
    if not run.started:
        raise HTTPException(404, f"no run {run_id!r} (unknown, or its start is still queued)")
    return run


async def state_endpoint(request: Request) -> JSONResponse:
    state = state_of(request)
    run = await _existing_run(state, _run_id_param(request))
    return JSONResponse(run.view())


async def cancel_endpoint(request: Request) -> JSONResponse:
    state = state_of(request)
    body = validate(CancelRequest, await json_body(request))
    run = await _existing_run(state, body.run_id)
    if run.finished:
        raise HTTPException(409, f"run {body.run_id!r} already {run.status}")
    await send_command(state.js, CancelRun(run_id=body.run_id, reason=body.reason))
    return JSONResponse({"runId": body.run_id, "status": "cancelling"}, status_code=202)


def _run_row(run: RunState) -> dict[str, Any]:
    return {
        "runId": run.run_id,
        "workflowId": run.workflow_id,
        "status": run.status,
        "startedAt": run.started_at,
        "endedAt": run.ended_at,
        "durationMs": run.duration_ms(),
        "errorCode": run.error_code,
        "error": run.error,
    }


async def runs_endpoint(request: Request) -> JSONResponse:
    state = state_of(request)
    query = request.query_params
    workflow_id = query.get("workflowId")
    if workflow_id is not None and not _matches(WORKFLOW_ID, workflow_id):
        raise ValidationFailed([field_error(["query", "workflowId"], f"must match {WORKFLOW_ID}")])
    try:
        limit = int(query.get("limit", "100"))
        if not 1 <= limit <= 10000:
            raise ValueError
    except ValueError:
        raise ValidationFailed(
            [field_error(["query", "limit"], "must be an integer in 1..10000")]
        ) from None
    runs = await history.list_runs(state.js, workflow_id)
    if query.get("status"):
        runs = [r for r in runs if r.status == query["status"]]
    rows = [_run_row(r) for r in reversed(runs[-limit:])]
    return JSONResponse({"runs": rows, "count": len(rows)})


async def definitions_endpoint(request: Request) -> JSONResponse:
    definitions = await asyncio.to_thread(_catalog(state_of(request)).load)
    return JSONResponse(
        {
            "workflows": [
                {
                    "id": workflow_id,
                    "description": raw.get("description", ""),
                    "version": raw.get("version", 1),
                    "parameters": raw.get("parameters", {}),
                }
                for workflow_id, raw in sorted(definitions.items())
            ]
        }
    )


async def metrics_endpoint(request: Request) -> JSONResponse:
    state = state_of(request)
    workflow_id = request.path_params["workflow_id"]
    if not _matches(WORKFLOW_ID, workflow_id):
        raise ValidationFailed([field_error(["path", "workflowId"], f"must match {WORKFLOW_ID}")])
    projector = state.components.get("projector")
    if projector is not None:
        # the projection's one row per run (cogo.projections.rollups), once it has what
        # the stream held when the request came (bounded: a lagging projector answers late)
        with contextlib.suppress(TimeoutError):
            await projector.wait_caught_up(timeout=CATCH_UP_S)
        return JSONResponse(
            await projector.store.read(
                lambda cur: queries.workflow_metrics(cur, workflow_id, RECENT_RUNS)
            )
        )
    # without a projector in this process: fold the workflow's events from the stream
    runs = await history.list_runs(state.js, workflow_id)
    gate_events = await history.read(
        state.js, [f"events.{t}.wf.{workflow_id}.*" for t in (GATE_PASSED, GATE_FAILED)]
    )
    return JSONResponse(workflow_metrics(workflow_id, runs, [e for _, e in gate_events]))


def workflow_metrics(workflow_id: str, runs: list[RunState], gates: list[Any]) -> dict[str, Any]:
    """Outcome counts, duration percentiles and the gate pass rate of one workflow's runs."""
    counts = {s: sum(1 for r in runs if r.status == s) for s in
              ("running", "succeeded", "failed", "cancelled")}  # fmt: skip
    durations = sorted(d for r in runs if r.status in ("succeeded", "failed")
                       if (d := r.duration_ms()) is not None)  # fmt: skip
    finished = counts["succeeded"] + counts["failed"]
    passed = sum(1 for e in gates if e.type == GATE_PASSED)
    return {
        "workflowId": workflow_id,
        "runs": len(runs),
        **counts,
        "successRate": round(counts["succeeded"] / finished, 4) if finished else None,
        "durationMs": {
            "p50": _quantile(durations, 0.5),
            "p90": _quantile(durations, 0.9),
            "max": durations[-1] if durations else None,
        },
        "gates": {
            "evaluated": len(gates),
            "passed": passed,
            "failed": len(gates) - passed,
            "passRate": round(passed / len(gates), 4) if gates else None,
        },
        "recentRuns": [_run_row(r) for r in reversed(runs[-RECENT_RUNS:])],
    }


def _quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (DuckDB's ``quantile_cont``)."""
    if not values:
        return None
    position = (len(values) - 1) * q
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return round(values[low] + (values[high] - values[low]) * (position - low), 3)


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern.strip("^$"), value) is not None


routes = [
    Route("/api/orchestrator/plan", plan_endpoint, methods=["POST"]),
    Route("/api/orchestrator/execute", execute_endpoint, methods=["POST"]),
    Route("/api/orchestrator/cancel", cancel_endpoint, methods=["POST"]),
    Route("/api/orchestrator/state", state_endpoint, methods=["GET"]),
    Route("/api/orchestrator/runs", runs_endpoint, methods=["GET"]),
    Route("/api/workflows", definitions_endpoint, methods=["GET"]),
    Route("/api/workflows/execute", workflows_execute_endpoint, methods=["POST"]),
    Route("/api/metrics/workflows/{workflow_id}", metrics_endpoint, methods=["GET"]),
]
