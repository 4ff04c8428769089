"""The one way tests start the whole system: a real ``cogo up`` subprocess.

``await cogo_up(data_dir, config_path, *extra)`` starts it in its own session (so a fault
test can SIGKILL the group), logs to ``<data_dir>/up.log`` (a pipe nobody reads would stall
a chatty process), and returns once it has written its own ``endpoints.json``, without
blocking the event loop. ``stop`` ends it gracefully and returns its log; ``kill_system``
SIGKILLs it, its actors and its nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0


def cogo(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """``python -m cogo ARGS`` with its output on a pipe (short-lived commands, workers)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cogo", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


def start_up(
    data_dir: Path, config_path: Path | None = None, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``cogo up`` on ``data_dir`` (``--sync default``), not waiting for it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = ["up", "--data-dir", str(data_dir), "--sync", "default", *extra]
    if config_path is not None:
        args[1:1] = ["--config", str(config_path)]
    log_path = data_dir / "up.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cogo", *args],
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.cogo_log = log_path  # type: ignore[attr-defined]
    return proc


async def cogo_up(
    data_dir: Path,
    config_path: Path | None = None,
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT_S,
) -> tuple[subprocess.Popen, dict[str, Any]]:
    """Start ``cogo up`` and wait until it serves: (the process, its endpoints.json)."""
    proc = start_up(data_dir, config_path, *extra, env=env)
    endpoints = data_dir / "endpoints.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(endpoints.read_text())
            if info.get("pid") == proc.pid:
                return proc, info
        if proc.poll() is not None:
            raise AssertionError(f"cogo up exited ({proc.returncode}):\n{log_of(proc)}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"cogo up did not write endpoints.json:\n{stop(proc)}")


def log_of(proc: subprocess.Popen, tail: int = 6000) -> str:
    path = getattr(proc, "cogo_log", None)
    if path is None:
        return ""
    return Path(path).read_text(errors="replace")[-tail:]


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> str:
    """Signal ``proc`` (SIGTERM: drain), wait, and return its output (a ``cogo up``'s log);
    SIGKILL of its group if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
    logged = getattr(proc, "cogo_log", None) is not None
    try:
        if logged:
            proc.wait(timeout)
        else:
            out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if logged:
                os.killpg(proc.pid, signal.SIGKILL)  # its actors too
            else:
                proc.kill()
        out, _ = proc.communicate()
    if logged:
        return log_of(proc)
    return (out or b"").decode(errors="replace")


def kill_system(proc: subprocess.Popen, data_dir: Path) -> None:
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


def cogo_up_blocking(*args: Any, **kwargs: Any) -> tuple[subprocess.Popen, dict[str, Any]]:
    """``cogo_up`` for a synchronous fixture (no event loop runs there)."""
    return asyncio.run(cogo_up(*args, **kwargs))
