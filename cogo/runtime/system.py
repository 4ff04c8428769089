"""``cogo up``: the whole system on one machine, or one role of it on a host of a cluster.

Starts (or joins, with ``--nats-url``) a nats-server, creates the topology, declares the
routes of every app it runs (Cogo's own, installed ones, ``[apps] load``, ``--app``),
supervises each agent's processes (restarting any that dies), runs the HTTP facade and the
in-process components (the projector, which owns the DuckDB file) and writes
``<data-dir>/endpoints.json``. SIGINT/SIGTERM drains: the facade stops taking requests,
actors finish in-flight work, then the server stops.

On a cluster (``--nats-url``) each host runs a ``--role``: ``all``; ``facade`` (the HTTP
facade, bound to ``--http-host``, and the projector: a whole projection of its own, see
``cogo.projections.projector``); or ``workers`` (the agents' processes only).

Start-up claims its ports first (the HTTP socket is bound and held before anything runs; a
taken NATS port is refused by name), and any failure on the way stops everything started
so far: no actor or server is left running by a ``cogo up`` that did not come up. Children
die with this process (``cogo.lifeline``), so one killed hard leaves nothing behind either.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import uvicorn

from cogo.config import (
    API_TOKEN_ENV,
    CORS_ORIGINS_ENV,
    Config,
    env,
    env_list,
    load_config,
)
from cogo.endpoints import (
    Endpoints,
    endpoints_path,
    read_endpoints,
    remove_endpoints,
    write_endpoints,
)
from cogo.errors import CogoError, ConfigError, StartupError
from cogo.http.server import server_config
from cogo.http.state import AppState
from cogo.runtime.loader import BUILTIN_REF, LoadedApp, apps_for_up
from cogo.runtime.runner import agent_args, child_env
from cogo.runtime.startup import Startup
from cogo.runtime.supervisor import Supervisor, spawn
from cogo.runtime.version_grants import VersionGrants
from cogo.sdk.app import AgentSpec
from cogo.secretfile import read_or_create
from cogo.streams import auth as auth_module
from cogo.streams.cluster import LocalCluster
from cogo.streams.connection import install_stop_signals
from cogo.streams.seal import SEAL_KEY_ENV, Sealer
from cogo.streams.server import EmbeddedServer, ensure_port_free, free_port, listen_socket
from cogo.streams.topology import CONTROL_VERSION

if TYPE_CHECKING:
    from cogo.projections.projector import Projector
    from cogo.rollouts.controller import RolloutController

log = logging.getLogger(__name__)


class Component(Protocol):
    """Something ``cogo up`` runs inside its own process (e.g. the projector)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def api_token(data_dir: Path) -> str:
    """``COGO_API_TOKEN``, or a token generated once into ``<data-dir>/api_token`` (0600)."""
    token = env(API_TOKEN_ENV)
    if token:
        return token
    return read_or_create(data_dir / "api_token")


HTTP_PORT_FILE = "http_port"


def remembered_http_port(data_dir: Path) -> int | None:
    """The HTTP port the last ``cogo up`` of ``data_dir`` used, if it is free now."""
    try:
        port = int((data_dir / HTTP_PORT_FILE).read_text().strip())
        ensure_port_free(port, "HTTP", "--http-port")
    except (OSError, ValueError, OverflowError, CogoError):
        return None
    return port


# what a `cogo up` runs (`--role`); every role declares the topology and the routes first
ROLE_ALL = "all"  # everything: actors, projector, facade
ROLE_FACADE = "facade"  # the HTTP facade and the projector (and rollouts), no actors
ROLE_WORKERS = "workers"  # the actors only: no HTTP, no DuckDB
ROLES = (ROLE_ALL, ROLE_FACADE, ROLE_WORKERS)


