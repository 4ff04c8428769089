"""What tracing costs a task: the decorated bench agent with OpenTelemetry off, then on.

Off is the default (no ``OTEL_EXPORTER_OTLP_*``: ``cogo.tracing`` returns at once and never
imports the SDK). On, the dispatcher and the agent's process export every span over
OTLP/HTTP to a sink in this process on 127.0.0.1 (it answers each export with 200 and keeps
nothing, so what is measured is Cogo's side: building, batching, encoding and sending
spans). Same run, same N, same route: the difference of the processes' CPU per task is the
overhead. What tracing off costs is timed directly (``off_path_ns``): a few flag checks. The bench's own submissions carry no ``traceparent``, so each task's trace starts
at the dispatcher (task, dispatch, attempt and result spans: four per task).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cogo import tracing
from cogo.bench.agent import AGENT, AGENT_ROUTE, APP_REF, _body
from cogo.bench.system import Bench


class _Sink:
    """An OTLP/HTTP endpoint that accepts and drops every export (counting bytes)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                size = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(size)
                sink.requests += 1
                sink.bytes += size
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def off_path_ns() -> float:
    """Nanoseconds per task of what tracing costs when off, timed in this process (which
    does not trace): the calls one task makes through ``cogo.tracing`` (its submission, the
    dispatcher's two messages and three events, the attempt, one step), none of them doing
    more than a flag check."""
    if tracing.enabled():
        return float("nan")
    rounds = 20_000
    began = time.perf_counter_ns()
    for _ in range(rounds):
        tracing.submitted({}, task_id="t", route="r")
        for _ in range(2):
            with tracing.task_scope(task_id="t", route="r", parent=None, submitted_at=0.0):
                pass
        for _ in range(3):
            tracing.enabled()
        tracing.task_ended("t", None, None)
        with tracing.span("attempt"), tracing.span("step"):
            pass
    return round((time.perf_counter_ns() - began) / rounds, 1)


async def tracing_overhead(bench: Bench) -> dict[str, Any]:
    """tasks/s and dispatcher + worker CPU µs/task with tracing off and on, same run."""
    count = bench.o.tracing_tasks
    sink = _Sink()
    sub = await bench.nc.subscribe(f"events.execute_done.{AGENT_ROUTE}", cb=bench.on_done, pending_msgs_limit=1_000_000)
    dispatchers = [label for label in bench.children if label.startswith("dispatcher")]
    rows: dict[str, dict[str, Any]] = {}
    try:
        for mode in ("off", "on"):
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url} if mode == "on" else None
            if mode == "on":  # the dispatchers again, exporting
                for label in dispatchers:
                    await bench.stop_child(label)
                    bench.spawn("dispatcher", label, env=env)
            bench.spawn(AGENT, f"traced-{mode}", target=APP_REF, env=env)
            await bench.run_tasks(min(200, count), f"tracing {mode}: warm-up", timeout=60, body=_body(AGENT_ROUTE))
            before = bench.cpu_snapshot()
            elapsed = await bench.run_tasks(count, f"tracing {mode}: {count:,} tasks", body=_body(AGENT_ROUTE))
            after = bench.cpu_snapshot()

            def us(prefix: str, before: dict[str, float] = before, after: dict[str, float] = after) -> float:
                used = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))
                return round(used / count * 1e6, 1)

            rows[mode] = {
                "tasks_per_s": round(count / elapsed, 1),
                "worker_cpu_us_per_task": us("traced-"),
                "dispatcher_cpu_us_per_task": us("dispatcher"),
            }
            await bench.stop_child(f"traced-{mode}")
    finally:
        await sub.unsubscribe()
        for label in dispatchers:  # untraced again, for whatever runs next
            if label in bench.children:
                await bench.stop_child(label)
            bench.spawn("dispatcher", label)
        sink.stop()
    off, on = rows["off"], rows["on"]

    def total(row: dict[str, Any]) -> float:
        return float(row["worker_cpu_us_per_task"] + row["dispatcher_cpu_us_per_task"])

    return {
        "tasks": count,
        "off_path_ns_per_task": off_path_ns(),
        "off": off,
        "on": on,
        "overhead_cpu_us_per_task": round(total(on) - total(off), 1),
        "tasks_per_s_ratio": round(on["tasks_per_s"] / off["tasks_per_s"], 3),
        "exports": sink.requests,
        "export_bytes_per_task": round(sink.bytes / max(1, count + min(200, count)), 1),
    }
