"""Workflow routes: plan, execute, inspect and cancel runs; per-workflow metrics.

``POST /api/orchestrator/plan``      validate; return the resolved plan (nothing runs)
``POST /api/orchestrator/execute``   start a run from a ``plan``, a ``workflowId`` or a
                                     ``definition`` -> 202 ``{"runId"}``
``POST /api/workflows/execute``      ``{"workflowId", "parameters"}`` -> 202 ``{"runId"}``
``POST /api/orchestrator/cancel``    ``{"runId", "reason"}`` -> 202 (children are cancelled too)
``POST /api/orchestrator/signal``    ``{"runId", "name", "data"}`` -> 202; 404 unknown run or
                                     signal name, 409 when the run (or that node) is over
``GET  /api/orchestrator/state``     ``?runId=``: status, nodes, gate verdicts, artifacts,
                                     parent / children, signals awaited
``GET  /api/orchestrator/runs``      ``?workflowId=&status=&limit=``, newest first
``GET  /api/workflows``              the definitions and their parameters
``GET  /api/metrics/workflows/{id}`` runs, outcomes, duration p50/p90, gate pass rate

Runs start by sending a command to the run's partition of the orchestrators
(``orchestrator.workflow.<p>``, see ``cogo.workflows.inbox``); state is a fold of the
workflow events read back from ``EVENTS`` (see ``cogo.workflows.history``), so this process
needs no database of its own. Metrics come from the projection's ``workflow_runs`` when a
projector runs in this process (their cost is then the workflow's runs, not the stream),
else from the same fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from typing import Any

import nats.errors
import pydantic
from nats.js.errors import APIError
from pydantic import ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.errors import (
    BusUnavailable,
    InvalidWorkflow,
    RunFinished,
    RunNotFound,
    SignalUnknown,
    WorkflowNotFound,
)
from cogo.http import schedules as schedule_routes
from cogo.http.endpoint import endpoint
from cogo.http.schemas import WORKFLOW_ENUM, WORKFLOW_PARAMETERS, Body, Query
from cogo.http.state import AppState, ValidationFailed, field_error, state_of
from cogo.projections import queries
from cogo.streams.catalogue import GATE_FAILED, GATE_PASSED
from cogo.streams.envelope import new_id
from cogo.workflows import history
from cogo.workflows.definition import RUN_ID, SIGNAL_NAME, WORKFLOW_ID, Catalog, WorkflowDefinition
from cogo.workflows.inbox import CancelRun, Command, SignalRun, StartRun, send_command
from cogo.workflows.planner import (
    Plan,
    expression_problems,
    load_plan,
    plan_workflow,
    pydantic_errors,
)
from cogo.workflows.run import RunState

RECENT_RUNS = 20
CATCH_UP_S = 2.0


_Body = Body
# the choices of a plan/execute body: exactly one of them is given (_plan checks), never null
_SOURCES = ("workflowId", "workflow_id", "definition", "plan")


def _present(schema: dict[str, Any]) -> None:
    """A field that may be left out but, when given, is not null."""
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    if branches:
        schema.update(branches[0])
    schema.pop("default", None)


def _present_workflow(schema: dict[str, Any]) -> None:
    """``workflowId``: present-not-null, and one of the catalog's ids."""
    _present(schema)
    schema.update(WORKFLOW_ENUM)


class PlanRequest(_Body):
    """What to plan: a workflow by id, or an inline definition, with its parameters."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["workflowId"]}, {"required": ["definition"]}]},
    )

    workflow_id: str | None = Field(
        None,
        alias="workflowId",
        pattern=WORKFLOW_ID,
        json_schema_extra=_present_workflow,
    )
    definition: dict[str, Any] | None = Field(None, json_schema_extra=_present)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _SOURCES:
                if key in data and data[key] is None:
                    raise ValueError(f"{key} must not be null (leave it out instead)")
        return data


class ExecuteRequest(PlanRequest):
    """What to run: a plan from ``/plan``, or what ``PlanRequest`` takes."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["workflowId"]}, {"required": ["definition"]}, {"required": ["plan"]}]
        },
    )

    plan: dict[str, Any] | None = Field(None, json_schema_extra=_present)
    run_id: str | None = Field(None, alias="runId", pattern=RUN_ID)


