"""Running actors as processes: ``cogo run <actor> [--replicas N]``.

One process runs one actor instance; ``--replicas N`` starts N such processes, all fetching
from the same durable consumer. SIGTERM / SIGINT drain: no new fetches, in-flight handlers
finish and are acked, then the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from cogo.actors import actor_class
from cogo.config import Config
from cogo.lifeline import die_with_parent
from cogo.streams.auth import PASSWORD_ENV, USER_ENV, inbox_prefix

log = logging.getLogger(__name__)


async def connect(
    url: str, name: str, *, user: str | None = None, password: str | None = None, **options: Any
) -> NATS:
    """Connect to every seed in ``url`` (comma-separated) and reconnect forever.

    Credentials: ``user``/``password``, else ``COGO_NATS_USER``/``COGO_NATS_PASSWORD``; a user
    gets its private inbox prefix, the only reply subjects its permissions allow.
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]
    user = user or os.environ.get(USER_ENV) or None
    password = password or os.environ.get(PASSWORD_ENV) or None
    options.setdefault("error_cb", _log_nats_error)
    if user:
        options.setdefault("inbox_prefix", inbox_prefix(user))
        options.update(user=user, password=password)
    return await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        **options,
    )


async def _log_nats_error(exc: Exception) -> None:
    # one line, not nats-py's traceback per reconnect attempt
    log.warning("nats: %s: %s", type(exc).__name__, exc)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def run_actor(
    name: str,
    nats_url: str,
    config: Config,
    *,
    concurrency: int | None = None,
    version: str | None = None,
    stop: asyncio.Event | None = None,
    data_dir: Path | None = None,
) -> None:
    """Run one actor until ``stop`` is set (or SIGTERM/SIGINT), then drain it."""
    stop = stop or asyncio.Event()
    nc = await connect(nats_url, f"cogo-{name}-{os.getpid()}")
    kwargs: dict[str, Any] = {"concurrency": concurrency, "version": version}
    cls = actor_class(name)
    if getattr(cls, "needs_data_dir", False):
        kwargs["data_dir"] = data_dir
    actor = cls(nc, config, **kwargs)
    try:
        await actor.start()
        log.info("%s started", actor.name)
        await stop.wait()
        log.info("%s draining", actor.name)
        _exit_if_stuck(actor.name, STOP_DEADLINE_S)
        await actor.stop()
    finally:
        with contextlib.suppress(Exception):
            await nc.flush(timeout=5)
            await nc.close()


STOP_DEADLINE_S = 25.0


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


def run_actor_main(
    name: str,
    nats_url: str,
    config: Config,
    *,
    concurrency: int | None = None,
    version: str | None = None,
    data_dir: Path | None = None,
) -> int:
    """Process entry point for one actor instance."""

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_actor(
            name, nats_url, config, concurrency=concurrency, version=version, stop=stop,
            data_dir=data_dir,
        )  # fmt: skip

    _use_uvloop()
    _tune_gc()
    asyncio.run(main())
    return 0


def spawn_actor(
    name: str,
    nats_url: str,
    *,
    config_path: Path | None = None,
    data_dir: Path | None = None,
    version: str | None = None,
    concurrency: int | None = None,
    env: dict[str, str] | None = None,
    log_file: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cogo run <name>`` as a child process."""
    args = [sys.executable, "-m", "cogo", "run", name, "--nats-url", nats_url]
    if config_path is not None:
        args += ["--config", str(config_path)]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if version:
        args += ["--version", version]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    out: Any = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            args,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            preexec_fn=die_with_parent(),  # a supervisor killed hard leaves no actor behind
        )
    finally:
        if out is not None:
            out.close()


def run_replicas(name: str, replicas: int, nats_url: str, **kwargs: Any) -> int:
    """Run ``replicas`` processes of one actor; forward SIGTERM/SIGINT; wait for all."""
    children = [spawn_actor(name, nats_url, **kwargs) for _ in range(replicas)]

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)


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
