"""How tests start processes: ``spawn`` (every child process of the suite), ``cogo`` (a
``python -m cogo`` command) and the whole system, a real ``cogo up`` subprocess.

``await cogo_up(data_dir, config_path, *extra)`` starts it in its own session (so a fault
test can SIGKILL the group), logs to ``<data_dir>/up.log`` (a pipe nobody reads would stall
a chatty process), and returns once it has written its own ``endpoints.json``, without
blocking the event loop. ``stop`` ends it gracefully and returns its log; ``kill_system``
SIGKILLs it, its actors and its nats-server; ``stop_all`` ends several at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import IO, Any

import httpx
import nats.errors
from nats.js.client import JetStreamContext

from cogo.streams.connection import connect
from tests.helpers import wait_until

START_TIMEOUT_S = 60.0


def spawn(
    argv: list[str],
    *,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    inherit_env: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with ``env`` laid over this process's environment (or, with
    ``inherit_env=False``, with ``env`` alone).

    Its output goes to ``log`` (appended; ``stop`` returns its tail) or, without one, to a
    pipe that ``stop`` reads: a pipe nobody reads would stall a chatty long-lived process,
    so those get a log. ``new_session`` puts it in a process group of its own, so ``stop``
    and a fault test can kill it with everything it started."""
    out: IO[bytes] | int = subprocess.PIPE
    with contextlib.ExitStack() as stack:  # the child has its own copy of the log's fd
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(open(log, "ab"))
        proc = subprocess.Popen(
            argv,
            env={**(os.environ if inherit_env else {}), **(env or {})},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    proc.cogo_log = log  # type: ignore[attr-defined]
    proc.cogo_session = new_session  # type: ignore[attr-defined]
    return proc


def cogo(
    *args: str, env: dict[str, str] | None = None, log: Path | None = None, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """``python -m cogo ARGS`` (output on a pipe, or in ``log``: see ``spawn``)."""
    return spawn([sys.executable, "-m", "cogo", *args], env=env, log=log, **kwargs)


def cogo_run(
    kind: str, nats_url: str, *args: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m cogo run KIND --nats-url URL ARGS``: one actor process, logging to ``log``."""
    return cogo("run", kind, "--nats-url", nats_url, *args, env=env, log=log)


class CogoProcess:
    """``python -m cogo ARGS`` that a test kills and starts again: one process at a time,
    every start appending to ``log``; ``pids`` lists each start's process."""

    def __init__(self, *args: str, log: Path) -> None:
        self.args = list(args)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    def start(self) -> None:
        self.process = cogo(*self.args, log=self.log)
        self.pids.append(self.process.pid)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=10)


def start_up(
    data_dir: Path, config_path: Path | None = None, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``cogo up`` on ``data_dir`` (``--sync default``), not waiting for it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = ["up", "--data-dir", str(data_dir), "--sync", "default", *extra]
    if config_path is not None:
        args[1:1] = ["--config", str(config_path)]
    return cogo(*args, env=env, log=data_dir / "up.log", new_session=True)


async def wait_endpoints(
    endpoints: Path, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT_S
) -> dict[str, Any]:
    """The ``endpoints.json`` that ``proc`` (a ``cogo up``) wrote itself, once it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _endpoints_of(endpoints, proc.pid)
        if info is not None:
            return info
        if proc.poll() is not None:
            raise AssertionError(f"cogo up exited ({proc.returncode}):\n{log_of(proc)}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"cogo up did not write {endpoints}:\n{stop(proc)}")


async def cogo_up(
    data_dir: Path,
    config_path: Path | None = None,
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT_S,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``cogo up`` and wait until it serves: (the process, its endpoints.json)."""
    proc = start_up(data_dir, config_path, *extra, env=env)
    return proc, await wait_endpoints(data_dir / "endpoints.json", proc, timeout)


def _endpoints_of(endpoints: Path, pid: int) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        info: dict[str, Any] = json.loads(endpoints.read_text())
        if info.get("pid") == pid:  # not a file left behind by an earlier run
            return info
    return None


def log_of(proc: subprocess.Popen[bytes], tail: int = 6000) -> str:
    """The tail of ``proc``'s log (``""`` for a process whose output is on a pipe)."""
    path = getattr(proc, "cogo_log", None)
    if path is None:
        return ""
    return Path(path).read_text(errors="replace")[-tail:]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> str:
    """Signal ``proc`` (SIGTERM: drain), wait, and return its output (the tail of its log);
    SIGKILL (of its whole group, if it has a session of its own) if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
    logged = getattr(proc, "cogo_log", None) is not None
    out: bytes | None = None
    try:
        if logged or proc.stdout is None:
            proc.wait(timeout)
        else:
            out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if getattr(proc, "cogo_session", False):
                os.killpg(proc.pid, signal.SIGKILL)  # what it started too
            else:
                proc.kill()
        out, _ = proc.communicate()
    if logged:
        return log_of(proc)
    return (out or b"").decode(errors="replace")


async def terminate(proc: subprocess.Popen[bytes], timeout: float = 20) -> str:
    """``stop`` (SIGTERM, SIGKILL after ``timeout``) without blocking the event loop."""
    return await asyncio.to_thread(stop, proc, signal.SIGTERM, timeout)


async def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """``terminate`` every process at once."""
    await asyncio.gather(*(terminate(p, timeout) for p in procs))


def kill_system(proc: subprocess.Popen[bytes], data_dir: Path) -> None:
    """SIGKILL ``cogo up``, its actors and its nats-server (which runs in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    store = str(data_dir / "jetstream")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"nats-server" in a for a in argv[:1]) and store.encode() in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def cogo_up_blocking(*args: Any, **kwargs: Any) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``cogo_up`` for a synchronous fixture (no event loop runs there)."""
    return asyncio.run(cogo_up(*args, **kwargs))


@contextlib.asynccontextmanager
async def up_with_candidate(
    data_dir: Path, config_path: Path, candidate_env: dict[str, str] | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, JetStreamContext, dict[str, Any]]]:
    """``cogo up`` plus one ``echo --version v2`` worker (a rollout's candidate), once the
    candidate consumes; yields (an authorised HTTP client, a JetStream context, endpoints)."""
    proc, info = await cogo_up(data_dir, config_path)
    worker = None
    nc = None
    try:
        worker = cogo(
            "run",
            "echo",
            "--version",
            "v2",
            "--nats-url",
            info["nats_url"],
            "--config",
            str(config_path),
            env=candidate_env,
        )
        nc = await connect(info["nats_url"], "test")
        js = nc.jetstream()

        async def consumer_ready() -> bool:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                return bool(await js.consumer_info("TASKS", "echo-run-0-v2"))
            return False

        await wait_until(consumer_ready, 20, "the candidate's consumer echo-run-0-v2")
        headers = {"Authorization": f"Bearer {info['api_token']}"}
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers, timeout=20) as http:
            yield http, js, info
    finally:
        if nc is not None:
            await nc.close()
        if worker is not None:
            await asyncio.to_thread(stop, worker)  # before the server it is connected to
        await asyncio.to_thread(stop, proc)
