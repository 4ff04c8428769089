"""Running agents as processes: ``cogo run TARGET [--agent NAME] [--replicas N]``.

One process runs one agent instance. When a target names several agents, or ``--replicas``
asks for more than one, this process becomes their supervisor (``cogo.runtime.supervisor``):
one child per replica, each a ``cogo run <ref> --agent NAME`` that finds the app the same
way (the app directory rides along in ``PYTHONPATH``). SIGTERM / SIGINT drain: no new
fetches, in-flight handlers finish and are acked, then the connection closes.

Before it fetches, an agent declares its routes (``cogo.streams.registry``), so starting a
new app against a running system is all it takes to add its routes. Under ``--auth`` an
agent's user may not change streams: its routes were declared by ``cogo up``, and a new
version's consumer is asked of ``cogo up`` (``cogo.control.version.<user>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from cogo.config import Config, exponential_delay
from cogo.errors import CogoError, ConfigError
from cogo.runtime.loader import LoadedApp
from cogo.runtime.supervisor import Supervisor, spawn
from cogo.sdk.app import AgentSpec
from cogo.streams.connection import connect, install_stop_signals, nats_user
from cogo.streams.registry import declare
from cogo.streams.topology import CONTROL_VERSION

log = logging.getLogger(__name__)

STOP_DEADLINE_S = 25.0
# what a restarting server or a recovering JetStream answers (or does not) while it is away
BUS_AWAY = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.js.errors.ServiceUnavailableError,
    TimeoutError,
)


async def declare_agent(nc: NATS, config: Config, spec: AgentSpec, version: str | None) -> None:
    """Make the agent's routes exist before it fetches (see the module docstring)."""
    user = nats_user(nc)
    if user is None or user == "admin":
        for warning in await declare(nc.jetstream(), config, spec.declarations()):
            log.warning("%s", warning)
        return
    if version and spec.routes and spec.tasks:
        for route in spec.routes:
            await request_version(nc, user, route, version)


async def request_version(nc: NATS, user: str, route: str, version: str) -> None:
    """Ask ``cogo up`` (under ``--auth``) to make ``<route>.<version>``'s consumer and grant it."""
    body = json.dumps({"route": route, "version": version}).encode()
    try:
        reply = await nc.request(f"{CONTROL_VERSION}.{user}", body, timeout=15)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise ConfigError(
            f"cannot declare version {version!r} of {route!r} as user {user!r}: no `cogo up "
            f"--auth` answered ({type(exc).__name__}); versioned consumers under --auth are "
            "made by cogo up"
        ) from None
    answer = msgspec.json.decode(reply.data)
    if not answer.get("ok"):
        raise ConfigError(f"cogo up refused version {version!r} of {route!r}: {answer.get('error')}")


async def run_agent(
    spec: AgentSpec,
    nats_url: str,
    config: Config,
    *,
    concurrency: int | None = None,
    version: str | None = None,
    stop: asyncio.Event | None = None,
    data_dir: Path | None = None,
) -> None:
    """Run one agent until ``stop`` is set (or SIGTERM/SIGINT), then drain it."""
    stop = stop or asyncio.Event()
    nc = await connect(nats_url, f"cogo-{spec.app}-{spec.name}-{os.getpid()}")
    try:
        actor = await _start(nc, spec, config, stop, version=version, concurrency=concurrency, data_dir=data_dir)
        if actor is None:  # stopped before it could start
            return
        log.info("%s started (app %s)", getattr(actor, "name", spec.name), spec.app)
        await stop.wait()
        log.info("%s draining", spec.name)
        _exit_if_stuck(spec.name, STOP_DEADLINE_S)
        await actor.stop()
    finally:
        with contextlib.suppress(Exception):
            await nc.flush(timeout=5)
            await nc.close()


