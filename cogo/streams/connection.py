"""Connecting to the bus and being told to stop: what every Cogo process does first.

``connect`` joins every seed of a comma-separated URL, notices a server that stopped
answering within seconds (``PING_INTERVAL_S``) and reconnects forever, as the user of
``COGO_NATS_USER`` when the system runs ``--auth``; ``install_stop_signals`` turns SIGINT /
SIGTERM into an event a process drains on; ``actor_id`` names who did the work in events."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
from typing import Any

from nats.aio.client import Client as NATS

from cogo.config import NATS_CA_ENV, env
from cogo.streams.auth import PASSWORD_ENV, USER_ENV
from cogo.streams.permissions import inbox_prefix

log = logging.getLogger(__name__)

# A server that stops answering (its host cut off: the TCP connection neither closes nor
# errs) is left after this many unanswered pings this far apart, for another seed. nats-py's
# default, 2 pings 2 minutes apart, held every process connected to a lost host's server
# until the link came back: a 40 s cut of one host of three stalled all of them for ~49 s.
# Here a dead server is left after 3-4 s, about what a RAFT election takes anyway.
PING_INTERVAL_S = 1
MAX_OUTSTANDING_PINGS = 3


async def connect(url: str, name: str, *, user: str | None = None, password: str | None = None, **options: Any) -> NATS:
    """Connect to every seed in ``url`` (comma-separated) and reconnect forever.

    Credentials: ``user``/``password``, else ``COGO_NATS_USER``/``COGO_NATS_PASSWORD``; a user
    gets its private inbox prefix, the only reply subjects its permissions allow. With
    ``COGO_NATS_CA`` the connection is TLS, verifying the servers against that CA.
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]
    ca = env(NATS_CA_ENV)
    if ca and "tls" not in options:  # a cluster with TLS: trust its CA (cogo cluster config)
        options["tls"] = ssl.create_default_context(cafile=ca)
    user = user or env(USER_ENV)
    password = password or env(PASSWORD_ENV)
    options.setdefault("error_cb", _log_nats_error)
    if user:
        options.setdefault("inbox_prefix", inbox_prefix(user))
        options.update(user=user, password=password)
    options.setdefault("ping_interval", PING_INTERVAL_S)
    options.setdefault("max_outstanding_pings", MAX_OUTSTANDING_PINGS)
    # nats-py types reconnect_time_wait as int; it is a float in seconds
    settings: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        **options,
    }
    nc = Client()
    await nc.connect(**settings)
    return nc


class Client(NATS):
    """nats-py's client, leaving a dead connection at once when it reconnects.

    nats-py closes the old connection gracefully before it reconnects, and waits for that
    (``wait_closed``): a close that first sends what is still buffered, and with TLS a
    close_notify. When the server's host is cut off (no RST, no FIN) nothing is ever sent
    and the wait lasts until the link comes back: measured in namespaces, a client on a cut
    host's server stayed disconnected for the whole cut instead of moving to another seed.
    A connection being left is aborted instead (buffered bytes are dropped: nats-py keeps
    its own pending buffer and resends it on the new connection)."""

    async def _attempt_reconnect(self) -> None:
        writer = getattr(self._transport, "_io_writer", None)
        transport = getattr(writer, "transport", None)
        if transport is not None:
            transport.abort()
        await super()._attempt_reconnect()


async def _log_nats_error(exc: Exception) -> None:
    # one line, not nats-py's traceback per reconnect attempt
    log.warning("nats: %s: %s", type(exc).__name__, exc)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT / SIGTERM set ``stop`` (the process drains, then exits)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def nats_user(nc: NATS) -> str | None:
    """The user this connection authenticated as (None: no auth)."""
    return nc.options.get("user") or None


def actor_id(kind: str) -> str:
    """``kind@host:pid``: who did the work, for events and counters."""
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"
