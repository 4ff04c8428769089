"""``cogo bench``: how fast an isolated Cogo runs on this machine, end to end.

Starts a throwaway system in a temporary directory, as production runs it: its own
``nats-server`` (``--sync always|default``), the topology and policies, then the
dispatcher(s), echo worker(s) and the projector as separate ``cogo run`` processes. Then:

1. ``tasks_per_s``: ``--tasks`` echo tasks published at once to ``orchestrator.execute.0``;
   the clock stops when every task's ``execute_done`` is in DuckDB (the projector's durable
   consumer acks a batch only after its transaction committed, so its ack floor is
   "projected").
2. ``latency_ms``: at each ``--rate`` (tasks/s offered for ``--duration`` seconds), submit ->
   ``execute_done`` percentiles; done = when this process saw the event on a core
   subscription (same clock as the submit time).
3. ``http_submit_per_s``: ``POST /api/tasks`` against the facade under uvicorn in its own
   process, from ``--http-concurrency`` connections.
4. ``workflows`` (opt-in, ``--workflow-runs N``): workflow runs per second with each
   ``--orchestrators K`` (``cogo.workflows.throughput``), the median of
   ``--workflow-repeats`` rounds.
   ``flow`` (opt-in, ``--flow-tasks N``): the dispatcher's CPU per task with flow control off
   and on, alternating rounds on the same system (``cogo.actors.flowbench``).
5. ``projector_events_per_s``: a fresh projector, alone, on the pre-filled ``EVENTS``
   (topped up with synthetic events to ``--projector-events``): the median of
   ``--projector-runs`` fresh projectors, each its own consumer and DuckDB file (every
   run is listed in ``projector_runs``).

Every process's peak RSS (``VmHWM``) is reported, and the disk's pace: small write +
``fdatasync`` pairs per second on the bench's data dir, which bounds ``--sync always``. Everything binds 127.0.0.1, every phase
has a bounded count and a timeout, and the system is torn down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cogo.actors.loader import declare_apps
from cogo.actors.runner import _use_uvloop, connect, spawn_actor
from cogo.config import Config, load_config
from cogo.errors import CogoError
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID
from cogo.streams.publisher import Publisher
from cogo.streams.server import SYNC_CHOICES, EmbeddedServer, free_port
from cogo.streams.topology import EVENTS

PROJECTOR_CONSUMER = "projector"
INGEST_CONSUMER = "projector-ingest"
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
    workflow_runs: int = 0
    orchestrators: list[int] = field(default_factory=lambda: [1, 2])
    workflow_repeats: int = 3
    flow_tasks: int = 0  # opt-in: dispatcher cost with flow control off and on
    flow_repeats: int = 3
    dispatchers: int = 1
    echoes: int = 1
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
        if self._bar is None:
            return lambda done, note="": None
        tid = self._bar.add_task(description, total=total, note="")
        return lambda done, note="": self._bar.update(tid, completed=done, note=note)

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


def task_body(task_id: str) -> bytes:
    # an empty echo task: the cost measured is the bus's, not the worker's
    return b'{"task_id":"%s","route":"%s","payload":{}}' % (task_id.encode(), ROUTE.encode())


class Bench:
    """One isolated system and the measurements taken on it."""

    def __init__(self, options: Options, work_dir: Path, progress: Progress) -> None:
        self.o = options
        self.dir = work_dir
        self.fsync_per_s = 0.0
        self.progress = progress
        self.config: Config = load_config(options.config_path)
        self.server = EmbeddedServer(work_dir / "nats", sync=options.sync)
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.rss: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.done_count = 0
        self._run = 0

    # -- the system --------------------------------------------------------------------

    async def start(self) -> None:
        # before anything else runs: what this disk allows is what `always` can reach
        self.fsync_per_s = await asyncio.to_thread(fsync_rate, self.dir)
        self.server.start()
        await self.server.wait_ready()
        self.nc: NATS = await connect(self.server.url, "cogo-bench")
        self.js: JetStreamContext = self.nc.jetstream()
        # the actors' publisher: the bench's own CPU per task stays small
        self.publisher = Publisher(self.nc)
        await self.publisher.start()
        await declare_apps(self.js, self.config)
        self._done_sub = await self.nc.subscribe(
            f"events.execute_done.{ROUTE}", cb=self._on_done, pending_msgs_limit=1_000_000
        )
        self.spawn("projector", env={"COGO_PROJECTOR_CONSUMER": PROJECTOR_CONSUMER})
        for i in range(self.o.dispatchers):
            self.spawn("dispatcher", f"dispatcher-{i + 1}")
        for i in range(self.o.echoes):
            self.spawn("echo", f"echo-{i + 1}")
        # warm up: the first tasks also prove every process is consuming
        await self.run_tasks(min(200, self.o.tasks), "warm-up", timeout=60)

    def spawn(
        self, actor: str, label: str | None = None, *, data_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        label = label or actor
        self.children[label] = spawn_actor(
            actor,
            self.server.url,
            config_path=self.o.config_path,
            data_dir=data_dir or self.dir / "data",
            env=env,
            log_file=self.dir / "logs" / f"{label}.log",
        )

    async def stop_child(self, label: str) -> None:
        child = self.children.pop(label)
        self.rss[label] = peak_rss_mb(child.pid)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(child.wait, 30)
        except subprocess.TimeoutExpired:
            child.kill()
            await asyncio.to_thread(child.wait)

    async def stop(self) -> None:
        for label in list(self.children):
            await self.stop_child(label)
        if hasattr(self, "nc"):
            with contextlib.suppress(Exception):
                await self.publisher.stop()
                await self.nc.close()
        if self.server.process is not None:
            self.rss["nats-server"] = peak_rss_mb(self.server.process.pid)
        await asyncio.to_thread(self.server.stop)
        self.rss["bench"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def check_children(self) -> None:
        for label, child in self.children.items():
            if child.poll() is not None:
                raise CogoError(f"{label} exited with {child.returncode}; see {self.dir / 'logs'}")

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by every process of the system, this one included."""
        pids = {label: child.pid for label, child in self.children.items()}
        if self.server.process is not None:
            pids["nats-server"] = self.server.process.pid
        snapshot = {label: cpu_seconds(pid) for label, pid in pids.items()}
        snapshot["bench"] = sum(os.times()[:2])
        return snapshot

    async def _on_done(self, msg: Msg) -> None:
        self.done_count += 1
        with contextlib.suppress(msgspec.DecodeError):
            self.done_at[_done_decoder.decode(msg.data).task_id] = time.perf_counter()

    # -- progress of the projection ----------------------------------------------------

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

    # -- 1. saturated throughput -------------------------------------------------------

    async def run_tasks(
        self, count: int, label: str, timeout: float | None = None,
        body: Callable[[str], bytes] = task_body,
    ) -> float:  # fmt: skip
        """Publish ``count`` tasks at once; seconds until all are done and projected."""
        self._run += 1
        prefix = f"t{self._run}-"
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

    # -- 2. latency at a fixed offered load --------------------------------------------

    async def latency(self, rate: int) -> dict[str, float]:
        self._run += 1
        prefix = f"l{self._run}-"
        total = max(1, int(rate * self.o.duration))
        update = self.progress.task(f"latency @ {rate}/s", total)
        submitted: dict[str, float] = {}
        acks: list[asyncio.Future[Any]] = []
        before = self.done_count
        began = time.perf_counter()
        for i in range(total):
            due = began + i / rate
            delay = due - time.perf_counter()
            if delay > 0.001:  # open loop: never wait for completions, only for the clock
                await asyncio.sleep(delay)
                update(self.done_count - before, "")
            tid = f"{prefix}{i}"
            submitted[tid] = time.perf_counter()
            acks.append(
                await self.publisher.publish(EXECUTE_SUBJECT, task_body(tid), {MSG_ID: tid})
            )
            if len(acks) >= PUBLISH_WINDOW:
                await asyncio.gather(*acks)
                acks = []
        await asyncio.gather(*acks)
        sent_span = max(1e-6, max(submitted.values()) - began)
        deadline = time.monotonic() + max(30.0, self.o.duration * 4)
        while any(t not in self.done_at for t in submitted):
            if time.monotonic() > deadline:
                break
            self.check_children()
            update(self.done_count - before, "")
            await asyncio.sleep(POLL_S)
        samples = sorted(
            (self.done_at[t] - at) * 1000.0 for t, at in submitted.items() if t in self.done_at
        )
        update(len(samples), f"p99 {percentile(samples, 99):.1f} ms")
        return {
            "offered_per_s": rate,
            "achieved_per_s": round(total / sent_span, 1),
            "tasks": total,
            "completed": len(samples),
            "p50": round(percentile(samples, 50), 2),
            "p90": round(percentile(samples, 90), 2),
            "p99": round(percentile(samples, 99), 2),
            "max": round(samples[-1], 2) if samples else 0.0,
        }

    # -- 3. HTTP submissions -----------------------------------------------------------

    async def http_submit(self) -> float:
        import httpx

        port, token = free_port(), "bench-token"
        ctx = multiprocessing.get_context("spawn")
        facade = ctx.Process(
            target=serve_facade, args=(self.server.url, port, token), name="cogo-bench-facade"
        )
        facade.start()
        url = f"http://127.0.0.1:{port}"
        count, ok = self.o.http_requests, 0
        update = self.progress.task("POST /api/tasks", count)
        try:
            # every connection kept alive: a closed one costs a TCP handshake per request
            limits = httpx.Limits(
                max_connections=self.o.http_concurrency,
                max_keepalive_connections=self.o.http_concurrency,
            )
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers) as client:
                deadline = time.monotonic() + 30
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    if time.monotonic() > deadline or not facade.is_alive():
                        raise CogoError("the HTTP facade did not start")
                    await asyncio.sleep(0.1)
                queue = iter(range(count))
                body = {"route": ROUTE, "payload": {}}

                async def worker() -> None:
                    nonlocal ok
                    for _ in queue:
                        response = await client.post("/api/tasks", json=body)
                        ok += response.status_code == 202
                        if ok % 100 == 0:
                            update(ok, "")

                began = time.perf_counter()
                await asyncio.wait_for(
                    asyncio.gather(*(worker() for _ in range(self.o.http_concurrency))),
                    self.o.timeout,
                )
                elapsed = time.perf_counter() - began
        finally:
            if facade.pid is not None:
                self.rss["facade"] = peak_rss_mb(facade.pid)
            facade.terminate()
            await asyncio.to_thread(facade.join, 10)
        if ok < count:
            raise CogoError(f"POST /api/tasks: only {ok} of {count} accepted")
        update(count, f"{count / elapsed:,.0f} req/s")
        return count / elapsed

    # -- 4. projector ingest alone -----------------------------------------------------

    async def projector_ingest(self) -> list[float]:
        """Stop the system, top EVENTS up, time fresh projectors from zero to caught up."""
        for label in [x for x in self.children if x != "projector"]:
            await self.stop_child(label)
        await self.wait_projected(await self.events_last_seq(), time.monotonic() + 120)
        await self.stop_child("projector")
        last = await self.events_last_seq()
        if last < self.o.projector_events:
            await self._fill_events(self.o.projector_events - last)
            last = await self.events_last_seq()
        rates = []
        for run in range(1, self.o.projector_runs + 1):
            rates.append(await self._ingest_once(run, last))
        return rates

    async def _ingest_once(self, run: int, last: int) -> float:
        label, consumer = f"projector-ingest-{run}", f"{INGEST_CONSUMER}-{run}"
        update = self.progress.task(f"projector ingest {run}/{self.o.projector_runs}", last)
        self.spawn(
            "projector", label, data_dir=self.dir / f"ingest-{run}",
            env={"COGO_PROJECTOR_CONSUMER": consumer},
        )  # fmt: skip
        deadline = time.monotonic() + self.o.timeout
        # the clock starts when the consumer exists (DuckDB open, schema created)
        while (seq := await self.projected_seq(consumer)) is None:
            if time.monotonic() > deadline:
                raise CogoError("the ingest projector did not start")
            self.check_children()
            await asyncio.sleep(0.01)
        began, start_seq = time.perf_counter(), seq
        while seq < last:
            if time.monotonic() > deadline:
                raise CogoError(f"the ingest projector reached {seq} of {last} in time")
            self.check_children()
            update(seq, "")
            await asyncio.sleep(0.01)
            seq = await self.projected_seq(consumer) or 0
        rate = (last - start_seq) / (time.perf_counter() - began)
        update(last, f"{rate:,.0f} events/s")
        await self.stop_child(label)
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(EVENTS, consumer)
        return rate

    async def _fill_events(self, count: int) -> None:
        from cogo.projections.bench import fill, synthetic_events

        await fill(self.js, synthetic_events(count))


