"""``cogo bench``: what a user feels. Awaiting through ``cogo.Client``, and a worker killed.

Three figures, each beside the bus's own on the same run:

- **awaited vs observed**: ``--client-tasks`` echo tasks (2,000), ``--client-in-flight`` at a
  time (200), submitted through ``cogo.Client``. Either each awaited with ``handle.result()``
  or each seen ended on its ``execute_done`` by a plain subscription, ``ROUNDS`` rounds each
  way, alternating: the difference is what awaiting through the client costs.
- **a task of ``--client-steps`` journaled steps** (20), ``--client-step-runs`` times one at a
  time: latency from submit to ``handle.result()`` returning, and to its ``execute_done``
  reaching a plain subscription, per task (p50 / p99 of each).
- **kill -> done**: an echo task sleeping ``KILL_TASK_MS`` is claimed, then every echo worker
  is SIGKILLed in the middle of it and started again (what a supervisor does): seconds from
  the kill to the task's ``execute_done``, ``--kill-repeats`` times.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import msgspec
from nats.aio.msg import Msg

from cogo.bench.agent import APP_REF, STEPS_AGENT, STEPS_ROUTE
from cogo.bench.system import ROUTE, Bench, percentile, task_body
from cogo.errors import CogoError
from cogo.sdk.client import Client
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID
from cogo.streams.topology import TASKS

ROUNDS = 3  # of each way of awaiting, alternating
KILL_TASK_MS = 500  # the echo task a kill interrupts: long enough to be killed mid-way
KILL_AFTER_S = 0.1  # after its claim


class _Ended(msgspec.Struct):
    task_id: str = ""


_ended_decoder = msgspec.json.Decoder(_Ended)


class _Observer:
    """A plain subscription to a route's ``execute_done``: when each task's arrived."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[float]] = {}

    def expect(self, task_id: str) -> asyncio.Future[float]:
        future = self.waiting[task_id] = asyncio.get_running_loop().create_future()
        return future

    async def on_done(self, msg: Msg) -> None:
        now = time.perf_counter()
        try:
            task_id = _ended_decoder.decode(msg.data).task_id
        except msgspec.DecodeError:
            return
        future = self.waiting.pop(task_id, None)
        if future is not None and not future.done():
            future.set_result(now)


async def client_figures(bench: Bench) -> dict[str, Any]:
    """Every figure of this module (the parts the options leave on)."""
    o = bench.o
    observer = _Observer()
    sub = await bench.nc.subscribe(f"events.execute_done.{ROUTE}", cb=observer.on_done, pending_msgs_limit=1_000_000)
    steps_sub = await bench.nc.subscribe(
        f"events.execute_done.{STEPS_ROUTE}", cb=observer.on_done, pending_msgs_limit=1_000_000
    )
    out: dict[str, Any] = {}
    try:
        async with Client(bench.url, name="cogo-bench-client") as client:
            if o.client_tasks > 0:
                out["awaited"] = await _awaited(bench, client, observer)
            if o.client_step_runs > 0:
                out["steps"] = await _steps(bench, client, observer)
        if o.kill_repeats > 0:
            out["kill"] = await _kill_to_done(bench)
    finally:
        await sub.unsubscribe()
        await steps_sub.unsubscribe()
    return out


