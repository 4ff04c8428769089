"""Finding apps: ``module:attr`` references, ``[apps] load``, and the ``cogo.apps`` entry points.

What ``cogo run TARGET`` accepts, in the order it is tried:

- ``pkg.module:attr``: the ``cogo.App`` at ``attr`` of an importable module; the current
  directory (or ``--app-dir``) is put first on ``sys.path``, as uvicorn and celery do, so a
  module next to you imports without installing it;
- the name of an agent of Cogo's own app (``echo``, ``dispatcher``, ...);
- the name of an installed app: an entry point in the group ``cogo.apps``
  (``[project.entry-points."cogo.apps"] lexicon = "lexicon.agents:app"``).

``cogo up`` loads Cogo's own app, every installed app (unless ``[apps] entry_points =
false``), those listed in ``[apps] load`` and every ``--app``.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cogo.config import Config
from cogo.errors import AppNotFound, CogoError
from cogo.sdk.app import AgentSpec, App, check_apps

BUILTIN_REF = "cogo.agents:app"
ENTRY_POINT_GROUP = "cogo.apps"


@dataclass(frozen=True)
class LoadedApp:
    """An app and the reference that loads it again (in a child process)."""

    app: App
    ref: str


def add_app_dir(path: str | Path | None = None) -> str:
    """Put ``path`` (default: the current directory) first on ``sys.path``; return it."""
    where = str(Path(path or os.getcwd()).resolve())
    if where not in sys.path:
        sys.path.insert(0, where)
    return where


def load_ref(ref: str) -> App:
    """The ``cogo.App`` named by ``module:attr``; AppNotFound in one line otherwise."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise AppNotFound(f"{ref!r} is not module:attr (e.g. lexicon.agents:app)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppNotFound(
                f"cannot import {module_name!r} for {ref!r}: no module named {exc.name!r} "
                f"(looked in the current directory and sys.path; see --app-dir)"
            ) from None
        raise AppNotFound(f"importing {module_name!r} failed: {exc}") from exc
    except CogoError:  # e.g. a bad route at a decorator line: its own code and message
        raise
    except Exception as exc:  # the user's module raised while importing
        raise AppNotFound(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    value: object = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise AppNotFound(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(value, App):
        raise AppNotFound(f"{ref!r} is a {type(value).__name__}, not a cogo.App")
    return value


def entry_points() -> dict[str, str]:
    """Installed apps: entry-point name -> ``module:attr``."""
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


@functools.cache  # one app object: check_apps tells apps apart by identity
def builtin() -> LoadedApp:
    """Cogo's own: the runtime's components (``cogo.runtime.components``), then the agents
    Cogo ships (the app at ``BUILTIN_REF``), as one app named ``cogo``."""
    from cogo.runtime.components import components

    own = App(components.name, _builtin=True)
    own.agents.update(components.agents)
    # by reference, as a user's app: the runtime never imports the agents Cogo ships
    own.agents.update(load_ref(BUILTIN_REF).agents)
    return LoadedApp(own, BUILTIN_REF)


def resolve(target: str) -> LoadedApp:
    """What ``cogo run TARGET`` names (see the module docstring)."""
    if ":" in target:
        return LoadedApp(load_ref(target), target)
    own = builtin()
    if target in own.app.agents:
        return own
    installed = entry_points()
    if target in installed:
        return LoadedApp(load_ref(installed[target]), installed[target])
    known = ", ".join([*own.app.agents, *installed])
    raise AppNotFound(f"nothing called {target!r} to run: use module:attr, or one of: {known}")


def apps_for_up(config: Config, refs: list[str]) -> list[LoadedApp]:
    """Every app ``cogo up`` runs: Cogo's own, installed ones, ``[apps] load``, ``--app``."""
    wanted = list(config.apps.load) + list(refs)
    if config.apps.entry_points:
        wanted = list(entry_points().values()) + wanted
    loaded = [builtin()]
    for ref in dict.fromkeys(wanted):
        if ref == BUILTIN_REF:
            continue
        loaded.append(LoadedApp(load_ref(ref), ref))
    check_apps([item.app for item in loaded])  # one route, one app: refused before anything runs
    return loaded


def runnable(config: Config | None = None) -> list[str]:
    """Lines for ``cogo run --help``: what can run, and from where."""
    from cogo.runtime.components import components

    own = builtin()
    lines = ["Cogo's runtime components and agents (cogo run NAME):"]
    for name, spec in own.app.agents.items():
        what = "component" if name in components.agents else "agent"
        lines.append(f"  {name:<14} {what:<10} {_routes(spec)}")
    installed = entry_points()
    if installed:
        lines.append("installed apps (entry points `cogo.apps`):")
        lines += [f"  {name:<14} {ref}" for name, ref in installed.items()]
    if config is not None and config.apps.load:
        lines.append("apps in [apps] load (cogo.toml):")
        lines += [f"  {ref}" for ref in config.apps.load]
    lines.append("any app: cogo run pkg.module:app [--agent NAME]")
    return lines


def _routes(spec: AgentSpec) -> str:
    return ", ".join(spec.routes) if spec.routes else "(no route: in-process)"


async def declare_apps(js: Any, config: Config, apps: list[App] | None = None) -> list[str]:
    """Declare the routes of Cogo's own app and of ``apps`` (topology, consumers, policies)."""
    from cogo.streams.registry import declare
    from cogo.streams.topology import ensure_topology

    everything = [builtin().app, *(apps or [])]
    check_apps(everything)
    await ensure_topology(js, config)
    return await declare(js, config, [d for app in everything for d in app.declarations()])
