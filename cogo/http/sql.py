"""``POST /api/sql {"sql": "SELECT ...", "max_rows"?, "timeout_s"?}``: read-only SQL.

Runs on the in-process projector's database through the sandbox
(``cogo.projections.sandbox``): ``{"columns": [...], "rows": [[...]], ...}``, or 400 with
``detail`` and a stable ``code`` (``sql.rejected``, ``sql.invalid``, ``sql.timeout``).
"""

from __future__ import annotations

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cogo.errors import ProjectionBusy, SqlInvalid, SqlRejected, SqlTimeout, Unavailable
from cogo.http.endpoint import endpoint
from cogo.http.metrics import projector_of
from cogo.http.schemas import Body, JsonInt
from cogo.projections import sandbox


class SqlRequest(Body):
    """The body of ``POST /api/sql``."""

    sql: str = pydantic.Field(min_length=1, max_length=sandbox.MAX_SQL_CHARS)
    max_rows: JsonInt = pydantic.Field(default=sandbox.DEFAULT_MAX_ROWS, ge=1, le=sandbox.MAX_ROWS)
    timeout_s: float = pydantic.Field(default=sandbox.DEFAULT_TIMEOUT_S, gt=0, le=sandbox.MAX_TIMEOUT_S)


@endpoint(
    body=SqlRequest,
    ok={200: "{columns, types, rows, row_count, truncated, truncated_by, elapsed_ms}"},
    errors=(SqlRejected, SqlInvalid, SqlTimeout, ProjectionBusy, Unavailable),
)
async def run_sql(request: Request, body: SqlRequest) -> JSONResponse:
    """Run one read-only query on the projections (sandboxed, time- and size-limited)."""
    projector = projector_of(request)
    max_bytes = projector.config.sql.max_result_bytes
    result = await projector.store.read(
        lambda cur: sandbox.run_query(
            cur, body.sql, timeout_s=body.timeout_s, max_rows=body.max_rows, max_bytes=max_bytes
        )
    )
    return JSONResponse(result.as_dict())


routes = [Route("/api/sql", run_sql, methods=["POST"])]
