"""``@endpoint``: what a handler takes and answers, declared once, validated and documented.

The pydantic models given here validate the request (a 422 with each field's ``loc`` when
it does not fit) and are the very schemas ``/openapi.json`` publishes (``cogo.http.openapi``),
so the document cannot drift from what is enforced. The statuses a route can answer are
its success statuses plus those of the errors it declares (``cogo.http.errors.STATUS``)
and those its inputs imply (a JSON body: 400/408/413/422; a query or path model: 422).

    @endpoint(body=TaskRequest, ok={202: "accepted"}, errors=(BusUnavailable,))
    async def submit_task(request: Request, body: TaskRequest) -> JSONResponse: ...
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import Response

from cogo.errors import BusUnavailable, CogoError, RequestInvalid
from cogo.http.jsonbody import parse_json

Handler = Callable[..., Awaitable[Response]]
JSON = "application/json"


@dataclass(frozen=True)
class Success:
    """A success response: its description, media type and (optionally) its body model."""

    description: str
    media_type: str = JSON
    model: type[pydantic.BaseModel] | None = None


@dataclass(frozen=True)
class Spec:
    """What ``@endpoint`` recorded about a handler."""

    body: type[pydantic.BaseModel] | None = None
    body_required: bool = True
    query: type[pydantic.BaseModel] | None = None
    path: type[pydantic.BaseModel] | None = None
    ok: dict[int, Success] = field(default_factory=dict)
    errors: tuple[type[CogoError], ...] = ()


def field_error(loc: list[str | int], msg: str, type: str = "value_error") -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type}


def validate(model: type[pydantic.BaseModel], data: Any, where: str = "body") -> Any:
    """``data`` as ``model``; RequestInvalid (422) with each field's path on failure."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise RequestInvalid(
            "the request does not fit the schema",
            detail=[
                field_error([where, *err["loc"]], err["msg"], err["type"])
                for err in exc.errors(include_url=False, include_context=False, include_input=False)
            ],
        ) from None


def endpoint(
    *,
    body: type[pydantic.BaseModel] | None = None,
    body_required: bool = True,
    query: type[pydantic.BaseModel] | None = None,
    path: type[pydantic.BaseModel] | None = None,
    ok: dict[int, str | Success] | None = None,
    errors: tuple[type[CogoError], ...] = (),
) -> Callable[[Handler], Handler]:
    """Validate ``body`` / ``query`` / ``path`` into keyword arguments; record them for OpenAPI."""
    spec = Spec(
        body=body,
        body_required=body_required,
        query=query,
        path=path,
        ok={
            status: value if isinstance(value, Success) else Success(value)
            for status, value in (ok or {200: "OK"}).items()
        },
        errors=errors,
    )

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(request: Request) -> Response:
            kwargs: dict[str, Any] = {}
            if path is not None:
                kwargs["path"] = validate(path, dict(request.path_params), "path")
            if query is not None:
                kwargs["query"] = validate(query, dict(request.query_params), "query")
            if body is not None:
                raw = await request.body()
                if raw.strip() or body_required:
                    kwargs["body"] = validate(body, parse_json(await request.body()))
                else:
                    kwargs["body"] = body()
            try:
                return await fn(request, **kwargs)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this request is being cancelled (client gone, shutdown)
                # a bus request's future cancelled under the handler: its connection was reset
                # (a server failing over). The bus, for now: 503, not a 500
                raise BusUnavailable("the bus connection was reset while the request waited") from None

        handler.__openapi__ = spec  # type: ignore[attr-defined]
        return handler

    return wrap


def spec_of(fn: Any) -> Spec | None:
    """The ``Spec`` of an ``@endpoint`` handler (None for any other endpoint)."""
    return getattr(fn, "__openapi__", None)
