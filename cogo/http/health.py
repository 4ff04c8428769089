"""``GET /healthz``: is the facade up and connected to the bus."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.http.endpoint import Success, endpoint
from cogo.http.state import state_of


@endpoint(ok={200: "up and connected to NATS", 503: Success("up, but NATS is not connected")})
async def healthz(request: Request) -> JSONResponse:
    """Liveness: the facade is up and connected to NATS."""
    state = state_of(request)
    connected = state.nc.is_connected
    body = {"status": "ok" if connected else "degraded", "nats_connected": connected}
    return JSONResponse(body, status_code=200 if connected else 503)


routes = [Route("/healthz", healthz, methods=["GET"])]
