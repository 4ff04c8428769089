"""A system's start-up, in one place: ``cogo up``, ``cogo.testing`` and ``cogo bench`` use it.

What they start differs only in the options they pass and the steps they take; each step
is done here one way:

1. ``start_bus``: an embedded ``nats-server`` on a loopback port (random unless
   ``nats_port``), a local cluster of them, or the server at ``nats_url``; then an admin
   connection.
2. ``declare``: the topology and the routes (Cogo's own and the apps'), retried while
   JetStream does not answer (a cluster electing leaders), as the actors retry.
3. ``start_projector``: the projector in this process (it owns the DuckDB file).
4. ``run_agent`` (in this process, on a connection of its own) or ``spawn`` (a
   ``cogo run`` process, to kill or to measure).
5. ``facade``: the HTTP facade as an ASGI app on this connection (served by uvicorn in
   ``cogo up``, through ``httpx.ASGITransport`` in the bench).

``stop`` undoes what was started, in reverse: processes, agents, the projector, the
policy view, the connections, the server.

    async with Startup(data_dir, config, sync="default") as boot:
        await boot.start_bus()
        await boot.declare([app])
        await boot.start_projector()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cogo.config import Config, exponential_delay
from cogo.errors import StartupError
from cogo.runtime.loader import declare_apps
from cogo.runtime.runner import BUS_AWAY, agent_args, child_env
from cogo.runtime.supervisor import spawn
from cogo.runtime.worker import build
from cogo.sdk.app import App
from cogo.streams.cluster import LocalCluster
from cogo.streams.connection import connect
from cogo.streams.policies import PolicyStore
from cogo.streams.registry import declare
from cogo.streams.routes import RouteDecl
from cogo.streams.server import EmbeddedServer, ensure_port_free
from cogo.streams.topology import ensure_topology

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from cogo.http.state import AppState
    from cogo.projections.projector import Projector
    from cogo.runtime.base import Actor
    from cogo.sdk.app import AgentSpec

log = logging.getLogger(__name__)


class Startup:
    """The parts of one system this process started; ``stop`` stops them in reverse.

    ``data_dir`` holds the server's store (or ``server_dir``), the agents' data and logs;
    ``config_path`` is what agent processes are started with.
    """

    def __init__(
        self,
        data_dir: Path,
        config: Config,
        *,
        config_path: Path | None = None,
        sync: str = "default",
        nats_url: str | None = None,
        nats_port: int | None = None,
        server_dir: Path | None = None,
        name: str = "cogo",
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.config_path = config_path
        self.sync = sync  # JetStream fsync: the server default, or "always" (as `cogo up`)
        self.external_url = nats_url
        self.nats_port = nats_port
        self.server_dir = server_dir or data_dir
        self.name = name
        self.server: EmbeddedServer | LocalCluster | None = None
        self.nc: NATS | None = None
        self.policies: PolicyStore | None = None
        self.projector: Projector | None = None
        self.agents: list[Actor] = []
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._conns: list[NATS] = []

    async def __aenter__(self) -> Startup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The bus: ``nats_url`` as given, or the server this start-up runs."""
        if self.external_url:
            return self.external_url
        if self.server is None:
            raise StartupError("the bus is not started: call start_bus() first")
        return self.server.url

    @property
    def js(self) -> JetStreamContext:
        return self.admin.jetstream()

    @property
    def admin(self) -> NATS:
        """The admin connection ``start_bus`` opened."""
        if self.nc is None:
            raise StartupError("the bus is not started: call start_bus() first")
        return self.nc

    # -- 1. the bus --------------------------------------------------------------------

    async def start_bus(
        self,
        *,
        cluster: int = 0,
        extra_config: str = "",
        credentials: tuple[str, str] | None = None,
    ) -> NATS:
        """Start the server (unless ``nats_url``), connect as admin (``credentials``)."""
        if not self.external_url:
            if self.nats_port and cluster <= 1:  # a taken port is a one-line error
                ensure_port_free(self.nats_port, "NATS", "--nats-port")
            if cluster > 1:
                self.server = LocalCluster(self.server_dir / "cluster", cluster, sync=self.sync)
            else:
                self.server = EmbeddedServer(
                    self.server_dir,
                    self.nats_port,
                    sync=self.sync,
                    extra_config=extra_config,
                    credentials=credentials,
                )
            nodes = self.server.nodes if isinstance(self.server, LocalCluster) else [self.server]
            for node in nodes:  # may wait for a server left behind to stop: not on the loop
                await asyncio.to_thread(node.claim_store)
            self.server.start()  # on this thread: the server dies with it (cogo.lifeline)
            await self.server.wait_ready()
        user = {"user": credentials[0], "password": credentials[1]} if credentials else {}
        self.nc = await self.connect(self.name, **user)
        return self.nc

    async def connect(self, name: str, **kwargs: Any) -> NATS:
        """Another connection to the bus, closed by ``stop``."""
        nc = await connect(self.url, name, **kwargs)
        self._conns.append(nc)
        return nc

    # -- 2. topology and routes --------------------------------------------------------

    async def declare(
        self,
        apps: Sequence[App] = (),
        *,
        decls: list[RouteDecl] | None = None,
        timeout: float = 120.0,
    ) -> None:
        """The topology and the routes of Cogo's app and ``apps`` (or exactly ``decls``);
        on a cluster still electing leaders, retried until JetStream answers."""
        deadline = time.monotonic() + timeout
        failures = 0
        while True:
            try:
                if decls is None:
                    await declare_apps(self.js, self.config, list(apps))
                else:
                    await ensure_topology(self.js, self.config)
                    await declare(self.js, self.config, decls)
                return
            except (*BUS_AWAY, nats.js.errors.APIError) as exc:
                if not isinstance(exc, BUS_AWAY) and not _placing(exc):
                    raise
                failures += 1
                if time.monotonic() > deadline:
                    raise StartupError(f"JetStream did not answer for {timeout:.0f} s: {exc}") from None
                log.warning(
                    "the bus did not answer while declaring (%s: %s); retrying",
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(exponential_delay(0.2, failures, cap=5.0))

    async def start_policies(self) -> PolicyStore:
        """The routes' policies as the facade and the dispatcher read them (a KV view)."""
        self.policies = PolicyStore(self.js)
        await self.policies.start()
        return self.policies

    # -- 3. the projector --------------------------------------------------------------

    async def start_projector(self, *, data_dir: Path | None = None, batch: int | None = None) -> Projector:
        """The projector in this process, on the admin connection."""
        from cogo.projections.projector import Projector

        projector = Projector(self.admin, self.config, data_dir=data_dir or self.data_dir, batch=batch)
        await projector.start()
        self.projector = projector
        return projector

    # -- 4. agents -----------------------------------------------------------------------

    async def run_agent(self, spec: AgentSpec) -> Actor:
        """Agent ``spec`` in this process, on a connection of its own."""
        nc = await self.connect(f"{self.name}-{spec.name}")
        actor = build(spec, nc, self.config, data_dir=self.data_dir)
        await actor.start()
        self.agents.append(actor)
        return actor

    def spawn(
        self,
        target: str,
        agent: str,
        label: str | None = None,
        *,
        env: dict[str, str] | None = None,
        import_roots: Sequence[str] = (),
        data_dir: Path | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[bytes]:
        """Start ``cogo run <target> --agent <agent>`` on this bus (a real process; its log
        in ``<data_dir>/logs/<label>.log``); ``kwargs`` go to ``agent_args``."""
        label = label or agent
        args = agent_args(
            target,
            agent,
            self.url,
            config_path=self.config_path,
            data_dir=data_dir or self.data_dir,
            **kwargs,
        )
        log_file = self.data_dir / "logs" / f"{label}.log"
        self.children[label] = spawn(args, env=child_env(list(import_roots), env), log_file=log_file)
        return self.children[label]

    async def stop_child(self, label: str, grace: float = 30.0) -> subprocess.Popen[bytes]:
        """SIGTERM one agent process and wait (SIGKILL after ``grace`` seconds)."""
        child = self.children.pop(label)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(child.wait, grace)
        except subprocess.TimeoutExpired:
            child.kill()
            await asyncio.to_thread(child.wait)
        return child

    # -- 5. the facade -------------------------------------------------------------------

    def facade(self, state: AppState, extra_routes: Sequence[Any] = ()) -> Starlette:
        """The HTTP facade's ASGI app over ``state`` (its projector set if one runs here)."""
        from cogo.http.app import create_app

        if state.projector is None:
            state.projector = self.projector
        return create_app(state, extra_routes=list(extra_routes))

    # -- stop ----------------------------------------------------------------------------

    async def stop(self, grace: float = 20.0) -> None:
        """Stop what was started, in reverse; errors of one part do not keep the rest up."""
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for child in self.children.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(child.wait, grace)
        await asyncio.gather(*(a.stop(grace=5) for a in self.agents), return_exceptions=True)
        self.agents.clear()
        if self.projector is not None:
            with contextlib.suppress(Exception):
                await self.projector.stop()
            self.projector = None
        if self.policies is not None:
            with contextlib.suppress(Exception):
                await self.policies.stop()
            self.policies = None
        for nc in reversed(self._conns):
            with contextlib.suppress(Exception):
                if nc.is_connected:  # what was published gets out; a lost bus is not waited for
                    await nc.flush(timeout=5)
                await nc.close()
        self._conns.clear()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)


def _placing(exc: Exception) -> bool:
    """A cluster still forming: a stream cannot be placed while its peers are offline
    (10005, "no suitable peers for placement"): as transient as a leader election."""
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code == 10005
