"""Workflow definitions as data: the node types, typed parameters, and the catalog.

Node types: ``publish``, ``wait``, ``gate``, ``notify``, ``retry`` (around one of the first
three kinds), ``signal`` (wait for a named signal from outside), ``map`` (an inner
``publish`` or ``workflow`` node once per item) and ``workflow`` (a child run).

A definition is a JSON (or TOML) document::

    {"id": "indexing", "description": "...",
     "parameters": {"repo": {"type": "string", "required": true},
                    "webhook_url": {"type": "string", "default": null}},
     "defaults": {"assignment": {"timeout_ms": 60000}},
     "nodes": [{"id": "index", "type": "publish", "route": "indexing.index.0",
                "payload": {"repo": "${params.repo}"}}, ...]}

Built-in definitions ship in ``cogo/workflows/definitions/``; users add their own in
``<data-dir>/workflows/`` or the directories in ``COGO_WORKFLOWS_DIR`` (a user file with a
built-in's id replaces it). Nodes run in list order unless ``after`` says otherwise.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field

from cogo.config import WORKFLOWS_DIR_ENV, env_list, exponential_delay
from cogo.errors import InvalidParameters, WorkflowNotFound

log = logging.getLogger(__name__)

# node ids are read back in expressions as ``nodes.<id>``: identifiers only
NODE_ID = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
# workflow and run ids become subject tokens (``events.<type>.wf.<workflow>.<run>``)
WORKFLOW_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# run ids may carry ``:`` (``<schedule>:<tick>``, ``<parent>:<node>:<attempt>``); still no
# dots or wildcards, since they are subject tokens too
RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,254}$"
SIGNAL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$"
# a map's items are in its node_started event: bounded so the event stays small
MAX_MAP_ITEMS = 1000
ROUTE = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)+$"
NOTIFY_ROUTE = "notify.webhook.0"


class _Model(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParameterSpec(_Model):
    """One declared parameter: its type, whether it is required, its default."""

    type: Literal["string", "integer", "number", "boolean", "object", "array", "any"] = "any"
    required: bool = False
    default: Any = None
    description: str = ""
    enum: list[Any] | None = None


class BackoffSpec(_Model):
    """Exponential backoff between a Retry node's attempts."""

    initial_ms: int = Field(1000, ge=0)
    multiplier: float = Field(2.0, ge=1.0)
    max_ms: int = Field(60000, ge=0)

    def delay_ms(self, failed_attempts: int) -> int:
        return int(exponential_delay(self.initial_ms, failed_attempts, cap=self.max_ms, multiplier=self.multiplier))


class EventFilter(_Model):
    """Which event a Wait node waits for: type(s), optional exact fields, optional ``where``."""

    type: str | list[str]
    route: str | None = None
    task_id: str | None = None
    correlation_id: str | None = None
    where: str | None = None

    @pydantic.field_validator("type")
    @classmethod
    def _event_types(cls, value: str | list[str]) -> str | list[str]:
        # types become subject tokens (events.<type>.>): no dots or wildcards
        for name in [value] if isinstance(value, str) else value:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", name):
                raise ValueError(f"{name!r} is not an event type (letters, digits, _ and -)")
        if not value:
            raise ValueError("name at least one event type")
        return value

    @pydantic.field_validator("route")
    @classmethod
    def _route(cls, value: str | None) -> str | None:
        if value is not None and "${" not in value and not re.fullmatch(ROUTE, value):
            raise ValueError(f"{value!r} is not a route (<service>.<role>.<shard>)")
        return value

    @property
    def types(self) -> list[str]:
        return [self.type] if isinstance(self.type, str) else list(self.type)


class NodeBase(_Model):
    id: str | None = Field(None, pattern=NODE_ID)

    @property
    def node_id(self) -> str:
        """The id of a planned node (the planner refuses a node without one)."""
        if self.id is None:
            raise ValueError("a node of a plan has no id")
        return self.id

    # ids this node runs after; absent means "the node before it in the list"
    after: list[str] | None = None
    # a condition; false means the node is skipped (downstream nodes still run)
    when: str | None = None
    # run even when an upstream node failed (e.g. a Notify that reports the failure)
    always: bool = False
    description: str = ""


