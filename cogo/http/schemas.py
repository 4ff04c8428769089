"""Models and schema pieces several route modules share (validation and the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pydantic

from cogo.streams.envelope import ASSIGNMENT_KEY, Assignment

# run-time enums filled in by cogo.http.openapi (the routes and workflows that exist now)
ROUTE_ENUM: dict[str, Any] = {"x-cogo-enum": "routes"}
WORKFLOW_ENUM: dict[str, Any] = {"x-cogo-enum": "workflows"}
# on a model with a workflow id and its parameters: one oneOf branch per catalog workflow
WORKFLOW_PARAMETERS: dict[str, Any] = {"x-cogo-workflow-parameters": {"id": "workflowId", "parameters": "parameters"}}
ROUTE_PATTERN = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+$"


class Body(pydantic.BaseModel):
    """A JSON request body: unknown fields are refused, and types are JSON's own (strict: no
    ``"5"`` or ``true`` for a number); aliases and field names are both accepted."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class Query(pydantic.BaseModel):
    """Query parameters: unknown ones are refused; values are text, converted to the type."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)


def _json_int(value: Any) -> Any:
    # JSON has one number type: 5.0 is the integer 5 (a JSON Schema "integer" says so too)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, pydantic.BeforeValidator(_json_int)]


class TaskAccepted(pydantic.BaseModel):
    """``POST /api/tasks`` answered 202."""

    task_id: str
    duplicate: bool = pydantic.Field(description="the task id was submitted before")
    stream_seq: int


class TaskPath(pydantic.BaseModel):
    """``/api/tasks/{task_id}``."""

    task_id: str = pydantic.Field(min_length=1, max_length=200)


def msgspec_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON schema of a msgspec Struct with its ``$defs`` inlined (one self-contained dict)."""
    schema = msgspec.json.schema(struct)
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)  # type: ignore[no-any-return]


def payload_schema() -> dict[str, Any]:
    """A task payload: any object; ``__assignment``, if there, as ``decode_assignment`` takes it."""
    return {
        "properties": {ASSIGNMENT_KEY: {"anyOf": [msgspec_schema(Assignment), {"type": "null"}]}},
        "additionalProperties": True,
    }
