"""Durable agents: what suspension, resumption and ``ctx.call`` cost.

Three agents of ``app`` below run as real ``cogo run`` processes against the bench's system:

- ``benchdur.wait.0`` waits for signal ``go``: ``--durable-tasks`` of them are submitted and
  all suspend (the bench waits for every ``execute_suspended``); what they hold then is
  measured: bytes in the store per suspended task (the ``suspensions`` record and the
  TTL's message schedule) and the agent process's resident memory, before and after. Then
  each is signalled, one every few milliseconds, and **suspend -> resume** latency is the
  time from the signal's publication to its ``execute_resumed`` event (the dispatcher
  re-delivered it), and to its ``execute_done`` (the handler replayed and finished);
- ``benchdur.call.0`` calls ``benchdur.echo.0`` once with ``ctx.call`` and returns how long
  the call took inside the handler (from a journaled start, so a suspension counts);
  compared with a plain submit of ``benchdur.echo.0`` from the bench (submit ->
  ``execute_done``), one task at a time. With the default ``suspend_after_ms`` such a quick
  child answers while the parent waits in its process; with 0 every call suspends.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from typing import Any

from nats.aio.msg import Msg

import cogo
from cogo.bench.system import Bench
from cogo.streams.commands import signal_message
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID, encoder
from cogo.streams.events import decode_event
from cogo.streams.topology import SUSPENSION_BUCKET, TASKS

APP_REF = "cogo.bench.durable:app"
WAIT, CALL, ECHO = "benchdur.wait.0", "benchdur.call.0", "benchdur.echo.0"
SIGNAL_GAP_S = 0.005  # signals one at a time: latency, not saturation
CALLS = 100

app = cogo.App("benchdur")


@app.agent(WAIT, name="dur_wait", policy={"ttl_ms": 3_600_000})
async def dur_wait(ctx: cogo.TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    """Wait for signal ``go``."""
    return {"got": await ctx.wait_signal("go")}


@app.agent(CALL, name="dur_call")
async def dur_call(ctx: cogo.TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    """Call the echo agent once; say how long the call took, a suspension included (the
    start is journaled, so a resumed run measures from the first run's start)."""
    started = await ctx.step("started", time.time)
    await ctx.call(ECHO, {"n": 1}, key="echo", assignment={"max_tokens": 100})
    return {"call_ms": (time.time() - started) * 1000.0}


@app.agent(ECHO, name="dur_echo")
async def dur_echo(ctx: cogo.TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    """Answer at once."""
    return {"n": p.get("n")}


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in open(f"/proc/{pid}/status").read().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 2)
    return 0.0


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2), "n": len(values)}


class _Seen:
    """When each task's events of some types arrived (perf_counter), and their data."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}
        self.data: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    async def on(self, msg: Msg) -> None:
        event = decode_event(msg.data)
        key = (event.type, event.task_id or "")
        if key not in self.at:
            self.at[key] = time.perf_counter()
            self.counts[event.type] = self.counts.get(event.type, 0) + 1
            if event.type == "execute_done" and isinstance(event.data, dict):
                self.data[event.task_id or ""] = event.data.get("result")

    async def until(self, kind: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.counts.get(kind, 0) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.counts.get(kind, 0)} of {count} {kind} events")
            await asyncio.sleep(0.02)


async def _submit(bench: Bench, route: str, task_id: str) -> None:
    body = {"task_id": task_id, "route": route, "payload": {}}
    await bench.js.publish(EXECUTE_SUBJECT, encoder.encode(body), headers={MSG_ID: task_id})


async def _store_bytes(bench: Bench) -> int:
    kv = await bench.js.stream_info(f"KV_{SUSPENSION_BUCKET}")
    tasks = await bench.js.stream_info(TASKS)
    return int(kv.state.bytes) + int(tasks.state.bytes)


async def durable_figures(bench: Bench) -> dict[str, Any]:
    """Suspend -> resume latency, memory per suspended task, ctx.call vs a plain submit."""
    count = bench.o.durable_tasks
    seen = _Seen()
    subs = [
        await bench.nc.subscribe(f"events.{kind}.{route}", cb=seen.on, pending_msgs_limit=1_000_000)
        for kind in ("execute_suspended", "execute_resumed", "execute_done")
        for route in (WAIT, CALL, ECHO)
    ]
    for name in ("dur_wait", "dur_call", "dur_echo"):
        bench.spawn(name, name, target=APP_REF)
    try:
        # warm-up: as many tasks suspended and resumed first, so that the agent process's
        # heap has grown to what such a batch needs; a second batch then shows what each
        # suspended task keeps in it (nothing is the design)
        warm = [f"{bench.task_prefix('v')}{i}" for i in range(count)]
        for tid in warm:
            await _submit(bench, WAIT, tid)
        await seen.until("execute_suspended", count, bench.o.timeout)
        for tid in warm:
            await _send_signal(bench, tid)
        await seen.until("execute_done", count, bench.o.timeout)
        prefix = bench.task_prefix("w")
        rss_before = _rss_mb(bench.children["dur_wait"].pid)
        bytes_before = await _store_bytes(bench)
        ids = [f"{prefix}{i}" for i in range(count)]
        for tid in ids:
            await _submit(bench, WAIT, tid)
        await seen.until("execute_suspended", 2 * count, bench.o.timeout)
        held_bytes = await _store_bytes(bench) - bytes_before
        rss_after = _rss_mb(bench.children["dur_wait"].pid)
        sent: dict[str, float] = {}
        for tid in ids:
            sent[tid] = time.perf_counter()
            await _send_signal(bench, tid)
            await asyncio.sleep(SIGNAL_GAP_S)
        await seen.until("execute_done", 2 * count, bench.o.timeout)
        resumed = [(seen.at[("execute_resumed", t)] - sent[t]) * 1000 for t in ids]
        done = [(seen.at[("execute_done", t)] - sent[t]) * 1000 for t in ids]
        # ctx.call round trip against a plain submit, one task at a time
        plain: list[float] = []
        calls: list[float] = []
        echo_prefix, call_prefix = bench.task_prefix("e"), bench.task_prefix("c")
        base = seen.counts.get("execute_done", 0)
        for i in range(CALLS):
            started = time.perf_counter()
            await _submit(bench, ECHO, f"{echo_prefix}{i}")
            await seen.until("execute_done", base + 1, 60)
            plain.append((seen.at[("execute_done", f"{echo_prefix}{i}")] - started) * 1000)
            await _submit(bench, CALL, f"{call_prefix}{i}")
            await seen.until("execute_done", base + 3, 60)  # the child's and the parent's
            result = seen.data.get(f"{call_prefix}{i}") or {}
            calls.append(float(result.get("call_ms", 0.0)))
            base += 3
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for name in ("dur_wait", "dur_call", "dur_echo"):
            await bench.stop_child(name)
    return {
        "suspended_tasks": count,
        "suspend_to_resumed": _pcts(resumed),
        "suspend_to_done": _pcts(done),
        "store_bytes_per_suspended_task": round(held_bytes / max(count, 1), 1),
        "worker_rss_mb": {"before": rss_before, "with_all_suspended": rss_after},
        "worker_rss_kb_per_suspended_task": round((rss_after - rss_before) * 1024 / count, 2),
        "call_round_trip": _pcts(calls),
        "plain_submit_round_trip": _pcts(plain),
        "suspend_after_ms": bench.config.runtime.suspend_after_ms,
    }


async def _send_signal(bench: Bench, task_id: str) -> None:
    subject, data, headers = signal_message(task_id, "go", {"n": 1}, route=WAIT)
    await bench.js.publish(subject, data, headers=headers)