class PublishNode(NodeBase):
    """Send a task to a route through the executor dispatcher; wait for its terminal event."""

    type: Literal["publish"]
    route: str = Field(pattern=ROUTE)
    payload: dict[str, Any] = Field(default_factory=dict)
    assignment: dict[str, Any] = Field(default_factory=dict)
    wait: bool = True
    # filled by the planner: the assignment after route defaults and ceilings
    resolved_assignment: dict[str, Any] | None = None


class WaitNode(NodeBase):
    """Wait for an event matching a filter, or for a condition over the run, until a timeout."""

    type: Literal["wait"]
    event: EventFilter | None = None
    condition: str | None = None
    timeout_ms: int = Field(300000, gt=0, le=7 * 86400 * 1000)

    @pydantic.model_validator(mode="after")
    def _one_target(self) -> WaitNode:
        if (self.event is None) == (self.condition is None):
            raise ValueError("a wait node needs exactly one of `event` or `condition`")
        return self


class GateNode(NodeBase):
    """Assert a condition over the run; record the verdict; fail the run when it is false."""

    type: Literal["gate"]
    condition: str


class NotifyNode(NodeBase):
    """POST a JSON summary of the run to a webhook, through the notifier actor."""

    type: Literal["notify"]
    url: str | None = None
    message: str | None = None
    route: str = Field(NOTIFY_ROUTE, pattern=ROUTE)
    assignment: dict[str, Any] = Field(default_factory=dict)
    wait: bool = True
    resolved_assignment: dict[str, Any] | None = None


class SignalNode(NodeBase):
    """Wait for the signal ``name`` (``POST /api/orchestrator/signal``); its data is the result.

    A signal that arrives before the node starts is kept in the log (``workflow_signaled``)
    and taken when the node starts.
    """

    type: Literal["signal"]
    # what senders name; defaults to the node id
    name: str | None = Field(None, pattern=SIGNAL_NAME)
    timeout_ms: int = Field(7 * 86400 * 1000, gt=0, le=365 * 86400 * 1000)

    @property
    def signal_name(self) -> str:
        return self.name or self.id or ""


class WorkflowNode(NodeBase):
    """Run another workflow as a child run and wait for its end.

    The child's run id is ``<run>:<node>:<attempt>`` (``...:<index>`` inside a map); the
    result is ``{"runId", "workflowId", "status", "errorCode", "error"}`` and a child that
    does not succeed fails the node (``workflow.child_failed``). Cancelling the parent
    cancels its running children.
    """

    type: Literal["workflow"]
    workflowId: str  # noqa: N815 - the contract's spelling (docs/design.md §13)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @pydantic.field_validator("workflowId")
    @classmethod
    def _workflow_id(cls, value: str) -> str:
        if "${" not in value and not re.fullmatch(WORKFLOW_ID, value):
            raise ValueError(f"{value!r} is not a workflow id (nor a ${{...}} template)")
        return value


InnerNode = Annotated[PublishNode | WaitNode | NotifyNode, Field(discriminator="type")]
MapInner = Annotated[PublishNode | WorkflowNode, Field(discriminator="type")]


class MapNode(NodeBase):
    """Run ``node`` once per item of ``items``, at most ``max_parallel`` at once.

    ``${item}`` and ``${index}`` in the inner node read the current item. The result is the
    list of the inner results in item order. An item that fails fails the node (no new
    items start; those running finish first) unless ``allow_failures`` is set, in which
    case its slot in the result is ``null``.
    """

    type: Literal["map"]
    # a list, or a template that renders to one (checked at plan time when it can be)
    items: Any
    max_parallel: int = Field(10, ge=1, le=MAX_MAP_ITEMS)
    allow_failures: bool = False
    node: MapInner


class RetryNode(NodeBase):
    """Run the wrapped node again, with exponential backoff, until it succeeds."""

    type: Literal["retry"]
    node: InnerNode
    max_attempts: int = Field(3, ge=1, le=20)
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)
    # an attempt counts as failed unless this holds (``result`` is the attempt's result)
    until: str | None = None


Node = Annotated[
    PublishNode | WaitNode | GateNode | NotifyNode | RetryNode | SignalNode | MapNode | WorkflowNode,
    Field(discriminator="type"),
]
ExecNode = PublishNode | WaitNode | GateNode | NotifyNode | SignalNode | MapNode | WorkflowNode
node_adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Node)


class Defaults(_Model):
    # an object, or a template such as "${params.assignment}"
    assignment: dict[str, Any] | str = Field(default_factory=dict)