class System:
    """Everything ``cogo up`` runs, in start order; ``stop`` undoes it in reverse.

    The bus, the routes and the facade start as every system starts them
    (``cogo.runtime.startup``); what is ``cogo up``'s own is around them: the ports, ``--auth``,
    supervised agent processes, the components and ``endpoints.json``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        config_path: Path | None = None,
        nats_url: str | None = None,
        nats_port: int | None = None,
        http_port: int | None = None,
        sync: str = "always",
        actors: list[str] | None = None,
        child_env: dict[str, str] | None = None,
        cluster: int = 0,
        auth: bool = False,
        apps: list[str] | None = None,
        app_dir: str | None = None,
        role: str = ROLE_ALL,
        http_host: str = "127.0.0.1",
    ) -> None:
        if role not in ROLES:
            raise ConfigError(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
        self.role = role
        self.http_host = http_host
        self.data_dir = data_dir.resolve()
        self.config_path = config_path
        self.config: Config = load_config(config_path, self.data_dir)
        self.external_url = nats_url
        self.server: EmbeddedServer | LocalCluster | None = None
        self.cluster = cluster
        if cluster > 1:  # streams and consumers at one replica per node
            bus = msgspec.structs.replace(self.config.bus, replicas=min(cluster, 5))
            self.config = msgspec.structs.replace(self.config, bus=bus)
        self.nats_port = nats_port
        # the port of the last start when it is free: bookmarks and scripts keep working
        self.http_port = http_port or remembered_http_port(self.data_dir) or free_port()
        self.sync = sync
        # every app it runs, loaded now: an app that does not import, or two apps declaring
        # one route, stop `cogo up` before anything starts
        self.apps: list[LoadedApp] = apps_for_up(self.config, apps or [])
        self.app_dir = app_dir or os.getcwd()
        self.decls = [decl for loaded in self.apps for decl in loaded.app.declarations()]
        self.actor_names = actors  # None: every agent with up=True (Cogo's own included)
        self.child_env = child_env or {}
        # least privilege: one NATS user per actor kind and per app (cogo/streams/auth.py)
        self.auth = auth
        self.auth_plan = auth_module.AuthPlan.from_decls(self.decls)
        self.passwords: dict[str, str] = {}
        self.sealer: Sealer | None = None  # under --auth (cogo.streams.seal)
        self.supervisor = Supervisor()
        # the bus, the topology and routes, the facade: the start-up every system shares
        self.startup = Startup(
            self.data_dir,
            self.config,
            config_path=config_path,
            sync=sync,
            nats_url=nats_url,
            nats_port=nats_port,
            name="cogo-up",
        )
        # in-process components, in start order (the rollout controller reads the projector's
        # DuckDB); stopped in reverse
        self.projector: Projector | None = None
        self.rollouts: RolloutController | None = None
        self.components: list[Component] = []
        self._stopping = False

    @property
    def nats_url(self) -> str:
        if self.external_url:
            return self.external_url
        assert self.server is not None
        return self.server.url

    async def start(self) -> None:
        """Start everything; on any failure stop what was started, then raise."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self._start()
        except BaseException:
            log.debug("start-up failed; stopping what was started")
            await self.stop(grace=10.0)
            raise

    async def _start(self) -> None:
        # claim the ports before starting anything: a taken one is a one-line error
        if self.role != ROLE_WORKERS:
            self._http_socket = listen_socket(self.http_port, "HTTP", "--http-port/--http-host", self.http_host)
        extra, creds = "", None
        if self.auth and not self.external_url:
            self.auth_plan.versions = auth_module.load_grants(self.data_dir)
            self.passwords = auth_module.credentials(self.data_dir, self.auth_plan.users)
            self.sealer = Sealer(auth_module.seal_key(self.data_dir))
            extra = auth_module.accounts_config(self.auth_plan, self.passwords)
        elif self.auth:  # a cluster whose users `cogo cluster config --auth` made
            self.passwords = auth_module.existing_credentials(self.data_dir, self.auth_plan.users)
        if self.auth:
            creds = ("admin", self.passwords["admin"])
        self.nc = await self.startup.start_bus(cluster=self.cluster, extra_config=extra, credentials=creds)
        self.server = self.startup.server
        await self.startup.declare(decls=self.decls)
        self.policies = await self.startup.start_policies()
        if self.auth and isinstance(self.server, EmbeddedServer):
            grants = VersionGrants(self)  # versioned workers ask for their route
            await self.nc.subscribe(f"{CONTROL_VERSION}.*", cb=grants.on_request)
        for loaded in self.apps if self.role != ROLE_FACADE else []:
            for spec in loaded.app.agents.values():
                if not self._runs(loaded, spec):
                    continue
                for n in range(spec.replicas):
                    label = spec.name if loaded.ref == BUILTIN_REF else f"{loaded.app.name}.{spec.name}"
                    label += f"-{n + 1}" if spec.replicas > 1 else ""
                    self.supervisor.add(label, functools.partial(self._spawn, loaded, spec, label))
        self.state = AppState(
            nc=self.nc,
            config=self.config,
            policies=self.policies,
            data_dir=self.data_dir,
            api_token=api_token(self.data_dir),
            sealer=self.sealer,
            cors_origins=env_list(CORS_ORIGINS_ENV),
        )
        if self.role == ROLE_WORKERS:
            write_endpoints(self.data_dir, Endpoints(nats_url=self.nats_url, role=self.role, pid=os.getpid()))
            self.supervisor.watch()
            return
        await self._start_components()
        self.state.projector, self.state.rollouts = self.projector, self.rollouts
        app = self.startup.facade(self.state, _extra_routes())
        self.http = uvicorn.Server(server_config(app, port=self.http_port))
        self._http_task = asyncio.create_task(self.http.serve(sockets=[self._http_socket]), name="http")
        while not self.http.started:
            if self._http_task.done():
                # uvicorn reports start-up errors by sys.exit(), which is no error to us
                with contextlib.suppress(SystemExit):
                    await self._http_task
                raise StartupError("the HTTP facade failed to start; see the log above")
            await asyncio.sleep(0.05)
        sealer = self.sealer if self.auth else None
        write_endpoints(
            self.data_dir,
            Endpoints(
                nats_url=self.nats_url,
                http_url=f"http://{_url_host(self.http_host)}:{self.http_port}",
                role=self.role,
                api_token=self.state.api_token,
                # readers connect as `client` and verify outputs with the key
                nats_user="client" if sealer else None,
                nats_password=self.passwords["client"] if sealer else None,
                output_key=sealer.output_key if sealer else None,
                pid=os.getpid(),
            ),
        )
        (self.data_dir / HTTP_PORT_FILE).write_text(f"{self.http_port}\n")
        self.supervisor.watch()

    def _runs(self, loaded: LoadedApp, spec: AgentSpec) -> bool:
        if not spec.up:
            return False
        if loaded.ref == BUILTIN_REF and self.actor_names is not None:
            return spec.name in self.actor_names
        return True

    def _spawn(self, loaded: LoadedApp, spec: AgentSpec, label: str) -> subprocess.Popen[bytes]:
        target = spec.name if loaded.ref == BUILTIN_REF else loaded.ref
        args = agent_args(
            target,
            spec.name,
            self.nats_url,
            config_path=self.config_path,
            data_dir=self.data_dir,
        )
        user = auth_module.user_of(loaded.app.name, spec.name)
        env = child_env([self.app_dir], {**self.child_env, **self._credentials_env(user)})
        return spawn(args, env=env, log_file=self.data_dir / "logs" / f"{label}.log")

    def _credentials_env(self, user: str) -> dict[str, str]:
        if not self.auth:
            return {}
        creds = {auth_module.USER_ENV: user, auth_module.PASSWORD_ENV: self.passwords[user]}
        if user in auth_module.SEAL_HOLDERS and self.sealer is not None:
            creds[SEAL_KEY_ENV] = self.sealer.key
        return creds

    async def _start_components(self) -> None:
        from cogo.projections.component import projector_component
        from cogo.rollouts.controller import rollout_component

        self.projector = projector_component(self)
        await self.projector.start()
        self.components.append(self.projector)
        self.rollouts = rollout_component(self)
        await self.rollouts.start()
        self.components.append(self.rollouts)

    async def stop(self, grace: float = 30.0) -> None:
        self._stopping = True
        if hasattr(self, "http"):
            self.http.should_exit = True
            with contextlib.suppress(Exception, SystemExit):
                await asyncio.wait_for(self._http_task, 10)
        if hasattr(self, "_http_socket"):
            self._http_socket.close()
        await self.supervisor.stop(grace)
        for component in reversed(self.components):
            with contextlib.suppress(Exception):
                await component.stop()
        await self.startup.stop()  # the policy view, the connection, the server
        with contextlib.suppress(OSError):
            remove_endpoints(self.data_dir)


