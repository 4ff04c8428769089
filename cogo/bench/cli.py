"""``cogo bench``: its options, the order of its parts, and the command line.

A part is an async function of the running ``Bench`` that returns its figures (a dict or
a list) under one key of the result; ``run_bench`` calls them in an order that keeps them
from disturbing each other (the saturated figure first, on a quiet system; the projector
alone last, after the other processes are stopped). The history part runs on systems of
its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cogo.bench.agent import agent_vs_echo
from cogo.bench.agent import app as bench_app
from cogo.bench.client import client_figures
from cogo.bench.durable import app as durable_app
from cogo.bench.durable import durable_figures
from cogo.bench.facade import http_submit
from cogo.bench.history import history_figures
from cogo.bench.ingest import projector_ingest
from cogo.bench.latency import latency_at
from cogo.bench.report import _require_matplotlib, plot, render
from cogo.bench.scaleout import scale_out
from cogo.bench.system import Bench, Options, Progress
from cogo.bench.traces import tracing_overhead
from cogo.bench.workflow import workflow_steps
from cogo.errors import CogoError
from cogo.runtime.runner import _use_uvloop
from cogo.streams.server import SYNC_CHOICES

DEFAULT_RATES = [500, 1000, 2000]
DEFAULT_SCALE_WORKERS = [1, 2, 4]


async def run_bench(options: Options, progress: Progress) -> dict[str, Any]:
    """Run every phase on a fresh system; return the figures."""
    with contextlib.ExitStack() as stack:
        if options.keep is not None:
            work_dir = options.keep.resolve()
            work_dir.mkdir(parents=True, exist_ok=True)
        else:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cogo-bench-")))
        bench = Bench(options, work_dir, progress, apps=[bench_app, durable_app])
        extra: dict[str, Any] = {}
        try:
            await bench.start()
            cpu_before = bench.cpu_snapshot()
            stored_before = await bench.stored()
            elapsed = await bench.run_tasks(options.tasks, f"{options.tasks:,} tasks, saturated")
            stored_after = await bench.stored()
            cpu = {k: v - cpu_before.get(k, 0.0) for k, v in bench.cpu_snapshot().items()}
            cpu_us = {k: round(v / options.tasks * 1e6, 1) for k, v in cpu.items()}
            cpu_us["total"] = round(sum(cpu_us.values()), 1)
            latency = [await latency_at(bench, rate) for rate in options.rates]
            if options.client_tasks > 0 or options.client_step_runs > 0 or options.kill_repeats:
                extra["client"] = await client_figures(bench)
            if options.agent_tasks > 0:
                extra["agent"] = await agent_vs_echo(bench)
            if options.tracing_tasks > 0:
                extra["tracing"] = await tracing_overhead(bench)
            if options.durable_tasks > 0:
                extra["durable"] = await durable_figures(bench)
            if options.step_runs > 0:
                extra["workflow_steps"] = await workflow_steps(bench)
            if options.scale_workers:
                extra["scale_out"] = await scale_out(bench)
            http_rate = await http_submit(bench) if options.http_requests > 0 else 0.0
            workflows = None
            if options.workflow_runs > 0:
                from cogo.workflows import throughput

                workflows = await throughput.measure(
                    bench,
                    options.workflow_runs,
                    options.orchestrators,
                    options.workflow_repeats,
                    options.timeout,
                )
            flow = None
            if options.flow_tasks > 0:
                from cogo.bench import flow as flowbench

                flow = await flowbench.measure(bench, options.flow_tasks, options.flow_repeats)
            if options.seal_tasks > 0:
                from cogo.bench import seal as sealbench

                extra["seal"] = await sealbench.measure(bench, options.seal_tasks, options.seal_repeats)
            ingest = await projector_ingest(bench) if options.projector_runs > 0 else []
        finally:
            await bench.stop()
    if options.history:
        extra["history"] = await history_figures(
            options.history,
            requests=options.history_requests,
            config_path=options.config_path,
            progress=progress,
        )
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
        # per task of the saturated run, per stream: messages stored (each one fsynced write
        # under `always`) and removed (on TASKS most removals write a tombstone; RESULTS is
        # purged in bulk, one write per purge: README, Durability)
        "stored_per_task": {
            name: {
                "stored": round((last - stored_before[name][0]) / options.tasks, 2),
                "removed": round(
                    ((last - stored_before[name][0]) - (kept - stored_before[name][1])) / options.tasks,
                    2,
                ),
            }
            for name, (last, kept) in stored_after.items()
        },
        "sync_interval": options.sync,
        # one write + fdatasync at a time, on the bench's data dir: the disk's pace
        "disk_fsync_per_s": round(bench.fsync_per_s),
        "processes": {"dispatchers": options.dispatchers, "echoes": options.echoes},
        "cpus": os.cpu_count(),
        **extra,
    }


def cmd_bench(args: argparse.Namespace) -> int:
    options = Options(
        tasks=args.tasks,
        rates=args.rate or DEFAULT_RATES,
        duration=args.duration,
        http_requests=args.http_requests,
        http_concurrency=args.http_concurrency,
        projector_events=args.projector_events,
        projector_runs=args.projector_runs,
        dispatchers=args.dispatchers,
        echoes=args.echoes,
        step_runs=args.step_runs,
        step_nodes=args.step_nodes,
        workflow_runs=args.workflow_runs,
        orchestrators=args.orchestrators or [1, 2],
        workflow_repeats=args.workflow_repeats,
        flow_tasks=args.flow_tasks,
        flow_repeats=args.flow_repeats,
        client_tasks=args.client_tasks,
        client_in_flight=args.client_in_flight,
        client_step_runs=args.client_step_runs,
        client_steps=args.client_steps,
        kill_repeats=args.kill_repeats,
        seal_tasks=args.seal_tasks,
        seal_repeats=args.seal_repeats,
        scale_workers=[] if args.no_scale_out else args.scale_workers or DEFAULT_SCALE_WORKERS,
        scale_tasks=args.scale_tasks,
        scale_sleep_ms=args.scale_sleep_ms,
        scale_concurrency=args.scale_concurrency,
        agent_tasks=args.agent_tasks,
        tracing_tasks=args.tracing_tasks,
        durable_tasks=args.durable_tasks,
        history=args.history or [],
        history_requests=args.history_requests,
        sync=args.sync,
        config_path=args.config,
        timeout=args.timeout,
        keep=args.keep,
    )
    if options.tasks < 1 or any(r < 1 for r in options.rates) or options.duration <= 0:
        raise CogoError("--tasks, --rate and --duration must be positive")
    if options.step_runs > 0 and options.step_nodes < 1:
        raise CogoError("--step-nodes must be positive")
    if any(n < 1 for n in options.scale_workers) or options.scale_tasks < 1:
        raise CogoError("--scale-workers and --scale-tasks must be positive")
    if options.scale_sleep_ms <= 0 or options.scale_concurrency < 1:
        raise CogoError("--scale-sleep-ms and --scale-concurrency must be positive")
    if options.tracing_tasks < 0:
        raise CogoError("--tracing-tasks must be 0 (skip) or positive")
    if options.agent_tasks < 0:
        raise CogoError("--agent-tasks must be 0 (skip) or positive")
    if min(options.client_tasks, options.client_step_runs, options.kill_repeats) < 0:
        raise CogoError("--client-tasks, --client-step-runs and --kill-repeats must be 0 or more")
    if options.client_in_flight < 1 or options.client_steps < 1:
        raise CogoError("--client-in-flight and --client-steps must be positive")
    if options.durable_tasks < 0:
        raise CogoError("--durable-tasks must be 0 (skip) or positive")
    if any(n < 1 for n in options.history) or options.history_requests < 1:
        raise CogoError("--history and --history-requests must be positive")
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
    p.add_argument("--duration", type=float, default=5.0, help="seconds of offered load per --rate (5)")
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
    p.add_argument("--dispatchers", type=int, default=1, help="dispatcher processes (1)")
    p.add_argument("--echoes", type=int, default=1, help="echo worker processes (1)")
    p.add_argument(
        "--step-runs",
        type=int,
        default=5,
        help="workflow step latency: runs of a publish chain, one at a time (5; 0 skips it)",
    )
    p.add_argument("--step-nodes", type=int, default=10, help="publish nodes a chain (10)")
    p.add_argument(
        "--workflow-runs",
        type=int,
        default=0,
        metavar="N",
        help="also time N workflow runs sent at once (opt-in; 0 = off)",
    )
    p.add_argument(
        "--orchestrators",
        type=int,
        action="append",
        metavar="K",
        help="orchestrator processes for --workflow-runs; repeat (default 1, 2)",
    )
    p.add_argument(
        "--workflow-repeats", type=int, default=3, help="rounds per orchestrator count; the median is reported (3)"
    )
    p.add_argument(
        "--flow-tasks",
        type=int,
        default=2_000,
        metavar="N",
        help="time N tasks with flow control off and on (2,000; 0 skips it)",
    )
    p.add_argument(
        "--client-tasks",
        type=int,
        default=2_000,
        metavar="N",
        help="N tasks through cogo.Client: awaited with result() vs seen on their event (2,000; 0 skips it)",
    )
    p.add_argument("--client-in-flight", type=int, default=200, help="client tasks awaited at once (200)")
    p.add_argument(
        "--client-step-runs",
        type=int,
        default=50,
        metavar="N",
        help="latency of a --client-steps task through the client vs its event, N runs (50; 0 skips it)",
    )
    p.add_argument("--client-steps", type=int, default=20, help="journaled steps (20)")
    p.add_argument(
        "--kill-repeats",
        type=int,
        default=3,
        metavar="N",
        help="kill -> done: SIGKILL the echo worker mid-task N times (3; 0 skips)",
    )
    p.add_argument(
        "--flow-repeats", type=int, default=3, help="rounds per mode for --flow-tasks; the median is reported (3)"
    )
    p.add_argument(
        "--seal-tasks",
        type=int,
        default=0,
        metavar="N",
        help="also time N tasks with dispatchers without and with the --auth seal key (opt-in; 0 = off)",
    )
    p.add_argument(
        "--seal-repeats", type=int, default=3, help="rounds per mode for --seal-tasks; the median is reported (3)"
    )
    p.add_argument(
        "--scale-workers",
        type=int,
        action="append",
        metavar="N",
        help="scale-out: echo processes for sleep-bound tasks; repeat (default 1, 2, 4)",
    )
    p.add_argument("--no-scale-out", action="store_true", help="skip the scale-out figure")
    p.add_argument(
        "--scale-tasks",
        type=int,
        default=400,
        help="scale-out tasks per worker process: each step runs ~2.5 s at the ideal (400)",
    )
    p.add_argument("--scale-sleep-ms", type=float, default=50.0, help="each task sleeps (50)")
    p.add_argument("--scale-concurrency", type=int, default=8, help="tasks at once per worker process (8)")
    p.add_argument(
        "--agent-tasks",
        type=int,
        default=5_000,
        metavar="N",
        help="a decorated @app.agent against echo: N tasks each, same run (5,000; 0 skips it)",
    )
    p.add_argument(
        "--tracing-tasks",
        type=int,
        default=2_000,
        metavar="N",
        help="the decorated agent with OpenTelemetry off, then on (spans exported over "
        "OTLP/HTTP to a local sink): N tasks each, same run (2,000; 0 skips it)",
    )
    p.add_argument(
        "--durable-tasks",
        type=int,
        default=300,
        metavar="N",
        help="durable agents: N tasks suspended at once, then resumed; ctx.call round trips (300; 0 skips it)",
    )
    p.add_argument(
        "--history",
        type=int,
        action="append",
        metavar="N",
        help="time the dashboard, latency API and /metrics with N synthetic events in "
        "their 1 h window, on a system of its own; repeat for several sizes (off)",
    )
    p.add_argument(
        "--history-requests",
        type=int,
        default=7,
        help="requests per endpoint and size; the median is reported (7)",
    )
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
    p.set_defaults(func=cmd_bench)
