"""Supervising actor processes: ``cogo up``'s children and ``cogo run --replicas N``'s.

Each child is a ``cogo run`` process. One that exits while we are not stopping is started
again, at once if it had run for a while, after a growing pause (0.2 s doubling, at most
10 s) if it keeps dying at start, so a broken agent does not spin. Stopping sends SIGTERM
(the child drains: in-flight handlers finish and are acked), then SIGKILL after a grace.

Children are tied to the supervisor's life (``PR_SET_PDEATHSIG`` on Linux): if the
supervisor itself is killed, they get SIGTERM and drain, instead of living on against a
system that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogo.aio import cancel_and_wait
from cogo.config import exponential_delay
from cogo.lifeline import die_with_parent

log = logging.getLogger(__name__)

QUICK_EXIT_S = 10.0


def spawn(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    log_file: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m cogo <args>`` as a child tied to this process."""
    out: Any = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "cogo", *args],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            preexec_fn=die_with_parent(),  # prctl only: see cogo.lifeline
        )
    finally:
        if out is not None:
            out.close()


@dataclass
class Child:
    """A supervised process and how to start it again."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts children, restarts the ones that die, stops them all on ``stop``."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, start: Callable[[], subprocess.Popen[bytes]]) -> Child:
        child = Child(name, start, start())
        self.children.append(child)
        return child

    def watch(self) -> None:
        """Restart children that exit, from now until ``stop``."""
        self._task = asyncio.create_task(self._supervise(), name="supervisor")

    async def _supervise(self) -> None:
        while not self._stopping:
            for child in self.children:
                code = child.process.poll() if child.process else 0
                if code is None or self._stopping:
                    continue
                quick = time.monotonic() - child.started_at < QUICK_EXIT_S
                child.restarts = child.restarts + 1 if quick else 0
                delay = exponential_delay(0.2, child.restarts + 1, cap=10.0) if quick else 0.0
                log.warning("actor %s exited with %s; restarting in %.1fs", child.name, code, delay)
                child.process = None
                await asyncio.sleep(delay)
                if not self._stopping:
                    child.process = child.start()
                    child.started_at = time.monotonic()
            await asyncio.sleep(0.2)

    def signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signum)

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every child, wait up to ``grace`` for them to drain, then SIGKILL."""
        self._stopping = True
        await cancel_and_wait([self._task])
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            if child.process is None:
                continue
            remaining = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.to_thread(child.process.wait, remaining)
            except subprocess.TimeoutExpired:
                child.process.kill()
                await asyncio.to_thread(child.process.wait)

    @property
    def exit_code(self) -> int:
        codes = [c.process.returncode or 0 for c in self.children if c.process is not None]
        return max(codes, default=0)
