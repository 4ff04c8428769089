"""Submit -> ``execute_done`` latency at a fixed offered load (``--rate N``, open loop).

Tasks go out on the clock (``rate`` per second for ``--duration`` seconds), never waiting
for completions; a task is done when this process sees its ``execute_done`` on a core
subscription, on the same clock as its submit time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cogo.bench.system import POLL_S, PUBLISH_WINDOW, Bench, percentile, task_body
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID


async def latency_at(bench: Bench, rate: int) -> dict[str, float]:
    """p50/p90/p99/max of submit -> done at ``rate`` tasks/s offered, and the rate achieved."""
    prefix = bench.task_prefix("l")
    total = max(1, int(rate * bench.o.duration))
    update = bench.progress.task(f"latency @ {rate}/s", total)
    submitted: dict[str, float] = {}
    acks: list[asyncio.Future[Any]] = []
    before = bench.done_count
    began = time.perf_counter()
    for i in range(total):
        due = began + i / rate
        delay = due - time.perf_counter()
        if delay > 0.001:  # open loop: never wait for completions, only for the clock
            await asyncio.sleep(delay)
            update(bench.done_count - before, "")
        tid = f"{prefix}{i}"
        submitted[tid] = time.perf_counter()
        acks.append(await bench.publisher.publish(EXECUTE_SUBJECT, task_body(tid), {MSG_ID: tid}))
        if len(acks) >= PUBLISH_WINDOW:
            await asyncio.gather(*acks)
            acks = []
    await asyncio.gather(*acks)
    sent_span = max(1e-6, max(submitted.values()) - began)
    deadline = time.monotonic() + max(30.0, bench.o.duration * 4)
    while any(t not in bench.done_at for t in submitted):
        if time.monotonic() > deadline:
            break
        bench.check_children()
        update(bench.done_count - before, "")
        await asyncio.sleep(POLL_S)
    samples = sorted((bench.done_at[t] - at) * 1000.0 for t, at in submitted.items() if t in bench.done_at)
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