class WorkflowDefinition(_Model):
    """A workflow as written; nodes are checked once parameters are substituted."""

    id: str = Field(pattern=WORKFLOW_ID)
    description: str = ""
    version: int = 1
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    nodes: list[dict[str, Any]] = Field(min_length=1, max_length=200)


def executed(node: Any) -> ExecNode:
    """The node that actually runs: a Retry's wrapped node, or the node itself."""
    return node.node if isinstance(node, RetryNode) else node


# -- parameters --------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def resolve_parameters(definition: WorkflowDefinition, given: dict[str, Any]) -> dict[str, Any]:
    """Check ``given`` against the declared parameters and fill defaults."""
    errors: list[dict[str, Any]] = []
    resolved: dict[str, Any] = {}
    for name in given:
        if name not in definition.parameters:
            known = ", ".join(sorted(definition.parameters)) or "none"
            errors.append(_err(name, f"not a parameter of {definition.id!r} (known: {known})"))
    for name, spec in definition.parameters.items():
        if name not in given or given[name] is None:
            if spec.required:
                errors.append(_err(name, "field required", "missing"))
                continue
            resolved[name] = copy.deepcopy(spec.default)
            continue
        value = given[name]
        expected = _TYPES.get(spec.type)
        wrong_bool = isinstance(value, bool) and spec.type in ("integer", "number")
        if expected is not None and (not isinstance(value, expected) or wrong_bool):
            errors.append(_err(name, f"must be of type {spec.type}", "type_error"))
            continue
        if spec.enum is not None and value not in spec.enum:
            errors.append(_err(name, f"must be one of {spec.enum}", "enum"))
            continue
        resolved[name] = value
    if errors:
        raise InvalidParameters(
            f"invalid parameters for workflow {definition.id!r}: "
            + "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in errors),
            detail=errors,
        )
    return resolved


def _err(name: str, msg: str, type: str = "value_error") -> dict[str, Any]:
    return {"loc": ["parameters", name], "msg": msg, "type": type}


# -- the catalog -------------------------------------------------------------------------


class Catalog:
    """Workflow definitions by id: the built-ins, overlaid by user directories.

    Definitions are kept raw (dicts) so a broken user file is reported, with its fields,
    when someone plans it, not when the catalog loads.
    """

    def __init__(self, directories: Sequence[Path] = ()) -> None:
        self.directories = list(directories)

    @classmethod
    def for_data_dir(cls, data_dir: Path | None) -> Catalog:
        dirs = [Path(p) for p in env_list(WORKFLOWS_DIR_ENV, os.pathsep)]
        if data_dir is not None:
            dirs.insert(0, Path(data_dir) / "workflows")
        return cls(dirs)

    def load(self) -> dict[str, dict[str, Any]]:
        """Every definition by id (blocking file reads: call it from a thread)."""
        return self.load_all()[0]

    def load_all(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """Every definition by id, and the files that could not be read: ``{"path",
        "id", "error"}`` (blocking file reads: call it from a thread)."""
        found: dict[str, dict[str, Any]] = {}
        problems: list[dict[str, Any]] = []
        builtin = resources.files("cogo.workflows").joinpath("definitions")
        for entry in sorted(builtin.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".json"):
                _add(found, entry.name, json.loads(entry.read_text()))
        for directory in self.directories:
            for path in _definition_files(directory):
                try:
                    raw = _read(path)
                except (OSError, ValueError, UnicodeDecodeError) as exc:
                    log.error("skipping workflow definition %s: %s", path, exc)
                    problems.append(
                        {
                            "path": str(path),
                            "id": path.stem,
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    )
                    continue
                _add(found, path.name, raw)
        return found, problems

    def get(self, workflow_id: str) -> dict[str, Any]:
        """The raw definition with this id; WorkflowNotFound if there is none."""
        definitions = self.load()
        if workflow_id not in definitions:
            raise WorkflowNotFound(f"no workflow {workflow_id!r}; known: {', '.join(sorted(definitions))}")
        return definitions[workflow_id]


def _definition_files(directory: Path) -> Iterable[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in (".json", ".toml"))


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text()
    raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("a definition must be an object")
    return raw


def _add(found: dict[str, dict[str, Any]], filename: str, raw: Any) -> None:
    if isinstance(raw, dict):
        workflow_id = raw.get("id") or filename.rsplit(".", 1)[0]
        found[str(workflow_id)] = {**raw, "id": workflow_id}
