"""The planner: definition + parameters -> a checked, resolved ``Plan``; nothing runs.

Planning substitutes ``${params.*}``, validates every node, fills each Publish/Notify's
``__assignment`` (workflow defaults, then the node's own keys) and resolves it against the
route policy, so a violation is reported before anything is sent. ``${nodes.*}`` templates
stay in the plan and are rendered when their node starts. Problems come back as
field-level errors (``InvalidWorkflow.detail``): every shape error of every node at once,
then, once all nodes have a valid shape, every ordering, expression, route and assignment
error at once. A map whose ``items`` is known at plan time and is not a list is an
``InvalidParameters`` (``workflow.parameters_invalid``).

Given the catalog's definitions, the planner also follows ``workflow`` nodes with a literal
``workflowId``: the child must exist, its literal parameters must fit it, and no chain of
children may lead back to a workflow already on the way (a cycle). Ids chosen at run time
(``${...}``) are checked when the child starts, against the run's ancestry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgspec
import pydantic
from pydantic import ConfigDict, Field

from cogo.config import RoutePolicy, deep_merge
from cogo.errors import (
    AssignmentError,
    CogoError,
    ExpressionError,
    InvalidParameters,
    InvalidWorkflow,
    PolicyViolation,
    UnknownRoute,
)
from cogo.streams.envelope import ASSIGNMENT_KEY, Assignment, decode_assignment
from cogo.streams.policies import resolve_assignment
from cogo.workflows.definition import (
    MAX_MAP_ITEMS,
    WORKFLOW_ID,
    GateNode,
    MapNode,
    Node,
    NotifyNode,
    PublishNode,
    RetryNode,
    SignalNode,
    WaitNode,
    WorkflowDefinition,
    WorkflowNode,
    executed,
    node_adapter,
    resolve_parameters,
)
from cogo.workflows.expressions import parse, render, template_expressions

# what conditions and templates may read while a run goes on
RUN_NAMES = frozenset({"params", "nodes", "run"})
UNTIL_NAMES = RUN_NAMES | {"result"}
WHERE_NAMES = RUN_NAMES | {"event"}
ITEM_NAMES = RUN_NAMES | {"item", "index"}
ITEMS_INVALID = "workflow.parameters_invalid"

PolicyLookup = Callable[[str], RoutePolicy]


class Plan(pydantic.BaseModel):
    """A workflow ready to run: parameters substituted, nodes checked, assignments resolved."""

    model_config = ConfigDict(extra="forbid")

    workflow_id: str = Field(pattern=WORKFLOW_ID)
    description: str = ""
    version: int = 1
    parameters: dict[str, Any] = Field(default_factory=dict)
    nodes: list[Node] = Field(min_length=1, max_length=200)

    def node(self, node_id: str) -> Any:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def routes(self) -> list[str]:
        routes = []
        for node in self.nodes:
            inner = executed(node)
            if isinstance(inner, MapNode):
                inner = inner.node
            if isinstance(inner, PublishNode | NotifyNode) and inner.route not in routes:
                routes.append(inner.route)
        return routes

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


Definitions = Mapping[str, dict[str, Any]]


def plan_workflow(
    definition: dict[str, Any],
    parameters: dict[str, Any] | None,
    policy_of: PolicyLookup,
    definitions: Definitions | None = None,
) -> Plan:
    """Plan a definition (raw, as loaded) with ``parameters``; InvalidWorkflow on any error.

    ``definitions`` (the catalog, by id) lets the planner check child workflows."""
    try:
        spec = WorkflowDefinition.model_validate(definition)
    except pydantic.ValidationError as exc:
        raise InvalidWorkflow("invalid workflow definition", detail=pydantic_errors(exc, ["definition"])) from None
    params = resolve_parameters(spec, parameters or {})
    context = {"params": params}
    errors: list[dict[str, Any]] = []
    defaults: Any = {}
    try:
        defaults = render(spec.defaults.assignment, context)
    except ExpressionError as exc:
        errors.append(_error(["definition", "defaults", "assignment"], exc))
    if not isinstance(defaults, dict):
        errors.append(_error(["definition", "defaults", "assignment"], "must render to an object"))
        defaults = {}
    nodes = []
    for i, raw in enumerate(spec.nodes):
        try:
            rendered = render(raw, context, only={"params"})
        except ExpressionError as exc:
            errors.append(_error(["definition", "nodes", i], exc))
            continue
        try:
            node = node_adapter.validate_python(rendered)
        except pydantic.ValidationError as exc:
            errors.extend(pydantic_errors(exc, ["definition", "nodes", i]))
            continue
        inner = executed(node)
        if isinstance(inner, MapNode):
            errors.extend(_check_items(inner.items, ["definition", "nodes", i, "items"]))
            inner = inner.node
        if isinstance(inner, PublishNode | NotifyNode):
            inner.assignment = deep_merge(defaults, inner.assignment)
        nodes.append(node)
    if errors:
        _raise(f"workflow {spec.id!r} cannot be planned", errors)
    plan = Plan(
        workflow_id=spec.id,
        description=spec.description,
        version=spec.version,
        parameters=params,
        nodes=nodes,
    )
    return check_plan(plan, policy_of, where=["definition"], definitions=definitions)


def _raise(message: str, errors: list[dict[str, Any]]) -> None:
    # a map's items that are known and wrong are the parameters' fault, said with its code
    if any(e["type"] == ITEMS_INVALID for e in errors):
        raise InvalidParameters(message, detail=errors)
    raise InvalidWorkflow(message, detail=errors)


def _check_items(items: Any, loc: list[Any]) -> Iterator[dict[str, Any]]:
    if isinstance(items, list):
        if len(items) > MAX_MAP_ITEMS:
            yield _error(loc, f"{len(items)} items; at most {MAX_MAP_ITEMS}", ITEMS_INVALID)
        return
    if isinstance(items, str) and "${" in items:
        return  # read from other nodes: checked when the map starts
    kind = {
        dict: "an object",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(items), type(items).__name__)
    yield _error(loc, f"must be a list (or a ${{...}} template giving one), got {kind}", ITEMS_INVALID)


def load_plan(raw: Any, policy_of: PolicyLookup, definitions: Definitions | None = None) -> Plan:
    """Validate a plan given back by a user (e.g. the output of ``/plan``) before it runs."""
    try:
        plan = Plan.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise InvalidWorkflow("invalid plan", detail=pydantic_errors(exc, ["plan"])) from None
    return check_plan(plan, policy_of, where=["plan"], definitions=definitions)


def check_plan(
    plan: Plan,
    policy_of: PolicyLookup,
    where: list[Any] | None = None,
    definitions: Definitions | None = None,
) -> Plan:
    """Check ids, ordering, expressions, routes, assignments and (given ``definitions``)
    child workflows; fill ``after`` and the resolved assignments. Raises InvalidWorkflow
    listing every problem."""
    where = where or ["plan"]
    link(plan)
    errors: list[dict[str, Any]] = []
    position: dict[str, int] = {}
    ancestors: dict[str, set[str]] = {}
    signals: dict[str, str] = {}
    for i, node in enumerate(plan.nodes):
        loc = [*where, "nodes", i]
        if not node.id:
            errors.append(_error([*loc, "id"], "field required", "missing"))
            continue
        if node.id in position:
            errors.append(_error([*loc, "id"], f"duplicate node id {node.id!r}"))
            continue
        upstream: set[str] = set()
        for name in node.after or ():
            if name not in position:
                errors.append(_error([*loc, "after"], f"{name!r} is not a node defined before {node.id!r}"))
                continue
            upstream |= {name, *ancestors[name]}
        position[node.id] = i
        ancestors[node.id] = upstream
        errors.extend(_check_node(node, loc, upstream, set(n.id or "" for n in plan.nodes)))
        if isinstance(node, MapNode):
            errors.extend(_check_items(node.items, [*loc, "items"]))
            errors.extend(_check_route(node.node, [*loc, "node"], policy_of, False))
        else:
            errors.extend(_check_route(executed(node), loc, policy_of, isinstance(node, RetryNode)))
        if isinstance(node, SignalNode):
            name = node.signal_name
            if name in signals:
                errors.append(
                    _error(
                        [*loc, "name"],
                        f"signal {name!r} is already awaited by node {signals[name]!r}; names must be unique",
                    )
                )
            signals[name] = node.id
        if definitions is not None:
            errors.extend(_check_children(plan.workflow_id, node, loc, definitions))
    if errors:
        _raise(f"workflow {plan.workflow_id!r} cannot be planned", errors)
    return plan


def _check_children(root: str, node: Any, loc: list[Any], definitions: Definitions) -> Iterator[dict[str, Any]]:
    """A literal child workflow must exist, fit its parameters and not lead back up."""
    inner, inner_loc = (node.node, [*loc, "node"]) if isinstance(node, MapNode) else (node, loc)
    if not isinstance(inner, WorkflowNode) or "${" in inner.workflowId:
        return
    child = inner.workflowId
    if child not in definitions:
        known = ", ".join(sorted(definitions))
        yield _error([*inner_loc, "workflowId"], f"no workflow {child!r}; known: {known}", "workflow.not_found")
        return
    cycle = _cycle([root], child, definitions)
    if cycle:
        yield _error(
            [*inner_loc, "workflowId"],
            f"a cycle: {' -> '.join(cycle)} (a workflow may not run itself)",
            "workflow.cycle",
        )
        return
    if not any("${" in text for text in _strings(inner.parameters)):
        try:
            resolve_parameters(WorkflowDefinition.model_validate(definitions[child]), inner.parameters)
        except InvalidParameters as exc:
            for e in exc.detail or []:
                yield _error([*inner_loc, *e["loc"]], f"{child}: {e['msg']}", e["type"])
        except pydantic.ValidationError:
            yield _error([*inner_loc, "workflowId"], f"the definition of {child!r} is invalid")


def _cycle(path: list[str], child: str, definitions: Definitions) -> list[str] | None:
    """The chain back to a workflow on ``path`` through literal child ids, if there is one."""
    if child in path:
        return [*path, child]
    if len(path) > 32:  # deeper than any sane nesting: report it as the cycle it likely is
        return [*path, child]
    for grandchild in _literal_children(definitions.get(child) or {}):
        found = _cycle([*path, child], grandchild, definitions)
        if found:
            return found
    return None


def _literal_children(raw: dict[str, Any]) -> Iterator[str]:
    """Literal ``workflowId``s of a raw definition's workflow nodes (and map inner nodes)."""
    for node in raw.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        inner = node.get("node") if node.get("type") == "map" else node
        if isinstance(inner, dict) and inner.get("type") == "workflow":
            workflow_id = inner.get("workflowId")
            if isinstance(workflow_id, str) and "${" not in workflow_id:
                yield workflow_id