def serve_facade(nats_url: str, port: int, token: str) -> None:
    """Process target: the HTTP facade alone, on 127.0.0.1:``port``."""
    import uvicorn

    from cogo.http.app import AppState, create_app
    from cogo.streams.policies import PolicyStore

    async def main() -> None:
        nc = await connect(nats_url, "cogo-bench-facade")
        policies = PolicyStore(nc.jetstream())
        await policies.start()
        state = AppState(
            nc=nc, config=load_config(), policies=policies,
            data_dir=Path(tempfile.gettempdir()), api_token=token,
        )  # fmt: skip
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(state), host="127.0.0.1", port=port, log_level="warning",
                lifespan="off", access_log=False,
            )
        )  # fmt: skip
        await server.serve()

    _use_uvloop()
    asyncio.run(main())


async def run_bench(options: Options, progress: Progress) -> dict[str, Any]:
    """Run every phase on a fresh system; return the figures."""
    with contextlib.ExitStack() as stack:
        if options.keep is not None:
            work_dir = options.keep.resolve()
            work_dir.mkdir(parents=True, exist_ok=True)
        else:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cogo-bench-")))
        bench = Bench(options, work_dir, progress)
        try:
            await bench.start()
            cpu_before = bench.cpu_snapshot()
            elapsed = await bench.run_tasks(options.tasks, f"{options.tasks:,} tasks, saturated")
            cpu = {k: v - cpu_before.get(k, 0.0) for k, v in bench.cpu_snapshot().items()}
            cpu_us = {k: round(v / options.tasks * 1e6, 1) for k, v in cpu.items()}
            cpu_us["total"] = round(sum(cpu_us.values()), 1)
            latency = [await bench.latency(rate) for rate in options.rates]
            http_rate = await bench.http_submit() if options.http_requests > 0 else 0.0
            workflows = None
            if options.workflow_runs > 0:
                from cogo.workflows import throughput

                workflows = await throughput.measure(
                    bench, options.workflow_runs, options.orchestrators,
                    options.workflow_repeats, options.timeout,
                )  # fmt: skip
            flow = None
            if options.flow_tasks > 0:
                from cogo.actors import flowbench

                flow = await flowbench.measure(bench, options.flow_tasks, options.flow_repeats)
            ingest = await bench.projector_ingest() if options.projector_runs > 0 else []
        finally:
            await bench.stop()
    return {
        "tasks_per_s": round(options.tasks / elapsed, 1),
        "tasks": options.tasks,
        "latency_ms": latency,
        "projector_events_per_s": round(statistics.median(ingest), 1) if ingest else 0.0,
        "projector_runs": [round(rate, 1) for rate in ingest],
        "http_submit_per_s": round(http_rate, 1),
        "workflows": workflows,
        "flow": flow,
        "peak_rss_mb": bench.rss,
        # where the CPU went in the saturated run: microseconds of CPU per task, per process
        "cpu_us_per_task": cpu_us,
        "sync_interval": options.sync,
        # one write + fdatasync at a time, on the bench's data dir: the disk's pace
        "disk_fsync_per_s": round(bench.fsync_per_s),
        "processes": {"dispatchers": options.dispatchers, "echoes": options.echoes},
        "cpus": os.cpu_count(),
    }


