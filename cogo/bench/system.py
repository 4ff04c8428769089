"""The isolated system ``cogo bench`` measures: its server, its actor processes, its clock.

Starts a throwaway system in a temporary directory, as production runs it: its own
``nats-server`` (``--sync always|default``), the topology and policies, then the
dispatcher(s), echo worker(s), the orchestrator and the projector as separate ``cogo run``
processes. The parts (``cogo.bench.latency``, ``.facade``, ``.ingest``, ``.workflow``,
``.scaleout``, ``.history``, ``cogo.workflows.throughput``) take measurements on it; this module holds what they share:
spawning and stopping children, counting ``execute_done`` as it happens, waiting until the
projector's durable consumer acked a sequence (it acks a batch only after its transaction
committed, so its ack floor is "projected"), peak RSS and CPU of every process, and the
disk's pace (small write + ``fdatasync`` pairs per second, which bounds ``--sync always``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cogo.config import PROJECTOR_CONSUMER_ENV, Config, load_config
from cogo.errors import CogoError
from cogo.runtime.startup import Startup
from cogo.sdk.app import App
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID
from cogo.streams.publisher import Publisher
from cogo.streams.server import EmbeddedServer
from cogo.streams.topology import EVENTS, RESULTS, TASKS

PROJECTOR_CONSUMER = "projector"
ROUTE = "echo.run.0"
POLL_S = 0.05
PUBLISH_WINDOW = 2000  # submissions awaiting their stream ack, at most


@dataclass
class Options:
    """What one ``cogo bench`` run measures, and how hard."""

    tasks: int = 20_000
    rates: list[int] = field(default_factory=lambda: [500, 1000, 2000])
    duration: float = 5.0
    http_requests: int = 5_000
    http_concurrency: int = 8
    projector_events: int = 200_000
    projector_runs: int = 3
    dispatchers: int = 1
    echoes: int = 1
    # workflow step latency: runs of a chain of `step_nodes` publish nodes, one at a time
    step_runs: int = 5
    step_nodes: int = 10
    # workflow throughput (cogo.workflows.throughput): runs at once, per orchestrator count
    workflow_runs: int = 0
    orchestrators: list[int] = field(default_factory=lambda: [1, 2])
    workflow_repeats: int = 3
    # scale-out: sleep-bound tasks with 1, 2, 4 ... worker processes (empty: skipped)
    scale_workers: list[int] = field(default_factory=list)
    scale_tasks: int = 400  # per worker process: every step takes about as long
    scale_sleep_ms: float = 50.0
    scale_concurrency: int = 8
    # a decorated agent (``cogo.bench.agent``) against echo, this many tasks each (0: skipped)
    agent_tasks: int = 5_000
    # the decorated agent with OpenTelemetry off, then on (cogo.bench.traces; 0: skipped)
    tracing_tasks: int = 2_000
    # durable agents (cogo.bench.durable): this many tasks suspended at once (0: skipped)
    durable_tasks: int = 300
    # dispatcher cost with flow control off and on (cogo.bench.flow; 0: skipped)
    flow_tasks: int = 2_000
    flow_repeats: int = 3
    # through cogo.Client (cogo.bench.client): tasks awaited, this many at once (0: skipped)
    client_tasks: int = 2_000
    client_in_flight: int = 200
    # ... a task of client_steps journaled steps, this many times one at a time (0: skipped)
    client_step_runs: int = 50
    client_steps: int = 20
    # ... an echo worker SIGKILLed mid-task, this many times (0: skipped)
    kill_repeats: int = 3
    # dispatcher cost without and with the seal key of --auth (cogo.bench.seal; 0: skipped)
    seal_tasks: int = 0
    seal_repeats: int = 3
    # dashboard / latency API / /metrics at this many synthetic events (0: skipped)
    history: list[int] = field(default_factory=list)
    history_requests: int = 7
    sync: str = "always"
    config_path: Path | None = None
    timeout: float = 300.0
    keep: Path | None = None


class _Done(msgspec.Struct):
    task_id: str = ""


_done_decoder = msgspec.json.Decoder(_Done)


class Progress:
    """A rich progress bar on stderr, or nothing (``--json``)."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()

    def task(self, description: str, total: int) -> Callable[[int, str], None]:
        bar = self._bar
        if bar is None:
            return _no_progress
        tid: Any = bar.add_task(description, total=total, note="")

        def update(done: int, note: str = "") -> None:
            bar.update(tid, completed=done, note=note)

        return update

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def fsync_rate(directory: Path, seconds: float = 1.0) -> float:
    """Small write + ``fdatasync`` pairs per second, one at a time, in ``directory``.

    With ``sync_interval: always`` every message the server stores or removes costs one,
    so this bounds ``always`` throughput (the bench reports it next to the figures).
    """
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        count, began = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - began) < seconds:
            os.write(fd, b"x" * 512)
            os.fdatasync(fd)
            count += 1
        return count / elapsed
    finally:
        os.close(fd)
        path.unlink()


