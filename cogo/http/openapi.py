"""``GET /openapi.json``: the OpenAPI 3.1 document of the mounted routes, made per request.

Each ``@endpoint`` handler (``cogo.http.endpoint``) brings the pydantic models that
validate its body, query and path, its success responses and the errors it raises; their
statuses come from the one error table (``cogo.http.errors``). Inputs imply statuses too:
a JSON body can be refused with 400 (not JSON, too deep, a number out of range), 408 (too
slow), 413 (too large) and 422 (fields); a query or path model with 422. 401 is listed only
where the token middleware guards the route (``/api/*`` with a token set), and only then
the operation carries a security requirement.

Some values are only known at run time: a property marked ``x-cogo-enum: routes`` lists
the routes actors consume now, ``x-cogo-enum: workflows`` the workflow ids of the catalog;
a model marked ``x-cogo-workflow-parameters`` gets one ``oneOf`` branch per workflow, with
the parameters that workflow declares (``resolve_parameters`` checks the same).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import cogo
from cogo import errors as e
from cogo.http.endpoint import JSON, Spec, Success, endpoint, spec_of
from cogo.http.errors import ErrorBody, description_of, status_of

log = logging.getLogger(__name__)

_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")
ENUM_KEY = "x-cogo-enum"
PARAMETERS_KEY = "x-cogo-workflow-parameters"
_JSON_TYPES = {"string", "integer", "number", "boolean", "object", "array"}
REF = "#/components/schemas/{model}"
# what a JSON body can be refused with before the handler runs
BODY_ERRORS = (e.InvalidJson, e.JsonTooDeep, e.JsonNumberOutOfRange, e.RequestTimeout, e.BodyTooLarge, e.RequestInvalid)


def build_openapi(
    routes: list[Any],
    *,
    token: bool,
    enums: dict[str, list[str]] | None = None,
    workflows: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The document for ``routes``; ``token``: whether ``/api/*`` needs a bearer token."""
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    _add_model(schemas, ErrorBody)
    for route in routes:
        if not isinstance(route, Route) or route.path == "/openapi.json":
            continue
        path = _PARAM.sub(r"{\1}", route.path)
        spec = spec_of(route.endpoint) or Spec()
        summary = (route.endpoint.__doc__ or route.name or path).strip().splitlines()[0]
        guarded = token and path.startswith("/api/")
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(
                route, path, method, spec, summary, guarded, schemas
            )
    _fill_enums(schemas, enums or {})
    _fill_enums(paths, enums or {})  # query and path parameters are inline in the operations
    _fill_parameters(schemas, workflows or {})
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Cogo", "version": cogo.__version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if token:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _operation(
    route: Route,
    path: str,
    method: str,
    spec: Spec,
    summary: str,
    guarded: bool,
    schemas: dict[str, Any],
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": f"{method.lower()}_{route.name}", "summary": summary}
    op["parameters"] = _parameters(path, spec, schemas)
    raised: list[type[e.CogoError]] = list(spec.errors)
    if spec.body is not None:
        raised += BODY_ERRORS
        op["requestBody"] = {
            "required": spec.body_required,
            "content": {JSON: {"schema": _add_model(schemas, spec.body)}},
        }
    if spec.query is not None or spec.path is not None:
        raised.append(e.RequestInvalid)
    if guarded:
        raised.append(e.Unauthorized)
        op["security"] = [{"bearer": []}]
    if spec_of(route.endpoint) is None and _PARAM.search(route.path):
        raised.append(e.NotFound)  # an undeclared route with an id in its path
    responses: dict[str, Any] = {}
    for status, success in (spec.ok or {200: Success("OK")}).items():
        content: dict[str, Any] = {}
        if success.model is not None:
            content["schema"] = _add_model(schemas, success.model)
        responses[str(status)] = {"description": success.description, "content": {success.media_type: content}}
    for error in raised:
        code = str(status_of(error))
        entry = responses.setdefault(
            code,
            {
                "description": "",
                "content": {JSON: {"schema": {"$ref": REF.format(model="ErrorBody")}}},
            },
        )
        text = description_of(error)
        if text not in entry["description"]:
            entry["description"] = "; ".join(filter(None, [entry["description"], text]))
    op["responses"] = dict(sorted(responses.items()))
    return op


def _parameters(path: str, spec: Spec, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    path_props = _properties(spec.path, schemas) if spec.path is not None else {}
    for name in _PARAM.findall(path):
        schema = path_props.get(name, {"type": "string"})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if spec.query is not None:
        required = set(spec.query.model_json_schema().get("required", []))
        for name, schema in _properties(spec.query, schemas).items():
            param = {"name": name, "in": "query", "required": name in required, "schema": schema}
            if "description" in schema:
                param["description"] = schema["description"]
            params.append(param)
    return params


def _properties(model: type[pydantic.BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    return {k: _strip_title(v) for k, v in schema.get("properties", {}).items()}


def _strip_title(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "title"}


def _add_model(schemas: dict[str, Any], model: type[pydantic.BaseModel]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _fill_enums(node: Any, enums: dict[str, list[str]]) -> None:
    """Replace each ``x-cogo-enum`` marker with the live list it names."""
    if isinstance(node, dict):
        kind = node.pop(ENUM_KEY, None)
        if kind is not None and enums.get(kind):
            node["enum"] = enums[kind]
        for child in node.values():
            _fill_enums(child, enums)
    elif isinstance(node, list):
        for child in node:
            _fill_enums(child, enums)


def _fill_parameters(schemas: dict[str, Any], workflows: dict[str, dict[str, Any]]) -> None:
    for schema in schemas.values():
        marker = schema.pop(PARAMETERS_KEY, None)
        if marker is None or not workflows:
            continue
        # the parameters of some workflow of the catalog (which one: the id decides, 422)
        schema["properties"][marker["parameters"]] = {
            "anyOf": [parameters_schema(raw.get("parameters") or {}) for _, raw in sorted(workflows.items())],
            "description": "the parameters the workflow declares (GET /api/workflows)",
        }


def parameters_schema(declared: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a workflow's ``parameters``, from its declarations."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in declared.items():
        kind = spec.get("type", "any")
        prop: dict[str, Any] = {"type": kind} if kind in _JSON_TYPES else {}
        if spec.get("enum") is not None:
            prop["enum"] = spec["enum"]
        if spec.get("required"):
            required.append(name)
        elif prop:  # null stands for "not given" (the default applies)
            prop = {"anyOf": [prop, {"type": "null"}]}
        if spec.get("description"):
            prop["description"] = spec["description"]
        properties[name] = prop
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def live_facts(request: Request) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """What the document needs from the running system: declared routes, the workflows."""
    from cogo.http.state import state_of
    from cogo.workflows.definition import Catalog

    state = state_of(request)
    enums = {"routes": state.policies.routes()}
    workflows: dict[str, dict[str, Any]] = {}
    try:
        workflows = Catalog.for_data_dir(state.data_dir).load()
        enums["workflows"] = sorted(workflows)
    except (e.CogoError, OSError) as exc:
        # the document is still served, without the workflow enums: say why they are missing
        log.warning("openapi: workflow ids and parameters left out, the catalog failed: %r", exc)
    return enums, workflows


@endpoint(ok={200: "the OpenAPI 3.1 document of this facade"})
async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI document of this facade."""
    from cogo.http.state import state_of

    enums, workflows = await asyncio.to_thread(live_facts, request)  # the catalog reads files
    token = bool(state_of(request).api_token)
    document = build_openapi(request.app.routes, token=token, enums=enums, workflows=workflows)
    return JSONResponse(document)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