class WorkflowExecuteRequest(_Body):
    """What to run: a workflow of the catalog by id, with its parameters."""

    model_config = ConfigDict(json_schema_extra=WORKFLOW_PARAMETERS)

    workflow_id: str = Field(alias="workflowId", pattern=WORKFLOW_ID, json_schema_extra=WORKFLOW_ENUM)
    parameters: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = Field(None, alias="runId", pattern=RUN_ID)


class CancelRequest(_Body):
    """Which run to cancel, and why."""

    run_id: str = Field(alias="runId", pattern=RUN_ID)
    reason: str | None = Field(None, max_length=1000)


class SignalRequest(_Body):
    """A signal for a run's signal node: its ``data`` becomes the node's result."""

    run_id: str = Field(alias="runId", pattern=RUN_ID)
    name: str = Field(pattern=SIGNAL_NAME)
    data: Any = None
    # idempotency: the same signalId twice is delivered once
    signal_id: str | None = Field(None, alias="signalId", pattern=r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$")


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
            [
                field_error(
                    ["body"],
                    "give exactly one of workflowId, definition or plan"
                    + (f" (got {', '.join(given)})" if given else ""),
                )
            ]
        )
    if given == ["plan"] and body.parameters:
        raise ValidationFailed([field_error(["body", "parameters"], "a plan already holds its parameters")])
    try:
        # the catalog lets the planner check child workflows (existence, parameters, cycles)
        definitions = await asyncio.to_thread(_catalog(state).load)
        if isinstance(body, ExecuteRequest) and body.plan is not None:
            return load_plan(body.plan, state.policies.get, definitions)
        if body.workflow_id is not None:
            if body.workflow_id not in definitions:
                raise WorkflowNotFound(f"no workflow {body.workflow_id!r}; known: " + ", ".join(sorted(definitions)))
            definition = definitions[body.workflow_id]
        else:
            definition = body.definition or {}
        return plan_workflow(definition, body.parameters, state.policies.get, definitions)
    except InvalidWorkflow as exc:  # WorkflowNotFound (404) goes through as it is
        raise ValidationFailed(
            [field_error(["body", *e["loc"]], e["msg"], e["type"]) for e in exc.detail or []]
            or [field_error(["body"], exc.message, exc.code)],
            code=exc.code,
        ) from None


def _plan_view(plan: Plan) -> dict[str, Any]:
    return {"workflowId": plan.workflow_id, "routes": plan.routes, "plan": plan.to_json()}


_PLAN_ERRORS = (WorkflowNotFound, InvalidWorkflow)
_START_ERRORS = (*_PLAN_ERRORS, BusUnavailable)


@endpoint(body=PlanRequest, ok={200: "the resolved plan; nothing runs"}, errors=_PLAN_ERRORS)
async def plan_endpoint(request: Request, body: PlanRequest) -> JSONResponse:
    """Validate a workflow and its parameters; return the resolved plan."""
    plan = await _plan(state_of(request), body)
    return JSONResponse(_plan_view(plan))


async def _send(state: AppState, command: Command, msg_id: str | None = None) -> bool:
    """Send a command to the run's orchestrator partition; 503 when the bus cannot take it."""
    try:
        return await send_command(state.js, command, msg_id)
    except APIError as exc:
        raise BusUnavailable(f"the bus refused the command: {exc.description}") from None
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
        raise BusUnavailable(f"the bus is unavailable: {type(exc).__name__}") from None


async def _start(state: AppState, plan: Plan, run_id: str | None) -> JSONResponse:
    run_id = run_id or new_id()
    fresh = await _send(state, StartRun(run_id=run_id, plan=plan.to_json()))
    return JSONResponse(
        {"runId": run_id, "workflowId": plan.workflow_id, "duplicate": not fresh},
        status_code=202,
    )


@endpoint(body=ExecuteRequest, ok={202: "started: {runId, workflowId, duplicate}"}, errors=_START_ERRORS)
async def execute_endpoint(request: Request, body: ExecuteRequest) -> JSONResponse:
    """Start a run from a plan, a workflow id or an inline definition."""
    state = state_of(request)
    plan = await _plan(state, body)
    return await _start(state, plan, body.run_id)


@endpoint(body=WorkflowExecuteRequest, ok={202: "started: {runId, workflowId, duplicate}"}, errors=_START_ERRORS)
async def workflows_execute_endpoint(request: Request, body: WorkflowExecuteRequest) -> JSONResponse:
    """Start a run of a catalog workflow with its parameters."""
    state = state_of(request)
    plan = await _plan(
        state,
        PlanRequest.model_validate({"workflowId": body.workflow_id, "parameters": body.parameters}),
    )
    return await _start(state, plan, body.run_id)


