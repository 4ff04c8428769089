"""Apps and agents: how a team declares the actors Cogo runs for it (docs/design.md §10).

    app = cogo.App("lexicon")

    @app.agent("lexicon.count.0", policy={"max_attempts": 3, "timeout_ms": 20000})
    async def count(ctx: cogo.TaskContext, doc: Text) -> dict:
        return {"words": len(doc.text.split())}

An ``App`` is a named set of ``AgentSpec``s; each spec says which routes the agent consumes,
how many processes (``replicas``) and handlers per process (``concurrency``) run it, and the
policy it declares for its route. Declaring runs nothing: ``cogo run lexicon.agents:app`` or
``cogo up --app lexicon.agents:app`` do, and the runtime around the handler (claims,
heartbeats, timeouts, the policy envelope, retries, events) is the same for every actor,
Cogo's own included: they are the app ``cogo.agents:app``, declared the same way.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from cogo.config import RoutePolicy, flow_problems
from cogo.errors import AgentNotFound, ConfigError, RouteConflict
from cogo.streams.routes import RouteDecl, check_route

H = TypeVar("H", bound=Callable[..., Any])
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"invalid {what} name {name!r}: 1-64 letters, digits, '-' or '_', starting with a letter")
    return name


def _check_policy(declared: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """A declared policy as a plain dict; unknown keys and wrong types are refused at once."""
    policy = dict(declared or {})
    try:
        # every key optional: this checks names and types
        converted = msgspec.convert(policy, RoutePolicy)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid policy of {where}: {exc}", detail=str(exc)) from exc
    problems = flow_problems(converted.flow)  # flow limits stand alone: check them now
    if problems:
        raise ConfigError(f"invalid policy of {where}: " + "; ".join(problems), detail=problems)
    return policy


@dataclass(frozen=True)
class AgentSpec:
    """One declared agent: what to run, on which routes, how many of it."""

    name: str
    app: str
    routes: tuple[str, ...]
    # the actor class, or "module:Class" imported on first use (`cogo run echo` should not
    # import DuckDB because the projector is declared next to it)
    target: type[Any] | str
    replicas: int = 1
    concurrency: int | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    # its routes take tasks through the dispatcher (a policy each); the dispatcher's and the
    # orchestrator's own inputs do not
    tasks: bool = True
    # `cogo up` starts it as processes of its own (the projector runs inside `cogo up`)
    up: bool = True
    handler: Callable[..., Any] | None = None
    doc: str = ""

    def declarations(self) -> list[RouteDecl]:
        return [RouteDecl(r, self.app, self.name, self.tasks, self.policy) for r in self.routes]


ROUTE_ATTR = "__cogo_route__"


def route_of(handler: Any) -> str | None:
    """The route an ``@app.agent`` function was declared on (None for anything else)."""
    route = getattr(handler, ROUTE_ATTR, None)
    return route if isinstance(route, str) else None


class App:
    """A named set of agents: the unit ``cogo run`` and ``cogo up --app`` load.

    app = cogo.App("lexicon")

    @app.agent("lexicon.count.0")
    async def count(ctx: cogo.TaskContext, doc: Text) -> dict: ...
    """

    def __init__(self, name: str, *, _builtin: bool = False) -> None:
        self.name = _check_name("app", name)
        self.agents: dict[str, AgentSpec] = {}
        self._builtin = _builtin

    def __repr__(self) -> str:
        return f"App({self.name!r}, agents={list(self.agents)})"

    def agent(
        self,
        route: str,
        *,
        name: str | None = None,
        replicas: int = 1,
        concurrency: int | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> Callable[[H], H]:
        """Declare an async handler ``(ctx: TaskContext, payload: T) -> R`` on ``route``.

        The payload (without ``__assignment``) is validated against ``T`` (a msgspec Struct,
        pydantic model, TypedDict, dataclass or ``dict``); the return value becomes
        ``execute_done``'s ``data.result``.
        """
        check_route(route, builtin=self._builtin)  # a bad route fails at the decorator line

        def register(fn: H) -> H:
            from cogo.sdk.agent import check_handler

            check_handler(fn, route)
            agent = name or fn.__name__
            self._register(
                AgentSpec(
                    name=_check_name("agent", agent),
                    app=self.name,
                    routes=(check_route(route, builtin=self._builtin),),
                    target=f"{fn.__module__}:{fn.__qualname__}",
                    replicas=_positive("replicas", replicas),
                    concurrency=_positive("concurrency", concurrency) if concurrency else None,
                    policy=_check_policy(policy, f"agent {agent!r} ({route})"),
                    handler=fn,
                    doc=(inspect.getdoc(fn) or "").split("\n")[0],
                )
            )
            # the function stands for its route: `await client.submit(count, Text(...))`
            setattr(fn, ROUTE_ATTR, route)  # noqa: B010 - a function has no declared slot
            return fn

        return register

    def add(
        self,
        worker: type[Any] | str,
        *,
        name: str | None = None,
        route: str | None = None,
        routes: Sequence[str] | None = None,
        replicas: int = 1,
        concurrency: int | None = None,
        policy: Mapping[str, Any] | None = None,
        tasks: bool = True,
        up: bool = True,
    ) -> AgentSpec:
        """Declare a class-based actor (a ``cogo.Worker`` subclass with a ``route``).

        ``worker`` may be ``"module:Class"``, imported only when the agent runs; then give
        ``name`` and ``route`` (or ``routes``) here.
        """
        if isinstance(worker, str):
            if name is None or (route is None and routes is None):
                raise ConfigError(f"app.add({worker!r}) needs name= and route= (or routes=)")
            agent, doc = name, ""
        else:
            agent = name or vars(worker).get("kind") or worker.__name__
            if route is None and routes is None:
                route = getattr(worker, "route", "") or None
            doc = (inspect.getdoc(worker) or "").split("\n")[0]
        declared = list(routes) if routes is not None else ([route] if route else [])
        if tasks and not declared:
            raise ConfigError(f"agent {agent!r}: no route (set `route = ...` or pass route=)")
        spec = AgentSpec(
            name=_check_name("agent", agent),
            app=self.name,
            routes=tuple(check_route(r, builtin=self._builtin) for r in declared),
            target=worker,
            replicas=_positive("replicas", replicas),
            concurrency=_positive("concurrency", concurrency) if concurrency else None,
            policy=_check_policy(policy, f"agent {agent!r}"),
            tasks=tasks,
            up=up,
            doc=doc,
        )
        self._register(spec)
        return spec

    def _register(self, spec: AgentSpec) -> None:
        if spec.name in self.agents:
            raise ConfigError(f"app {self.name!r} already has an agent named {spec.name!r}")
        for other in self.agents.values():
            shared = set(other.routes) & set(spec.routes)
            if shared:
                raise RouteConflict(
                    f"app {self.name!r}: agents {other.name!r} and {spec.name!r} both declare {sorted(shared)[0]!r}"
                )
        self.agents[spec.name] = spec

    def get(self, name: str) -> AgentSpec:
        """The agent called ``name``; AgentNotFound listing the others."""
        try:
            return self.agents[name]
        except KeyError:
            raise AgentNotFound(f"app {self.name!r} has no agent {name!r}; it has: {', '.join(self.agents)}") from None

    def declarations(self) -> list[RouteDecl]:
        """Every route this app declares, as ``cogo.streams.routes`` takes them."""
        return [decl for spec in self.agents.values() for decl in spec.declarations()]


def _positive(what: str, value: int) -> int:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a whole number >= 1, got {value!r}")
    return value


def check_apps(apps: Sequence[App]) -> None:
    """Refuse two apps of one name, or two apps declaring one route (naming both)."""
    names: dict[str, App] = {}
    owners: dict[str, tuple[str, str]] = {}
    for app in apps:
        if app.name in names and names[app.name] is not app:
            raise RouteConflict(f"two different apps are both named {app.name!r}")
        names[app.name] = app
        for decl in app.declarations():
            owner = owners.get(decl.route)
            if owner is not None and owner[0] != app.name:
                raise RouteConflict(
                    f"route {decl.route!r} is declared by app {owner[0]!r} (agent {owner[1]!r}) "
                    f"and by app {app.name!r} (agent {decl.agent!r})"
                )
            owners[decl.route] = (app.name, decl.agent)