def _url_host(host: str) -> str:
    """How a URL names ``host`` (a wildcard bind is reached on loopback from here)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _extra_routes() -> list[Any]:
    """Every HTTP route module beyond the core (tasks, health, openapi)."""
    from cogo.http import artifacts, dashboard, flow, metrics, orchestrator, sql
    from cogo.rollouts import http as rollouts

    modules = (metrics, sql, orchestrator, artifacts, rollouts, flow, dashboard)
    return [route for module in modules for route in module.routes]


async def run_up(system: System) -> None:
    """Start the system, print where it is, run until SIGINT/SIGTERM, then drain."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        await system.start()
        endpoints = read_endpoints(system.data_dir) or Endpoints(nats_url=system.nats_url)
        print(f"cogo up: nats {endpoints.nats_url}  http {endpoints.http_url}", flush=True)
        print(
            f"cogo up: endpoints in {endpoints_path(system.data_dir)}; Ctrl-C to stop",
            flush=True,
        )
        for loaded in system.apps:  # what runs: the app, its reference and its agents
            agents = [spec.name for spec in loaded.app.agents.values() if system._runs(loaded, spec)]
            print(
                f"cogo up: app {loaded.app.name} ({loaded.ref}): {', '.join(agents) or '-'}",
                flush=True,
            )
        token = endpoints.api_token
        if endpoints.http_url:
            print(
                f"cogo up: dashboard {endpoints.http_url}/" + (f"#token={token}" if token else ""),
                flush=True,
            )
        await stop.wait()
        print("cogo up: draining...", flush=True)
    finally:
        await system.stop()
        print("cogo up: stopped", flush=True)
