"""Rollout routes: start a candidate version's rollout, watch its stages, steer it.

``POST /api/rollouts``                   ``{"route", "candidate", "slo": {"p90_ms"},
                                          "min_samples", ...}`` -> 201 the rollout
``GET  /api/rollouts``                   every rollout, newest first
``GET  /api/rollouts/{id}``              one rollout: stage, split, samples, gate figures
``POST /api/rollouts/{id}/promote``      to 100% now, skipping the remaining gates
``POST /api/rollouts/{id}/rollback``     back to the baseline (``{"reason"}`` optional)
``POST /api/rollouts/{id}/pause``        stop advancing; the split stays as it is

The controller (``cogo.rollouts.controller``) runs in the ``cogo up`` process.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic
from pydantic import ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.errors import (
    InvalidWorkflow,
    RolloutConflict,
    RolloutNotFound,
    Unavailable,
    UnknownRoute,
    WorkflowNotFound,
)
from cogo.http.endpoint import Success, endpoint
from cogo.http.schemas import ROUTE_ENUM, WORKFLOW_ENUM, WORKFLOW_PARAMETERS, Body, JsonInt
from cogo.http.state import AppState, ValidationFailed, field_error, require_route, state_of
from cogo.rollouts.controller import RolloutController, RolloutSpec
from cogo.streams.routes import VERSION_PATTERN
from cogo.workflows.definition import WORKFLOW_ID, Catalog
from cogo.workflows.planner import plan_workflow

ROUTE_PATTERN = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+$"


class Slo(Body):
    """The service level a candidate must hold."""

    p90_ms: float | None = Field(None, gt=0, description="p90 end-to-end task latency, ms")


class DevE2eWorkflow(Body):
    """A workflow Dev E2E runs with the candidate pinned on the route (e.g. codeBuildTest)."""

    model_config = ConfigDict(json_schema_extra=WORKFLOW_PARAMETERS)

    workflow_id: str = Field(alias="workflowId", pattern=WORKFLOW_ID, json_schema_extra=WORKFLOW_ENUM)
    parameters: dict[str, Any] = Field(default_factory=dict)


class RolloutRequest(Body):
    """The body of ``POST /api/rollouts``."""

    route: str = Field(min_length=3, max_length=200, pattern=ROUTE_PATTERN, json_schema_extra=ROUTE_ENUM)
    candidate: str = Field(pattern=VERSION_PATTERN, description="the candidate's --version")
    slo: Slo = Field(default_factory=Slo)
    min_samples: JsonInt = Field(20, ge=1, le=1_000_000, description="candidate tasks per gate")
    canary_percent: JsonInt = Field(10, ge=1, le=99)
    dev_e2e_tasks: JsonInt = Field(5, ge=0, le=1000)
    smoke_tasks: JsonInt = Field(20, ge=0, le=10_000)
    stage_timeout_s: float = Field(300.0, gt=0, le=7 * 86400)
    sample_payload: dict[str, Any] = Field(default_factory=dict, description="payload of the Dev E2E and smoke tasks")
    dev_e2e_workflow: DevE2eWorkflow | None = None


class ActionRequest(Body):
    """Optional body of promote / rollback / pause."""

    reason: str | None = Field(None, max_length=1000)


class RolloutPath(pydantic.BaseModel):
    """``/api/rollouts/{rollout_id}``."""

    rollout_id: str = Field(min_length=1, max_length=200)


def controller_of(request: Request) -> RolloutController:
    controller = state_of(request).rollouts
    if controller is None:
        raise Unavailable("the rollout controller does not run in this process")
    return controller


@endpoint(
    body=RolloutRequest,
    ok={201: "the rollout, at its first stage"},
    errors=(UnknownRoute, InvalidWorkflow, RolloutConflict, Unavailable),
)
async def start_rollout(request: Request, body: RolloutRequest) -> JSONResponse:
    """Start a rollout: Dev E2E -> CI smoke -> canary -> promote 100%, behind gates."""
    state = state_of(request)
    require_route(state, body.route)
    if body.dev_e2e_workflow is not None:
        await _check_workflow(state, body.dev_e2e_workflow)
    spec = RolloutSpec(
        route=body.route,
        candidate=body.candidate,
        slo_p90_ms=body.slo.p90_ms,
        min_samples=body.min_samples,
        canary_percent=body.canary_percent,
        dev_e2e_tasks=body.dev_e2e_tasks,
        smoke_tasks=body.smoke_tasks,
        stage_timeout_s=body.stage_timeout_s,
        sample_payload=body.sample_payload,
        dev_e2e_workflow=(body.dev_e2e_workflow.model_dump(by_alias=True) if body.dev_e2e_workflow else None),
    )
    rollout = await controller_of(request).begin(spec)
    return JSONResponse(rollout.view(), status_code=201)


async def _check_workflow(state: AppState, workflow: DevE2eWorkflow) -> None:
    """422 unless the Dev E2E workflow exists and plans with its parameters."""
    loc: list[str | int] = ["body", "dev_e2e_workflow"]
    try:
        catalog = Catalog.for_data_dir(state.data_dir)
        definition = await asyncio.to_thread(catalog.get, workflow.workflow_id)
        plan_workflow(definition, workflow.parameters, state.policies.get)
    except WorkflowNotFound as exc:
        raise ValidationFailed([field_error([*loc, "workflowId"], exc.message, exc.code)], code=exc.code) from None
    except InvalidWorkflow as exc:
        raise ValidationFailed([field_error(loc, exc.message, exc.code)], code=exc.code) from None


@endpoint(ok={200: "every rollout, newest first"}, errors=(Unavailable,))
async def list_rollouts(request: Request) -> JSONResponse:
    """Every rollout, newest first."""
    rollouts = await controller_of(request).list()
    return JSONResponse({"rollouts": [r.view() for r in reversed(rollouts)]})


@endpoint(path=RolloutPath, ok={200: "the rollout"}, errors=(RolloutNotFound, Unavailable))
async def get_rollout(request: Request, path: RolloutPath) -> JSONResponse:
    """One rollout: its stage, traffic split, samples and gate figures."""
    rollout = await controller_of(request).get(path.rollout_id)
    return JSONResponse(rollout.view())


async def _act(request: Request, action: str, rollout_id: str, body: ActionRequest) -> JSONResponse:
    controller = controller_of(request)
    if action == "promote":
        rollout = await controller.promote(rollout_id)
    elif action == "rollback":
        rollout = await controller.rollback(rollout_id, body.reason)
    else:
        rollout = await controller.pause(rollout_id)
    return JSONResponse(rollout.view())


_ACTION = {
    "path": RolloutPath,
    "body": ActionRequest,
    "body_required": False,
    "ok": {200: Success("the rollout after the action")},
    "errors": (RolloutNotFound, RolloutConflict, Unavailable),
}


@endpoint(**_ACTION)  # type: ignore[arg-type]
async def promote_rollout(request: Request, path: RolloutPath, body: ActionRequest) -> JSONResponse:
    """Promote the candidate to 100% now, skipping the remaining gates."""
    return await _act(request, "promote", path.rollout_id, body)


@endpoint(**_ACTION)  # type: ignore[arg-type]
async def rollback_rollout(request: Request, path: RolloutPath, body: ActionRequest) -> JSONResponse:
    """Roll back to the baseline (0% to the candidate)."""
    return await _act(request, "rollback", path.rollout_id, body)


@endpoint(**_ACTION)  # type: ignore[arg-type]
async def pause_rollout(request: Request, path: RolloutPath, body: ActionRequest) -> JSONResponse:
    """Pause: stop advancing stages; the traffic split stays as it is."""
    return await _act(request, "pause", path.rollout_id, body)


routes = [
    Route("/api/rollouts", start_rollout, methods=["POST"]),
    Route("/api/rollouts", list_rollouts, methods=["GET"]),
    Route("/api/rollouts/{rollout_id}", get_rollout, methods=["GET"]),
    Route("/api/rollouts/{rollout_id}/promote", promote_rollout, methods=["POST"]),
    Route("/api/rollouts/{rollout_id}/rollback", rollback_rollout, methods=["POST"]),
    Route("/api/rollouts/{rollout_id}/pause", pause_rollout, methods=["POST"]),
]
