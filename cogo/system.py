"""``cogo up``: the whole system on one machine.

Starts (or joins, with ``--nats-url``) a nats-server, creates the topology, seeds route
policies, supervises one child process per actor (restarting any that dies), runs the HTTP
facade and the in-process components (the projector, which owns the DuckDB file) and writes
``<data-dir>/endpoints.json``. SIGINT/SIGTERM drains: the facade stops taking requests,
actors finish in-flight work, then the server stops.

Start-up claims its ports first (the HTTP socket is bound and held before anything runs; a
taken NATS port is refused by name), and any failure on the way stops everything started
so far: no actor or server is left running by a ``cogo up`` that did not come up. Children
die with this process (``cogo.lifeline``), so one killed hard leaves nothing behind either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
import uvicorn

from cogo.actors import ACTORS, UP_ACTORS
from cogo.actors.runner import connect, install_stop_signals, spawn_actor
from cogo.config import Config, load_config
from cogo.errors import StartupError
from cogo.http.app import AppState, create_app
from cogo.secretfile import read_or_create
from cogo.streams import auth
from cogo.streams.cluster import LocalCluster
from cogo.streams.policies import PolicyStore, seed_policies
from cogo.streams.server import EmbeddedServer, ensure_port_free, free_port, listen_socket
from cogo.streams.topology import ensure_topology

log = logging.getLogger(__name__)


class Component(Protocol):
    """Something ``cogo up`` runs inside its own process (e.g. the projector)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def api_token(data_dir: Path) -> str:
    """``COGO_API_TOKEN``, or a token generated once into ``<data-dir>/api_token`` (0600)."""
    token = os.environ.get("COGO_API_TOKEN")
    if token:
        return token
    return read_or_create(data_dir / "api_token")


def write_endpoints(data_dir: Path, endpoints: dict[str, Any]) -> Path:
    path = data_dir / "endpoints.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(endpoints, fh, indent=2)
    os.replace(tmp, path)
    return path


def read_endpoints(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data_dir / "endpoints.json").read_text())  # type: ignore[no-any-return]
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class Child:
    """A supervised actor process."""

    name: str
    process: subprocess.Popen[bytes]
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)