def link(plan: Plan) -> Plan:
    """Fill each absent ``after`` with the node before it: a list of nodes is a sequence."""
    for i, node in enumerate(plan.nodes):
        if node.after is None:
            before = plan.nodes[i - 1].id if i else None
            node.after = [before] if before else []
    return plan


def _check_node(node: Any, loc: list[Any], upstream: set[str], every: set[str]) -> Iterator[dict[str, Any]]:
    yield from _check_expression(node.when, [*loc, "when"], RUN_NAMES, upstream)
    inner_loc = [*loc, "node"] if isinstance(node, RetryNode | MapNode) else loc
    inner = executed(node)
    names = RUN_NAMES
    if isinstance(inner, MapNode):
        yield from _check_templates(inner.items, [*loc, "items"], upstream)
        inner, names = inner.node, ITEM_NAMES
    if isinstance(node, RetryNode):
        yield from _check_expression(node.until, [*loc, "until"], UNTIL_NAMES, upstream | {node.node_id})
    if isinstance(inner, GateNode):
        yield from _check_expression(inner.condition, [*loc, "condition"], RUN_NAMES, upstream)
    elif isinstance(inner, WaitNode):
        # a condition is re-evaluated while other branches progress: any node may be read
        yield from _check_expression(inner.condition, [*inner_loc, "condition"], RUN_NAMES, every)
        if inner.event is not None:
            yield from _check_expression(inner.event.where, [*inner_loc, "event", "where"], WHERE_NAMES, every)
            yield from _check_templates(inner.event.model_dump(exclude={"where"}), [*inner_loc, "event"], upstream)
    elif isinstance(inner, PublishNode):
        yield from _check_templates(inner.payload, [*inner_loc, "payload"], upstream, names)
    elif isinstance(inner, WorkflowNode):
        yield from _check_templates(inner.workflowId, [*inner_loc, "workflowId"], upstream, names)
        yield from _check_templates(inner.parameters, [*inner_loc, "parameters"], upstream, names)
    elif isinstance(inner, NotifyNode):
        yield from _check_templates(inner.message, [*inner_loc, "message"], upstream)
        yield from _check_templates(inner.url, [*inner_loc, "url"], upstream)
        if inner.url is None and node.when is None:
            yield _error([*inner_loc, "url"], "a notify node needs `url` (or a `when` to skip it)")
        elif isinstance(inner.url, str) and "${" not in inner.url and not inner.url.startswith(("http://", "https://")):
            yield _error([*inner_loc, "url"], "must be an http:// or https:// URL")


