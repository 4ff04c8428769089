"""One nats-server per JetStream store directory.

Two servers on one store corrupt it: each restores and writes the same stream files. A
store is owned through an exclusive ``flock`` on ``<store>.lock``, taken by the process
that starts the server and inherited by the server itself (the file descriptor is passed
to it), so the lock holds while either lives: a ``cogo up`` that died hard leaves the lock
with its server until that server exits too (``cogo.lifeline`` has the kernel stop it).

On start a store can be found

- locked by a live owner (another ``cogo up``): refused with ``StoreInUse``;
- locked by a server whose owner is gone (it was left behind): that server is stopped;
- unlocked but with a server running on it (started by hand, or by a version without the
  lock): found through its pid file and stopped, before a second one is started.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from pathlib import Path

from cogo.errors import StoreInUse

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 20.0


class StoreLock:
    """An exclusive lock on a JetStream store directory; ``fd`` goes to the server process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, store_dir: Path, pid_file: Path) -> StoreLock:
        """Lock ``store_dir``, stopping a server left behind on it; StoreInUse if it is owned.

        Blocking (it may wait for a leftover server to exit): call it before the event loop
        has work, or from a thread.
        """
        path = store_dir.with_name(store_dir.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _lock(fd, store_dir, pid_file)
            # unlocked does not mean unused: a server started without the lock
            stop_leftover(pid_file, store_dir)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Give the lock up (the server, if it still runs, keeps its inherited copy)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _lock(fd: int, store_dir: Path, pid_file: Path) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    stopped = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        owner = _owner(fd)
        if owner is not None and alive(owner):
            raise StoreInUse(
                f"the JetStream store {store_dir} is in use by process {owner} "
                "(a running `cogo up`?): stop it, or use another --data-dir"
            )
        if not stopped:  # its owner is gone: what holds the lock is a server left behind
            stopped = stop_leftover(pid_file, store_dir)
        if time.monotonic() > deadline:
            raise StoreInUse(
                f"the JetStream store {store_dir} is still locked ({store_dir.name}.lock) by a "
                "process that is neither its owner nor a server left behind"
            )
        time.sleep(0.05)


def _owner(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(raw) if raw.isdigit() else None


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def server_on(pid_file: Path, store_dir: Path) -> int | None:
    """The pid in ``pid_file`` if that process is a nats-server on ``store_dir``."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if not alive(pid):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None  # cannot tell what it is: never signal a process we cannot identify
    store = os.fsencode(str(store_dir))
    is_server = any(os.path.basename(a).startswith(b"nats-server") for a in argv[:1])
    return pid if is_server and store in argv else None


def stop_leftover(pid_file: Path, store_dir: Path) -> bool:
    """Stop a nats-server left running on ``store_dir`` (SIGTERM, then SIGKILL); True if one was."""
    pid = server_on(pid_file, store_dir)
    if pid is None:
        return False
    log.warning("stopping nats-server %d left behind on %s", pid, store_dir)
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return True
            time.sleep(0.05)
    return True