class StateQuery(Query):
    """The query of ``GET /api/orchestrator/state``."""

    run_id: str = Field(alias="runId", pattern=RUN_ID)


async def _existing_run(state: AppState, run_id: str) -> RunState:
    run = await history.read_run(state.js, run_id)
    if not run.started:
        raise RunNotFound(f"no run {run_id!r} (unknown, or its start is still queued)")
    return run


@endpoint(query=StateQuery, ok={200: "the run: status, nodes, gate verdicts, artifacts"}, errors=(RunNotFound,))
async def state_endpoint(request: Request, query: StateQuery) -> JSONResponse:
    """A run's status, nodes, gate verdicts and artifacts."""
    run = await _existing_run(state_of(request), query.run_id)
    return JSONResponse(run.view())


@endpoint(body=CancelRequest, ok={202: "cancelling"}, errors=(RunNotFound, RunFinished, BusUnavailable))
async def cancel_endpoint(request: Request, body: CancelRequest) -> JSONResponse:
    """Cancel a run that has not ended (its child runs too)."""
    state = state_of(request)
    run = await _existing_run(state, body.run_id)
    if run.finished:
        raise RunFinished(f"run {body.run_id!r} already {run.status}")
    await _send(state, CancelRun(run_id=body.run_id, reason=body.reason, workflow_id=run.workflow_id))
    return JSONResponse({"runId": body.run_id, "status": "cancelling"}, status_code=202)


@endpoint(
    body=SignalRequest,
    ok={
        202: "accepted: {runId, name, signalId, node, nodeStatus, duplicate}; a node that "
        "has not started yet takes it when it starts"
    },
    errors=(RunNotFound, SignalUnknown, RunFinished, BusUnavailable),
)
async def signal_endpoint(request: Request, body: SignalRequest) -> JSONResponse:
    """Send a signal to a run (a human's approval, an outside system's answer)."""
    state = state_of(request)
    run = await _existing_run(state, body.run_id)
    nodes = {
        str(n.get("name") or n.get("id")): str(n.get("id"))
        for n in (run.plan or {}).get("nodes") or []
        if n.get("type") == "signal"
    }
    if body.name not in nodes:
        known = ", ".join(sorted(nodes)) or "none"
        raise SignalUnknown(f"run {body.run_id!r} has no signal node named {body.name!r} (signals: {known})")
    node = run.nodes[nodes[body.name]]
    if run.finished:
        raise RunFinished(f"run {body.run_id!r} already {run.status}")
    if node.final:
        raise RunFinished(f"signal node {node.id!r} of run {body.run_id!r} is {node.status}")
    signal_id = body.signal_id or new_id()
    # The first signal of a name is the one that counts, so its answer alone says
    # duplicate: false. Keyed by name on the bus, of any number sent at once exactly one is
    # stored; past the bus's duplicate window, the run itself knows it was signaled.
    command = SignalRun(run_id=body.run_id, name=body.name, signal_id=signal_id, data=body.data)
    fresh = not run.signals.get(body.name) and await _send(state, command, msg_id=f"{body.run_id}:signal:{body.name}")
    return JSONResponse(
        {
            "runId": body.run_id,
            "name": body.name,
            "signalId": signal_id,
            "node": node.id,
            "nodeStatus": node.status,
            "duplicate": not fresh,
        },
        status_code=202,
    )


def _run_row(run: RunState) -> dict[str, Any]:
    return {
        "runId": run.run_id,
        "workflowId": run.workflow_id,
        "status": run.status,
        "parentRunId": (run.parent or {}).get("runId"),
        "startedAt": run.started_at,
        "endedAt": run.ended_at,
        "durationMs": run.duration_ms(),
        "errorCode": run.error_code,
        "error": run.error,
    }


class RunsQuery(Query):
    """The query of ``GET /api/orchestrator/runs``."""

    workflow_id: str | None = Field(None, alias="workflowId", pattern=WORKFLOW_ID)
    status: str | None = Field(None, max_length=50, description="running, succeeded, failed...")
    limit: int = Field(100, ge=1, le=10000)