def _check_expression(
    text: str | None, loc: list[Any], names: frozenset[str], readable: set[str]
) -> Iterator[dict[str, Any]]:
    if text is None:
        return
    try:
        expression = parse(text, names)
    except ExpressionError as exc:
        yield _error(loc, exc, exc.code)
        return
    for ref in sorted(expression.node_refs - readable):
        yield _error(loc, f"reads nodes.{ref}, which does not run before this node")


def _check_templates(
    value: Any, loc: list[Any], upstream: set[str], names: frozenset[str] = RUN_NAMES
) -> Iterator[dict[str, Any]]:
    for text in _strings(value):
        for source in template_expressions(text):
            yield from _check_expression(source, loc, names, upstream)


EXPRESSION_KEYS = ("when", "condition", "until", "where")


def expression_problems(raw: Any, loc: list[Any] | None = None) -> list[dict[str, Any]]:
    """Every condition (``when``, ``condition``, ``until``, ``where``) and ``${...}`` template
    of a raw definition that does not parse, without parameters: what ``cogo workflow defs``
    reports, so it never lists as loaded a file that planning refuses."""
    loc = loc or []
    errors: list[dict[str, Any]] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key in EXPRESSION_KEYS and isinstance(value, str):
                try:
                    parse(value)
                except ExpressionError as exc:
                    errors.append(_error([*loc, key], exc, exc.code))
            elif isinstance(value, str):
                for source in template_expressions(value):
                    try:
                        parse(source)
                    except ExpressionError as exc:
                        errors.append(_error([*loc, key], exc, exc.code))
            else:
                errors.extend(expression_problems(value, [*loc, key]))
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            errors.extend(expression_problems(item, [*loc, i]))
    return errors


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _check_route(inner: Any, loc: list[Any], policy_of: PolicyLookup, wrapped: bool) -> Iterator[dict[str, Any]]:
    if not isinstance(inner, PublishNode | NotifyNode):
        return
    loc = [*loc, "node"] if wrapped else loc
    try:
        policy = policy_of(inner.route)
    except UnknownRoute as exc:
        yield _error([*loc, "route"], exc, exc.code)
        return
    try:
        requested = decode_assignment({ASSIGNMENT_KEY: inner.assignment}) if inner.assignment else Assignment()
        resolved = resolve_assignment(requested, policy)
    except (AssignmentError, PolicyViolation) as exc:
        yield _error([*loc, "assignment"], exc, exc.code)
        return
    inner.resolved_assignment = msgspec.to_builtins(resolved)


def _error(loc: list[Any], msg: Any, type: str = "value_error") -> dict[str, Any]:
    text = msg.message if isinstance(msg, CogoError) else str(msg)
    return {"loc": loc, "msg": text, "type": type}


def pydantic_errors(exc: pydantic.ValidationError, prefix: list[Any]) -> list[dict[str, Any]]:
    """pydantic's errors as field errors, with ``prefix`` before each location."""
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