def render(result: dict[str, Any]) -> None:
    """The human summary."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"\n[bold]cogo bench[/bold]  sync_interval={result['sync_interval']}  "
        f"{result['processes']['dispatchers']} dispatcher(s), "
        f"{result['processes']['echoes']} echo worker(s), {result['cpus']} CPUs"
    )
    table = Table(show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(
        f"end to end ({result['tasks']:,} tasks, until projected)",
        f"{result['tasks_per_s']:,.0f} tasks/s",
    )
    for row in result["latency_ms"]:
        table.add_row(
            f"latency @ {row['offered_per_s']}/s offered ({row['achieved_per_s']:,.0f} achieved)",
            f"p50 {row['p50']:.1f}  p90 {row['p90']:.1f}  p99 {row['p99']:.1f} ms",
        )
    cpu = result["cpu_us_per_task"]
    table.add_row(
        "CPU per task, saturated run",
        f"{cpu['total']:,.0f} µs: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in cpu.items() if k != "total"),
    )
    runs = ", ".join(f"{rate:,.0f}" for rate in result["projector_runs"])
    table.add_row(
        "projector ingest (DuckDB), median",
        f"{result['projector_events_per_s']:,.0f} events/s ({runs})",
    )
    table.add_row("POST /api/tasks", f"{result['http_submit_per_s']:,.0f} req/s")
    workflows = result.get("workflows")
    for count, row in ((workflows or {}).get("by_orchestrators") or {}).items():
        rounds = ", ".join(f"{r:,.1f}" for r in row["rounds"])
        table.add_row(
            f"workflow runs ({workflows['runs']} at once, {workflows['nodes_per_run']} nodes), "
            f"{count} orchestrator(s), median",
            f"{row['runs_per_s']:,.1f} runs/s = {row['nodes_per_s']:,.0f} nodes/s ({rounds})",
        )
    flow = result.get("flow")
    for mode in ("off", "on") if flow else ():
        row = flow[mode]
        table.add_row(
            f"flow control {mode} ({flow['tasks']:,} tasks, {flow['keys']} keys), median",
            f"dispatcher {row['dispatcher_cpu_us_per_task']:,.0f} µs/task, "
            f"total {row['total_cpu_us_per_task']:,.0f} µs/task, {row['tasks_per_s']:,.0f} tasks/s",
        )
    table.add_row("disk: write + fdatasync", f"{result['disk_fsync_per_s']:,} /s")
    for name, mb in result["peak_rss_mb"].items():
        table.add_row(f"peak RSS {name}", f"{mb:,.0f} MB")
    console.print(table)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CogoError(
            "--plot needs matplotlib: pip install 'cogo[bench]' (or pip install matplotlib)"
        ) from None


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency percentiles against offered load, as a PNG."""
    _require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["latency_ms"], key=lambda r: r["offered_per_s"])
    x = [r["offered_per_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ("p50", "p90", "p99"):
        ax.plot(x, [r[key] for r in rows], marker="o", label=key)
    ax.set_xlabel("offered load (tasks/s)")
    ax.set_ylabel("submit -> execute_done (ms)")
    values = [r[k] for r in rows for k in ("p50", "p99") if r[k] > 0]
    if values and max(values) / min(values) > 50:  # an overloaded rate dwarfs the others
        ax.set_yscale("log")
    ax.set_title(f"cogo bench, sync_interval={result['sync_interval']}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_bench(args: argparse.Namespace) -> int:
    options = Options(
        tasks=args.tasks,
        rates=args.rate or [500, 1000, 2000],
        duration=args.duration,
        http_requests=args.http_requests,
        http_concurrency=args.http_concurrency,
        projector_events=args.projector_events,
        projector_runs=args.projector_runs,
        dispatchers=args.dispatchers,
        echoes=args.echoes,
        sync=args.sync,
        config_path=args.config,
        timeout=args.timeout,
        keep=args.keep,
        workflow_runs=args.workflow_runs,
        orchestrators=args.orchestrators or [1, 2],
        workflow_repeats=args.workflow_repeats,
        flow_tasks=args.flow_tasks,
        flow_repeats=args.flow_repeats,
    )
    if options.tasks < 1 or any(r < 1 for r in options.rates) or options.duration <= 0:
        raise CogoError("--tasks, --rate and --duration must be positive")
    if args.plot is not None:
        _require_matplotlib()  # fail before the run, not after it
    progress = Progress(enabled=not args.json and sys.stderr.isatty() or args.progress)
    # one line per request otherwise; matplotlib announces its font cache
    for name in ("httpx", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _use_uvloop()
    try:
        result = asyncio.run(run_bench(options, progress))
    finally:
        progress.stop()
    if args.plot is not None:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        render(result)
        if args.plot is not None:
            print(f"plot: {args.plot}")
    return 0


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cogo bench`` to the CLI."""
    del common  # an isolated run: no --data-dir or --nats-url to share
    p = subparsers.add_parser("bench", help="measure throughput and latency on this machine")
    p.add_argument("--tasks", type=int, default=20_000, help="saturated run size (20,000)")
    p.add_argument(
        "--rate",
        type=int,
        action="append",
        metavar="N",
        help="offered load for latency, tasks/s; repeat (default 500, 1000, 2000)",
    )
    p.add_argument(
        "--duration", type=float, default=5.0, help="seconds of offered load per --rate (5)"
    )
    p.add_argument("--http-requests", type=int, default=5_000, help="POST /api/tasks count")
    p.add_argument("--http-concurrency", type=int, default=8, help="connections (8)")
    p.add_argument(
        "--projector-events",
        type=int,
        default=200_000,
        help="top EVENTS up to this many before timing the projector alone (200,000)",
    )
    p.add_argument(
        "--projector-runs",
        type=int,
        default=3,
        help="fresh projectors timed on that stream; the median is reported (3)",
    )
    p.add_argument("--workflow-runs", type=int, default=0, metavar="N",
                   help="also time N workflow runs sent at once (opt-in; 0 = off)")  # fmt: skip
    p.add_argument("--orchestrators", type=int, action="append", metavar="K",
                   help="orchestrator processes for --workflow-runs; repeat (default 1, 2)")  # fmt: skip
    p.add_argument("--workflow-repeats", type=int, default=3,
                   help="rounds per orchestrator count; the median is reported (3)")  # fmt: skip
    p.add_argument("--flow-tasks", type=int, default=0, metavar="N",
                   help="also time N tasks with flow control off and on (opt-in; 0 = off)")  # fmt: skip
    p.add_argument("--flow-repeats", type=int, default=3,
                   help="rounds per mode for --flow-tasks; the median is reported (3)")  # fmt: skip
    p.add_argument("--dispatchers", type=int, default=1, help="dispatcher processes (1)")
    p.add_argument("--echoes", type=int, default=1, help="echo worker processes (1)")
    p.add_argument(
        "--sync",
        choices=SYNC_CHOICES,
        default="always",
        help="JetStream fsync: always (as nats.conf ships) or the server default",
    )
    p.add_argument("--config", type=Path, default=None, help="TOML merged over the defaults")
    p.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="draw latency percentiles against offered load (needs matplotlib)",
    )
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="run in DIR and keep it (logs, DuckDB files) instead of a temp dir",
    )
    p.add_argument("--progress", action="store_true", help="progress bars even when not a tty")
    p.set_defaults(func=cmd_bench)  # fmt: skip