async def _start(nc: NATS, spec: AgentSpec, config: Config, stop: asyncio.Event, **options: Any) -> Any:
    """Declare the agent's routes and start it, again while the bus is not there yet.

    A server that restarts (or a JetStream still recovering its store) times out the
    declaring API calls; the agent waits for it instead of exiting, so a process started
    during an outage, or killed with it, does not need a supervisor to come back. Errors
    that are not about the bus being away (a bad config, a route conflict) end it."""
    from cogo.runtime.worker import build  # not at import: a dispatcher runs no agent

    failures = 0
    while True:
        actor = build(spec, nc, config, **options)
        try:
            if spec.routes:
                await declare_agent(nc, config, spec, options.get("version"))
            await actor.start()
            return actor
        except BUS_AWAY as exc:
            failures += 1
            log.warning(
                "%s: the bus did not answer while starting (%s: %s); retrying", spec.name, type(exc).__name__, exc
            )
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_DEADLINE_S):
                    await actor.stop(grace=0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(exponential_delay(0.2, failures, cap=5.0)):
                await stop.wait()
        if stop.is_set():
            return None


def _exit_if_stuck(name: str, seconds: float) -> None:
    """Bound shutdown: past ``seconds`` the process exits anyway.

    Nothing is lost by it: unacknowledged messages are redelivered and the projector's rows
    and checkpoint commit together. A drain that hangs (a worker thread that never returns
    blocks interpreter exit) must not keep a supervisor or an operator waiting forever.
    """

    def expire() -> None:
        log.error("%s: drain did not finish within %.0f s; exiting anyway", name, seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def run_agent_main(spec: AgentSpec, nats_url: str, config: Config, **kwargs: Any) -> int:
    """Process entry point for one agent instance."""

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_agent(spec, nats_url, config, stop=stop, **kwargs)

    _use_uvloop()
    _tune_gc()
    asyncio.run(main())
    return 0


def agent_args(
    target: str,
    agent: str,
    nats_url: str,
    *,
    config_path: Path | None = None,
    data_dir: Path | None = None,
    version: str | None = None,
    concurrency: int | None = None,
) -> list[str]:
    """The ``cogo run`` arguments that run one replica of ``agent`` of ``target``."""
    args = ["run", target, *(["--agent", agent] if agent != target else [])]
    args += ["--replicas", "1", "--nats-url", nats_url]
    if config_path is not None:
        args += ["--config", str(config_path)]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if version:
        args += ["--version", version]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    return args


def child_env(app_dirs: list[str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an agent process: the app directories first on its PYTHONPATH."""
    paths = [*app_dirs, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**(extra or {}), "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def run_processes(
    loaded: LoadedApp,
    specs: list[AgentSpec],
    replicas: int | None,
    nats_url: str,
    *,
    app_dir: str,
    **kwargs: Any,
) -> int:
    """Run ``replicas`` processes of each agent (its declared count when None); supervise them
    (a child that dies is started again) until SIGTERM/SIGINT, then drain them all."""
    target = loaded.ref if not _is_builtin(loaded) else None

    async def main() -> int:
        supervisor = Supervisor()
        env = child_env([app_dir])
        for spec in specs:
            for n in range(replicas or spec.replicas):
                args = agent_args(target or spec.name, spec.name, nats_url, **kwargs)
                supervisor.add(f"{spec.name}#{n}", functools.partial(spawn, args, env=env))
        supervisor.watch()
        stop = asyncio.Event()
        install_stop_signals(stop)
        await stop.wait()
        await supervisor.stop(grace=STOP_DEADLINE_S + 5)
        return supervisor.exit_code

    return asyncio.run(main())


def _is_builtin(loaded: LoadedApp) -> bool:
    from cogo.runtime.loader import BUILTIN_REF

    return loaded.ref == BUILTIN_REF


def check_can_run(specs: list[AgentSpec], version: str | None) -> None:
    """Refuse what can never run, before starting anything."""
    if version and any(not spec.tasks for spec in specs):
        names = ", ".join(spec.name for spec in specs if not spec.tasks)
        raise CogoError(f"--version applies to task workers only, not to {names}")


def _tune_gc() -> None:
    # An actor allocates dozens of short-lived objects per message (tasks, futures, Msgs).
    # At the default threshold (700) the collector ran every few messages and, every 100th
    # run, walked every object in the process: ~7% of a dispatcher's CPU when profiled.
    # Reference counting frees nearly all of it anyway; cycles are still collected.
    gc.freeze()  # modules and config loaded at startup are never garbage: skip them
    gc.set_threshold(50_000, 20, 100)


def _use_uvloop() -> None:
    # uvloop makes the per-message overhead of nats-py markedly smaller; optional
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
