"""What the HTTP route modules share: the state of the facade and the helpers every handler
uses (``state_of``, request validation with field-level errors, ``require_route``).

Route modules import from here, never from ``cogo.http.app`` (which imports them all)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic
from nats.aio.client import Client as NATS
from starlette.requests import Request

from cogo.config import Config
from cogo.errors import RequestInvalid, UnknownRoute
from cogo.http.endpoint import field_error
from cogo.http.endpoint import validate as _validate
from cogo.http.jsonbody import MAX_DEPTH, parse_json
from cogo.streams.policies import PolicyStore
from cogo.streams.seal import Sealer

if TYPE_CHECKING:
    from cogo.http.tasks import Accepted
    from cogo.projections.projector import Projector
    from cogo.rollouts.controller import RolloutController
    from cogo.streams.capacity import Capacity

MAX_BODY_BYTES = 1024 * 1024
# the whole body must arrive within this, from the handler's first read (slow-body clients)
BODY_TIMEOUT_S = 30.0
M = TypeVar("M", bound=pydantic.BaseModel)

__all__ = [
    "AppState",
    "ValidationFailed",
    "field_error",
    "json_body",
    "require_route",
    "state_of",
    "validate",
    "MAX_BODY_BYTES",
    "BODY_TIMEOUT_S",
    "MAX_DEPTH",
]


@dataclass
class AppState:
    """What request handlers share: the bus connection, config, and optional components."""

    nc: NATS
    config: Config
    policies: PolicyStore
    data_dir: Path
    api_token: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout_s: float = BODY_TIMEOUT_S
    # origins allowed by CORS (COGO_CORS_ORIGINS, comma-separated); empty = CORS off
    cors_origins: list[str] = field(default_factory=list)
    # the components `cogo up` runs in the same process (None: not in this process)
    projector: Projector | None = None
    rollouts: RolloutController | None = None
    # under --auth: vouches for HTTP submitters, verifies outputs (cogo.streams.seal)
    sealer: Sealer | None = None
    # made on first use by the task routes
    accepted: Accepted | None = None
    capacity: Capacity | None = None

    @property
    def js(self) -> Any:
        return self.nc.jetstream()


class ValidationFailed(RequestInvalid):
    """Raised by handlers for a 422 with a field-level ``detail`` list (code ``request.invalid``
    unless a more precise one is given, e.g. ``route.unknown``)."""

    def __init__(self, detail: list[dict[str, Any]], status_code: int = 422, *, code: str | None = None) -> None:
        del status_code  # always 422: the status comes from cogo.http.errors
        super().__init__(detail[0]["msg"] if detail else "invalid request", detail=detail)
        if code is not None:
            self.code = code


def state_of(request: Request) -> AppState:
    return request.app.state.cogo  # type: ignore[no-any-return]


async def json_body(request: Request) -> Any:
    """The request's JSON body, within the depth and number limits (400s that say why)."""
    return parse_json(await request.body())


def require_route(state: AppState, route: str, loc: list[str | int] | None = None) -> None:
    """422 at ``loc`` unless an actor consumes ``route`` (its policy exists)."""
    try:
        state.policies.get(route)
    except UnknownRoute as exc:
        raise ValidationFailed([field_error(loc or ["body", "route"], str(exc), exc.code)], code=exc.code) from None


def validate(model: type[M], data: Any) -> M:
    """Validate ``data`` with a pydantic model; 422 with each field's path on failure."""
    return _validate(model, data)  # type: ignore[no-any-return]