def peak_rss_mb(pid: int) -> float:
    """The high-water mark of a live process's resident memory (``VmHWM``), in MB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        # the command name may hold spaces: fields are counted after its closing paren
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[index]


def task_body(task_id: str, payload: bytes = b"{}", route: str = ROUTE) -> bytes:
    """An echo task; empty by default: the cost measured is the bus's, not the worker's."""
    return b'{"task_id":"%s","route":"%s","payload":%s}' % (task_id.encode(), route.encode(), payload)


class Bench:
    """One isolated system and the measurements taken on it."""

    def __init__(self, options: Options, work_dir: Path, progress: Progress, apps: Sequence[App] = ()) -> None:
        self.o = options
        self.apps = apps
        self.dir = work_dir
        self.fsync_per_s = 0.0
        self.progress = progress
        self.config: Config = load_config(options.config_path)
        # `cogo up`'s start-up with the bench's options: its own server in `nats/`, every
        # agent (the projector too) a `cogo run` process on `data/`, no facade
        self.startup = Startup(
            work_dir / "data",
            self.config,
            config_path=options.config_path,
            sync=options.sync,
            server_dir=work_dir / "nats",
            name="cogo-bench",
        )
        self.rss: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.done_count = 0
        self._run = 0

    # -- the system --------------------------------------------------------------------

    async def start(self) -> None:
        # before anything else runs: what this disk allows is what `always` can reach
        self.fsync_per_s = await asyncio.to_thread(fsync_rate, self.dir)
        self.nc: NATS = await self.startup.start_bus()
        self.js: JetStreamContext = self.nc.jetstream()
        # the actors' publisher: the bench's own CPU per task stays small
        self.publisher = Publisher(self.nc)
        await self.publisher.start()
        # the bench's own apps too (its decorated agent), as `cogo up --app` declares them
        await self.startup.declare(self.apps)
        self._done_sub = await self.nc.subscribe(
            f"events.execute_done.{ROUTE}", cb=self.on_done, pending_msgs_limit=1_000_000
        )
        self.spawn("projector", env={PROJECTOR_CONSUMER_ENV: PROJECTOR_CONSUMER})
        for i in range(self.o.dispatchers):
            self.spawn("dispatcher", f"dispatcher-{i + 1}")
        for i in range(self.o.echoes):
            self.spawn("echo", f"echo-{i + 1}")
        # warm up: the first tasks also prove every process is consuming
        await self.run_tasks(min(200, self.o.tasks), "warm-up", timeout=60)

    @property
    def url(self) -> str:
        """The bench's nats-server."""
        return self.startup.url

    @property
    def children(self) -> dict[str, subprocess.Popen[bytes]]:
        """The system's processes, by label."""
        return self.startup.children

    def spawn(
        self,
        actor: str,
        label: str | None = None,
        *,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        concurrency: int | None = None,
        target: str | None = None,
    ) -> None:
        """Start agent ``actor`` (of Cogo's app, or of the app ``target``) as ``cogo run``."""
        self.startup.spawn(target or actor, actor, label, data_dir=data_dir, env=env, concurrency=concurrency)

    async def stop_child(self, label: str) -> None:
        self.rss[label] = peak_rss_mb(self.children[label].pid)
        await self.startup.stop_child(label)

    async def stop(self) -> None:
        for label in list(self.children):
            await self.stop_child(label)
        if hasattr(self, "publisher"):
            with contextlib.suppress(Exception):
                await self.publisher.stop()
        server = self.startup.server
        if isinstance(server, EmbeddedServer) and server.process is not None:
            self.rss["nats-server"] = peak_rss_mb(server.process.pid)
        await self.startup.stop()
        self.rss["bench"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def check_children(self) -> None:
        for label, child in self.children.items():
            if child.poll() is not None:
                logs = self.startup.data_dir / "logs"
                raise CogoError(f"{label} exited with {child.returncode}; see {logs}")

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by every process of the system, this one included."""
        pids = {label: child.pid for label, child in self.children.items()}
        server = self.startup.server
        if isinstance(server, EmbeddedServer) and server.process is not None:
            pids["nats-server"] = server.process.pid
        snapshot = {label: cpu_seconds(pid) for label, pid in pids.items()}
        snapshot["bench"] = sum(os.times()[:2])
        return snapshot

    async def on_done(self, msg: Msg) -> None:
        """Count an ``execute_done`` (subscribed to the routes whose tasks are counted)."""
        self.done_count += 1
        with contextlib.suppress(msgspec.DecodeError):
            self.done_at[_done_decoder.decode(msg.data).task_id] = time.perf_counter()

    def task_prefix(self, letter: str) -> str:
        """A fresh task-id prefix: every run's ids differ from every other's."""
        self._run += 1
        return f"{letter}{self._run}-"

    # -- progress of the projection ----------------------------------------------------

    async def stored(self) -> dict[str, tuple[int, int]]:
        """``(last_seq, messages)`` of the streams a task writes: the difference of two
        snapshots is what was stored (one fsynced write each under ``always``) and removed."""
        out: dict[str, tuple[int, int]] = {}
        for name in (TASKS, RESULTS, EVENTS):
            state = (await self.js.stream_info(name)).state
            out[name] = (int(state.last_seq), int(state.messages))
        return out

    async def events_last_seq(self) -> int:
        return int((await self.js.stream_info(EVENTS)).state.last_seq)

    async def projected_seq(self, consumer: str) -> int | None:
        """The projector's ack floor on EVENTS (= last committed sequence), None if absent."""
        try:
            info = await self.js.consumer_info(EVENTS, consumer)
        except NotFoundError:
            return None
        return int(info.ack_floor.stream_seq) if info.ack_floor else 0

    async def wait_projected(self, target: int, deadline: float) -> None:
        while (await self.projected_seq(PROJECTOR_CONSUMER) or 0) < target:
            if time.monotonic() > deadline:
                raise CogoError(f"projector did not reach EVENTS seq {target} in time")
            self.check_children()
            await asyncio.sleep(POLL_S)

    # -- tasks until projected (the saturated figure, warm-up, scale-out) ---------------

    async def run_tasks(
        self,
        count: int,
        label: str,
        timeout: float | None = None,
        body: Callable[[str], bytes] = task_body,
    ) -> float:
        """Publish ``count`` tasks at once; seconds until all are done and projected."""
        prefix = self.task_prefix("t")
        update = self.progress.task(label, count)
        deadline = time.monotonic() + (timeout or self.o.timeout)
        before = self.done_count
        began = time.perf_counter()
        publishing = asyncio.create_task(self._publish_burst(prefix, count, body))
        while self.done_count - before < count:
            if time.monotonic() > deadline:
                raise CogoError(f"{label}: {self.done_count - before}/{count} done in time")
            if publishing.done() and publishing.exception() is not None:
                await publishing
            self.check_children()
            update(self.done_count - before, "done")
            await asyncio.sleep(POLL_S)
        await publishing
        # every event of these tasks is in EVENTS now (execute_done is each task's last)
        await self.wait_projected(await self.events_last_seq(), deadline)
        elapsed = time.perf_counter() - began
        update(count, f"{count / elapsed:,.0f} tasks/s")
        return elapsed

    async def _publish_burst(self, prefix: str, count: int, body: Callable[[str], bytes]) -> None:
        acks: list[asyncio.Future[Any]] = []
        for i in range(count):
            tid = f"{prefix}{i}"
            acks.append(await self.publisher.publish(EXECUTE_SUBJECT, body(tid), {MSG_ID: tid}))
            if len(acks) >= PUBLISH_WINDOW:  # bounded: a 100,000-task burst stays flat
                await asyncio.gather(*acks)
                acks = []
        await asyncio.gather(*acks)


def _no_progress(done: int, note: str = "") -> None:
    """A progress callback for a quiet run."""
