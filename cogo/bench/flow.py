"""``cogo bench --flow-tasks N``: what flow control costs the dispatcher, per task.

On the bench's system (its nats-server, dispatcher(s), echo worker(s), projector), rounds
with flow control off and on alternate, ``--flow-repeats`` of each: N echo tasks spread over
``KEYS`` keys, sent at once to ``echo.run.0`` (the same bodies both ways, key included).
*Off*, the route has no flow policy; *on*, it has every limit set far above the load, so
nothing is held back: the cost of the path, not of waiting. With the bench's one
dispatcher, each task takes the fast path (its slot counted in memory and recorded in the
route's slot log, one record per batch, and freed the same way when its result is handled);
with ``--dispatchers 2``, about half of them are held in ``FLOW`` by the dispatcher that
does not admit the route. Each switch is followed by an untimed warm-up (the
policy reaches every dispatcher, an admitter takes the route).

Per round: the dispatchers' CPU per task (``/proc``), every process's CPU per task, and
tasks/s until every task's ``execute_done`` is projected. Reported: the medians per mode
and every round.
"""

from __future__ import annotations

import statistics
import zlib
from typing import Any

from cogo.streams.policies import reset_policy, set_policy

ROUTE = "echo.run.0"
KEYS = 16
WARM_UP = 200
# every limit set and none reached by a bench burst
LIMITS = {"concurrency": 100_000, "concurrency_per_key": 100_000, "rate_per_key_s": 100_000.0, "burst": 100_000}


def keyed_body(task_id: str) -> bytes:
    key = zlib.crc32(task_id.encode()) % KEYS
    return b'{"task_id":"%s","route":"%s","payload":{"__assignment":{"key":"tenant-%d"}}}' % (
        task_id.encode(),
        ROUTE.encode(),
        key,
    )


async def measure(bench: Any, tasks: int, repeats: int) -> dict[str, Any]:
    """Dispatcher CPU per task and tasks/s with flow control off and on, alternating."""
    rounds: list[dict[str, Any]] = []
    try:
        for repeat in range(repeats):
            for mode in ("off", "on"):
                if mode == "on":
                    await set_policy(bench.js, ROUTE, {"flow": LIMITS}, actor="bench")
                else:
                    await reset_policy(bench.js, ROUTE, actor="bench")
                await bench.run_tasks(WARM_UP, f"warm-up, flow {mode}", body=keyed_body)
                before = bench.cpu_snapshot()
                elapsed = await bench.run_tasks(
                    tasks,
                    f"{tasks:,} tasks, flow {mode} ({repeat + 1}/{repeats})",
                    body=keyed_body,
                )
                after = bench.cpu_snapshot()
                used = {k: v - before.get(k, 0.0) for k, v in after.items()}
                dispatchers = sum(v for k, v in used.items() if k.startswith("dispatcher"))
                rounds.append(
                    {
                        "mode": mode,
                        "tasks_per_s": round(tasks / elapsed, 1),
                        "dispatcher_cpu_us_per_task": round(dispatchers / tasks * 1e6, 1),
                        "nats_server_cpu_us_per_task": round(used.get("nats-server", 0.0) / tasks * 1e6, 1),
                        "total_cpu_us_per_task": round(sum(used.values()) / tasks * 1e6, 1),
                    }
                )
    finally:
        await reset_policy(bench.js, ROUTE, actor="bench")
    summary: dict[str, Any] = {"tasks": tasks, "keys": KEYS, "repeats": repeats, "limits": LIMITS, "rounds": rounds}
    for mode in ("off", "on"):
        mine = [r for r in rounds if r["mode"] == mode]
        summary[mode] = {name: round(statistics.median(r[name] for r in mine), 1) for name in mine[0] if name != "mode"}
    off, on = summary["off"], summary["on"]
    summary["dispatcher_cpu_us_added_per_task"] = round(
        on["dispatcher_cpu_us_per_task"] - off["dispatcher_cpu_us_per_task"], 1
    )
    return summary
