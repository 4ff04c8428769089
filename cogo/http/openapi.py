"""``GET /openapi.json``: an OpenAPI 3.1 document generated from the mounted routes.

Handlers describe themselves with the ``documented`` decorator (a pydantic body model, query
parameters, status codes); every other route still appears, with its docstring as summary,
so the document always matches what is served.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import cogo

F = TypeVar("F", bound=Callable[..., Any])
_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def documented(
    *,
    body: type[pydantic.BaseModel] | None = None,
    query: dict[str, dict[str, Any]] | None = None,
    responses: dict[int, str] | None = None,
) -> Callable[[F], F]:
    """Attach OpenAPI facts to a handler: its body model, query parameters, responses."""

    def wrap(fn: F) -> F:
        fn.__openapi__ = {"body": body, "query": query or {}, "responses": responses or {}}  # type: ignore[attr-defined]
        return fn

    return wrap


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "detail": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "object", "properties": {
                        "loc": {"type": "array"}, "msg": {"type": "string"}, "type": {"type": "string"}}}},
                ]
            }
        },
    }  # fmt: skip


def build_openapi(routes: list[Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {"Error": _error_schema()}
    for route in routes:
        if not isinstance(route, Route) or route.path == "/openapi.json":
            continue
        path = _PARAM.sub(r"{\1}", route.path)
        meta = getattr(route.endpoint, "__openapi__", {})
        doc = inspect.getdoc(route.endpoint) or route.name or path
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            op: dict[str, Any] = {
                "operationId": f"{method.lower()}_{route.name}",
                "summary": doc.split("\n")[0],
                "parameters": [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in _PARAM.findall(route.path)
                ]
                + [
                    {
                        "name": name,
                        "in": "query",
                        "required": spec.get("required", False),
                        "schema": spec.get("schema", {"type": "string"}),
                    }
                    for name, spec in meta.get("query", {}).items()
                ],  # fmt: skip
                "responses": {
                    str(code): {"description": text}
                    for code, text in {200: "OK", **meta.get("responses", {})}.items()
                },
            }
            for code in ("400", "401", "413", "422"):
                if method in ("POST", "PUT") or code in ("401", "422"):
                    op["responses"].setdefault(code, {
                        "description": "error",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    })  # fmt: skip
            model = meta.get("body")
            if model is not None:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    components[name] = sub
                components[model.__name__] = schema
                op["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                }
            elif method in ("POST", "PUT"):
                op["requestBody"] = {
                    "content": {"application/json": {"schema": {"type": "object"}}}
                }
            if path.startswith("/api/"):
                op["security"] = [{"bearer": []}]
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Cogo", "version": cogo.__version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI document of this facade."""
    return JSONResponse(build_openapi(request.app.routes))


routes = [Route("/openapi.json", openapi, methods=["GET"])]