class System:
    """Everything ``cogo up`` runs, in start order; ``stop`` undoes it in reverse."""

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
    ) -> None:
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
        self.http_port = http_port or free_port()
        self.sync = sync
        self.actor_names = actors if actors is not None else [a for a in UP_ACTORS if a in ACTORS]
        self.child_env = child_env or {}
        # least privilege: one NATS user per actor kind (see cogo/streams/auth.py)
        self.auth = auth
        self.passwords: dict[str, str] = {}
        self.children: list[Child] = []
        self.components: dict[str, Component] = {}
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
        self._http_socket = listen_socket(self.http_port, "HTTP", "--http-port")
        if not self.external_url and self.nats_port and not self.cluster > 1:
            ensure_port_free(self.nats_port, "NATS", "--nats-port")
        if not self.external_url:
            extra, creds = "", None
            if self.auth:
                self.passwords = auth.credentials(self.data_dir)
                extra = auth.accounts_config(self.config, self.passwords)
                creds = ("admin", self.passwords["admin"])
            if self.cluster > 1:
                self.server = LocalCluster(self.data_dir / "cluster", self.cluster, sync=self.sync)
            else:
                self.server = EmbeddedServer(
                    self.data_dir, self.nats_port, sync=self.sync, extra_config=extra,
                    credentials=creds,
                )  # fmt: skip
            self.server.start()
            await self.server.wait_ready()
        admin = {"user": "admin", "password": self.passwords["admin"]} if self.auth else {}
        self.nc = await connect(self.nats_url, "cogo-up", **admin)
        js = self.nc.jetstream()
        await ensure_topology(js, self.config)
        await seed_policies(js, self.config)
        self.policies = PolicyStore(js)
        await self.policies.start()
        for name in self.actor_names:
            self.children.append(Child(name, self._spawn(name)))
        self.state = AppState(
            nc=self.nc,
            config=self.config,
            policies=self.policies,
            data_dir=self.data_dir,
            api_token=api_token(self.data_dir),
            cors_origins=[
                o.strip() for o in os.environ.get("COGO_CORS_ORIGINS", "").split(",") if o.strip()
            ],
        )
        await self._start_components()
        self.state.components.update(self.components)
        self.state.components["system"] = self
        app = create_app(self.state, extra_routes=_extra_routes())
        self.http = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.http_port, log_level="warning", lifespan="off"
            )
        )
        self._http_task = asyncio.create_task(
            self.http.serve(sockets=[self._http_socket]), name="http"
        )
        while not self.http.started:
            if self._http_task.done():
                # uvicorn reports start-up errors by sys.exit(), which is no error to us
                with contextlib.suppress(SystemExit):
                    await self._http_task
                raise StartupError("the HTTP facade failed to start; see the log above")
            await asyncio.sleep(0.05)
        write_endpoints(
            self.data_dir,
            {
                "nats_url": self.nats_url,
                "http_url": f"http://127.0.0.1:{self.http_port}",
                "api_token": self.state.api_token,
                **(
                    {"nats_user": "client", "nats_password": self.passwords["client"]}
                    if self.auth
                    else {}
                ),
                "pid": os.getpid(),
            },
        )
        self._supervisor = asyncio.create_task(self._supervise(), name="supervisor")

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        return spawn_actor(
            name,
            self.nats_url,
            config_path=self.config_path,
            data_dir=self.data_dir,
            env={**self.child_env, **self._credentials_env(name)},
            log_file=self.data_dir / "logs" / f"{name}.log",
        )

    def _credentials_env(self, name: str) -> dict[str, str]:
        if not self.auth:
            return {}
        return {auth.USER_ENV: name, auth.PASSWORD_ENV: self.passwords[name]}

    async def _start_components(self) -> None:
        for name, factory in _component_factories().items():
            component = factory(self)
            await component.start()
            self.components[name] = component

    async def _supervise(self) -> None:
        # restart a crashed actor, with a growing pause if it keeps crashing
        while not self._stopping:
            for child in self.children:
                code = child.process.poll()
                if code is None or self._stopping:
                    continue
                quick = time.monotonic() - child.started_at < 10
                child.restarts = child.restarts + 1 if quick else 0
                delay = min(10.0, 0.2 * 2**child.restarts) if quick else 0.0
                log.warning("actor %s exited with %s; restarting in %.1fs", child.name, code, delay)
                await asyncio.sleep(delay)
                if not self._stopping:
                    child.process = self._spawn(child.name)
                    child.started_at = time.monotonic()
            await asyncio.sleep(0.2)

    async def stop(self, grace: float = 30.0) -> None:
        self._stopping = True
        with contextlib.suppress(Exception):
            self._supervisor.cancel()
        if hasattr(self, "http"):
            self.http.should_exit = True
            with contextlib.suppress(Exception, SystemExit):
                await asyncio.wait_for(self._http_task, 10)
        if hasattr(self, "_http_socket"):
            self._http_socket.close()
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.process.terminate()
        deadline = time.monotonic() + grace
        for child in self.children:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.to_thread(child.process.wait, remaining)
            except subprocess.TimeoutExpired:
                child.process.kill()
                await asyncio.to_thread(child.process.wait)
        for component in reversed(list(self.components.values())):
            with contextlib.suppress(Exception):
                await component.stop()
        if hasattr(self, "policies"):
            await self.policies.stop()
        if hasattr(self, "nc"):
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=5)
                await self.nc.close()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        with contextlib.suppress(OSError):
            endpoints = read_endpoints(self.data_dir)
            if endpoints and endpoints.get("pid") == os.getpid():
                (self.data_dir / "endpoints.json").unlink()


def _component_factories() -> dict[str, Any]:
    """In-process components, in start order (the rollout controller reads the projector's DuckDB)."""
    from cogo.projections.component import projector_component
    from cogo.workflows.rollout import rollout_component

    return {"projector": projector_component, "rollouts": rollout_component}


def _extra_routes() -> list[Any]:
    """Every HTTP route module beyond the core (tasks, health, openapi)."""
    from cogo.http import artifacts, dashboard, metrics, orchestrator, rollouts, sql

    modules = (metrics, sql, orchestrator, artifacts, rollouts, dashboard)
    return [route for module in modules for route in module.routes]


async def run_up(system: System) -> None:
    """Start the system, print where it is, run until SIGINT/SIGTERM, then drain."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        await system.start()
        endpoints = read_endpoints(system.data_dir) or {}
        print(
            f"cogo up: nats {endpoints.get('nats_url')}  http {endpoints.get('http_url')}",
            flush=True,
        )
        print(
            f"cogo up: endpoints in {system.data_dir / 'endpoints.json'}; Ctrl-C to stop",
            flush=True,
        )
        token = endpoints.get("api_token")
        print(
            f"cogo up: dashboard {endpoints.get('http_url')}/"
            + (f"#token={token}" if token else ""),
            flush=True,
        )
        await stop.wait()
        print("cogo up: draining...", flush=True)
    finally:
        await system.stop()
        print("cogo up: stopped", flush=True)
