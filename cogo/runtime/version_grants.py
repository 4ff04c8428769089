"""Version grants under ``--auth``: a versioned worker (``cogo run ... --version v2``) asks
``cogo up`` for its route's versioned consumer and the permission to use it.

``cogo up`` owns the server's users: it checks that the asking user owns the route, bounds
how many versions one route may hold (retiring the oldest idle one, whose consumer is
deleted), declares the versioned consumer, records the grant in the data directory and
reloads the server's permissions, answering once the user can use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.msg import Msg

from cogo.errors import CogoError
from cogo.streams import auth as auth_module
from cogo.streams.connection import connect
from cogo.streams.registry import declare_version
from cogo.streams.routes import check_version, durable_name, versioned_route
from cogo.streams.server import EmbeddedServer
from cogo.streams.topology import TASKS

if TYPE_CHECKING:
    from cogo.runtime.system import System

log = logging.getLogger(__name__)


class VersionGrants:
    """Answers the version requests of one ``cogo up`` (``cogo.control.version.<user>``)."""

    def __init__(self, system: System) -> None:
        self.system = system

    async def on_request(self, msg: Msg) -> None:
        """A versioned worker under --auth asks for its consumer and the grant to use it."""
        user = msg.subject.rsplit(".", 1)[-1]
        try:
            body = json.loads(msg.data or b"{}")
            route, version = str(body["route"]), str(body["version"])
            if self.system.auth_plan.owner(route) != user:
                raise CogoError(f"user {user!r} does not own route {route!r}")
            versioned = versioned_route(route, check_version(version))
            if versioned not in self.system.auth_plan.versions.get(user, []):
                # bounded before anything is made: a refused grant leaves no consumer behind
                self.system.auth_plan.check_grant_rate(user)
                await self._retire_idle_version(user, route)
                self.system.auth_plan.check_version_grant(user, versioned)
            versioned = await declare_version(self.system.nc.jetstream(), self.system.config, route, version)
            if self.system.auth_plan.grant_version(user, versioned):
                auth_module.save_grants(self.system.data_dir, self.system.auth_plan.versions)
                await self._reload_permissions(user, versioned)
            answer: dict[str, Any] = {"ok": True, "route": versioned}
        except CogoError as exc:
            answer = {"ok": False, "error": str(exc), "code": exc.code}
        except (KeyError, ValueError) as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # the bus: the worker must hear why, not time out
            log.exception("version request of %s failed", user)
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        await msg.respond(json.dumps(answer).encode())

    async def _retire_idle_version(self, user: str, route: str) -> None:
        """At the bound of versions of ``route``, retire the oldest one nobody uses: no
        task waiting or in flight, no worker fetching. Its consumer is deleted."""
        held = self.system.auth_plan.versions_of(user, route)
        if len(held) < auth_module.MAX_VERSIONS_PER_ROUTE:
            return
        js = self.system.nc.jetstream()
        for old in held:
            try:
                info = await js.consumer_info(TASKS, durable_name(old))
            except nats.js.errors.NotFoundError:
                info = None
            if info is not None and (info.num_pending or info.num_ack_pending or info.num_waiting):
                continue
            if info is not None:
                await js.delete_consumer(TASKS, durable_name(old))
            self.system.auth_plan.revoke_version(user, old)
            auth_module.save_grants(self.system.data_dir, self.system.auth_plan.versions)
            log.info("retired the idle version %s of %s to grant a new one", old, user)
            return

    async def _reload_permissions(self, user: str, versioned: str) -> None:
        """Rewrite the server's users and reload it; return once ``user`` may use the grant."""
        assert isinstance(self.system.server, EmbeddedServer)
        self.system.server.extra_config = auth_module.accounts_config(self.system.auth_plan, self.system.passwords)
        await asyncio.to_thread(self.system.server.reload)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the reload is asynchronous in the server
            probe = None
            try:
                # while the server reloads, a new connection can be refused outright
                # ("authentication error": the account is being registered again)
                probe = await connect(
                    self.system.nats_url,
                    "cogo-up-probe",
                    user=user,
                    password=self.system.passwords[user],
                    allow_reconnect=False,
                    error_cb=_quiet,
                )
                await probe.jetstream().consumer_info(TASKS, durable_name(versioned), timeout=0.5)
                return
            except Exception:
                await asyncio.sleep(0.1)
            finally:
                if probe is not None:
                    with contextlib.suppress(Exception):
                        await probe.close()
        raise CogoError(f"the grant of {versioned!r} to {user!r} did not take effect within 10 s")


async def _quiet(exc: Exception) -> None:
    # the probe is refused until the reload has reached the server: expected, not news
    return None