async def _window(count: int, in_flight: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run ``one(i)`` for ``i < count``, ``in_flight`` at a time; seconds it took."""
    slots = asyncio.Semaphore(in_flight)

    async def run(i: int) -> None:
        async with slots:
            await one(i)

    began = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(count)))
    return time.perf_counter() - began


async def _awaited(bench: Bench, client: Client, observer: _Observer) -> dict[str, Any]:
    o = bench.o
    count, in_flight, timeout = o.client_tasks, o.client_in_flight, o.timeout

    async def by_client(prefix: str, i: int) -> None:
        handle = await client.submit(ROUTE, {}, task_id=f"{prefix}{i}")
        await handle.result(timeout=timeout)

    async def by_event(prefix: str, i: int) -> None:
        seen = observer.expect(f"{prefix}{i}")
        await client.submit(ROUTE, {}, task_id=f"{prefix}{i}")
        async with asyncio.timeout(timeout):
            await seen

    # alternating rounds, the median of each: the machine's moods fall on both alike
    rates: dict[str, list[float]] = {"event_observed": [], "client_awaited": []}
    update = bench.progress.task(f"client: {count:,} tasks, {in_flight} in flight", 2 * ROUNDS)
    await _window(min(200, count), in_flight, partial(by_client, bench.task_prefix("w")))
    for _ in range(ROUNDS):
        for name, one in (("event_observed", by_event), ("client_awaited", by_client)):
            elapsed = await _window(count, in_flight, partial(one, bench.task_prefix("c")))
            rates[name].append(round(count / elapsed, 1))
            update(sum(map(len, rates.values())), f"{name} {rates[name][-1]:,.0f} tasks/s")
    client_rate = statistics.median(rates["client_awaited"])
    event_rate = statistics.median(rates["event_observed"])
    return {
        "tasks": count,
        "in_flight": in_flight,
        "client_awaited_per_s": client_rate,
        "event_observed_per_s": event_rate,
        "ratio": round(client_rate / event_rate, 3),
        "rounds": rates,
    }


async def _steps(bench: Bench, client: Client, observer: _Observer) -> dict[str, Any]:
    o = bench.o
    bench.spawn(STEPS_AGENT, "steps", target=APP_REF)
    client_ms: list[float] = []
    event_ms: list[float] = []
    try:
        update = bench.progress.task(f"client: {o.client_steps}-step task", o.client_step_runs)
        prefix = bench.task_prefix("s")
        for i in range(-3, o.client_step_runs):  # three untimed: the agent up and warm
            task_id = f"{prefix}{i}"
            seen = observer.expect(task_id)
            began = time.perf_counter()
            handle = await client.submit(STEPS_ROUTE, {"steps": o.client_steps}, task_id=task_id)
            await handle.result(timeout=o.timeout)
            awaited = time.perf_counter()
            async with asyncio.timeout(o.timeout):
                observed = await seen
            if i >= 0:
                client_ms.append((awaited - began) * 1000.0)
                event_ms.append((observed - began) * 1000.0)
                update(i + 1, "")
    finally:
        await bench.stop_child("steps")
    client_ms.sort()
    event_ms.sort()
    return {
        "runs": o.client_step_runs,
        "steps": o.client_steps,
        "client_ms": {"p50": round(percentile(client_ms, 50), 2), "p99": round(percentile(client_ms, 99), 2)},
        "event_ms": {"p50": round(percentile(event_ms, 50), 2), "p99": round(percentile(event_ms, 99), 2)},
        "client_minus_event_p50_ms": round(
            statistics.median(c - e for c, e in zip(client_ms, event_ms, strict=True)), 2
        ),
    }


async def _kill_to_done(bench: Bench) -> dict[str, Any]:
    o = bench.o
    echoes = [label for label in bench.children if label.startswith("echo")]
    update = bench.progress.task("kill -> done", o.kill_repeats)
    seconds: list[float] = []
    for i in range(o.kill_repeats):
        task_id = f"{bench.task_prefix('k')}0"
        payload = b'{"sleep_ms":%d}' % KILL_TASK_MS
        await bench.publisher.publish(EXECUTE_SUBJECT, task_body(task_id, payload), {MSG_ID: task_id})
        deadline = time.monotonic() + 60
        while (await bench.js.consumer_info(TASKS, "echo-run-0")).num_ack_pending < 1:
            if time.monotonic() > deadline:
                raise CogoError("kill -> done: no echo worker claimed the task")
            await asyncio.sleep(0.01)
        await asyncio.sleep(KILL_AFTER_S)
        if task_id in bench.done_at:
            raise CogoError("kill -> done: the task ended before the kill")
        killed = time.perf_counter()
        for label in echoes:  # whichever holds it dies without a word to the bus
            child = bench.children[label]
            child.send_signal(signal.SIGKILL)
            await asyncio.to_thread(child.wait, 10)
            bench.spawn("echo", label)  # and is started again, as a supervisor would
        while task_id not in bench.done_at:
            if time.monotonic() > deadline + o.timeout:
                raise CogoError("kill -> done: the task did not end")
            await asyncio.sleep(0.005)
        seconds.append(round(bench.done_at[task_id] - killed, 3))
        update(i + 1, f"{seconds[-1]:.2f} s")
    return {
        "repeats": o.kill_repeats,
        "task_ms": KILL_TASK_MS,
        "ack_wait_s": bench.config.bus.ack_wait_s,
        "kill_to_done_s": seconds,
        "median_s": round(statistics.median(seconds), 3),
    }
