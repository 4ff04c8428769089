"""Scale-out: sleep-bound tasks with 1, 2, 4 ... echo worker processes on one route.

Each task sleeps ``--scale-sleep-ms`` in the worker; each worker process runs at most
``--scale-concurrency`` at once. So one process can finish at most
``concurrency * 1000 / sleep_ms`` tasks a second, and N processes sharing the route's
durable consumer N times that, while the bus has room: ``efficiency`` is the share of
that ideal reached. The system's own echo workers are stopped meanwhile and started again
afterwards; the clock is the one of the saturated figure (all done and projected).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from cogo.bench.system import POLL_S, ROUTE, Bench, task_body
from cogo.streams.topology import TASKS, durable_name

READY_TIMEOUT_S = 30.0


async def scale_out(bench: Bench) -> list[dict[str, Any]]:
    """tasks/s and the share of the ideal, for each worker count of ``--scale-workers``."""
    o = bench.o
    payload = msgspec.json.encode({"sleep_ms": o.scale_sleep_ms})

    def body(task_id: str) -> bytes:
        return task_body(task_id, payload)

    echoes = [label for label in bench.children if label.startswith("echo-")]
    for label in echoes:
        await bench.stop_child(label)
    rows = []
    try:
        for workers in o.scale_workers:
            labels = [f"scale-{workers}-echo-{i + 1}" for i in range(workers)]
            for label in labels:
                bench.spawn("echo", label, concurrency=o.scale_concurrency)
            try:
                # every new process up and fetching before the clock starts
                await bench.run_tasks(
                    workers * o.scale_concurrency, f"scale-out {workers}: warm-up", timeout=60, body=body
                )
                await _wait_fetching(bench, workers)
                count = o.scale_tasks * workers
                elapsed = await bench.run_tasks(count, f"scale-out, {workers} worker(s)", body=body)
            finally:
                for label in labels:
                    await bench.stop_child(label)
            ideal = workers * o.scale_concurrency * 1000.0 / o.scale_sleep_ms
            rate = count / elapsed
            rows.append(
                {
                    "workers": workers,
                    "tasks": count,
                    "tasks_per_s": round(rate, 1),
                    "ideal_per_s": round(ideal, 1),
                    "efficiency": round(rate / ideal, 3),
                }
            )
    finally:
        for i in range(len(echoes)):
            bench.spawn("echo", f"echo-{i + 1}")
    return rows


async def _wait_fetching(bench: Bench, workers: int) -> None:
    """Until the route's consumer holds a pull request from each worker (or a timeout)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        info = await bench.js.consumer_info(TASKS, durable_name(ROUTE))
        if info.num_waiting >= workers:
            return
        bench.check_children()
        await asyncio.sleep(POLL_S)