@endpoint(query=RunsQuery, ok={200: "{runs, count}, newest first"})
async def runs_endpoint(request: Request, query: RunsQuery) -> JSONResponse:
    """Recent runs, newest first, by workflow and status."""
    runs = await history.list_runs(state_of(request).js, query.workflow_id)
    if query.status:
        runs = [r for r in runs if r.status == query.status]
    rows = [_run_row(r) for r in reversed(runs[-query.limit :])]
    return JSONResponse({"runs": rows, "count": len(rows)})


@endpoint(ok={200: "the workflow definitions and their parameters; a file that does not load is listed with its error"})
async def definitions_endpoint(request: Request) -> JSONResponse:
    """The workflow definitions and their parameters; a file that does not load is listed
    with its ``error`` (and ``path``)."""
    definitions, problems = await asyncio.to_thread(_catalog(state_of(request)).load_all)
    rows: list[dict[str, Any]] = []
    for workflow_id, raw in sorted(definitions.items()):
        row: dict[str, Any] = {
            "id": workflow_id,
            "description": raw.get("description", ""),
            "version": raw.get("version", 1),
            "parameters": raw.get("parameters", {}),
        }
        try:
            WorkflowDefinition.model_validate(raw)
            problems_found = expression_problems(raw.get("nodes"), ["nodes"])
        except pydantic.ValidationError as exc:
            problems_found = pydantic_errors(exc, [])
        if problems_found:  # what planning would refuse, whatever the parameters
            row["error"] = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in problems_found)
        rows.append(row)
    for problem in problems:
        rows.append(
            {
                "id": problem["id"],
                "description": "",
                "version": None,
                "parameters": {},
                "error": problem["error"],
                "path": problem["path"],
            }
        )
    return JSONResponse({"workflows": rows})


class WorkflowPath(Query):
    """``/api/metrics/workflows/{workflow_id}``."""

    workflow_id: str = Field(pattern=WORKFLOW_ID)


@endpoint(path=WorkflowPath, ok={200: "runs, outcomes, duration p50/p90, gate pass rate"})
async def metrics_endpoint(request: Request, path: WorkflowPath) -> JSONResponse:
    """Runs, outcomes, duration percentiles and gate pass rate of one workflow."""
    state = state_of(request)
    workflow_id = path.workflow_id
    projector = state.projector
    if projector is not None:
        # the projection's one row per run (cogo.projections.rollups), once it has what
        # the stream held when the request came (bounded: a lagging projector answers late)
        with contextlib.suppress(TimeoutError):
            await projector.wait_caught_up(timeout=CATCH_UP_S)
        return JSONResponse(
            await projector.store.read(lambda cur: queries.workflow_metrics(cur, workflow_id, RECENT_RUNS))
        )
    # without a projector in this process: fold the workflow's events from the stream
    runs = await history.list_runs(state.js, workflow_id)
    gate_events = await history.read(state.js, [f"events.{t}.wf.{workflow_id}.*" for t in (GATE_PASSED, GATE_FAILED)])
    return JSONResponse(workflow_metrics(workflow_id, runs, [e for _, e in gate_events]))


def workflow_metrics(workflow_id: str, runs: list[RunState], gates: list[Any]) -> dict[str, Any]:
    """Outcome counts, duration percentiles and the gate pass rate of one workflow's runs."""
    counts = {s: sum(1 for r in runs if r.status == s) for s in ("running", "succeeded", "failed", "cancelled")}
    durations = sorted(d for r in runs if r.status in ("succeeded", "failed") if (d := r.duration_ms()) is not None)
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
    if len(values) == 1:
        return round(values[0], 3)
    cuts = statistics.quantiles(values, n=100, method="inclusive")  # p1 .. p99
    return round(cuts[round(q * 100) - 1], 3)


routes = [
    Route("/api/orchestrator/plan", plan_endpoint, methods=["POST"]),
    Route("/api/orchestrator/execute", execute_endpoint, methods=["POST"]),
    Route("/api/orchestrator/cancel", cancel_endpoint, methods=["POST"]),
    Route("/api/orchestrator/signal", signal_endpoint, methods=["POST"]),
    Route("/api/orchestrator/state", state_endpoint, methods=["GET"]),
    Route("/api/orchestrator/runs", runs_endpoint, methods=["GET"]),
    Route("/api/workflows", definitions_endpoint, methods=["GET"]),
    Route("/api/workflows/execute", workflows_execute_endpoint, methods=["POST"]),
    Route("/api/metrics/workflows/{workflow_id}", metrics_endpoint, methods=["GET"]),
    # schedules start runs of these workflows: served beside them
    *schedule_routes.routes,
]
