"""``cogo bench --workflow-runs N``: workflow runs per second with 1, 2, ... orchestrators.

On the bench's system (its nats-server, dispatcher, echo worker and projector), for each
``--orchestrators K`` and each of ``--workflow-repeats`` rounds: K ``cogo run orchestrator``
processes start and split the partitions between them (read from the lease bucket), N
runs of ``BENCH_WORKFLOW`` (three echo tasks in a row and a gate) are sent at once, and the
clock stops when the last run's ``workflow_succeeded`` is seen on a core subscription.
The orchestrators then stop (draining, releasing their leases) before the next round.
Reported per K: the median runs/s over the rounds, every round, and nodes/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from typing import Any

from nats.aio.msg import Msg

from cogo.errors import CogoError
from cogo.streams.envelope import MSG_ID, encoder
from cogo.streams.topology import LEASE_BUCKET, ORCHESTRATOR_PARTITIONS
from cogo.workflows.inbox import StartRun, msg_id_of, subject_of
from cogo.workflows.planner import plan_workflow

BENCH_WORKFLOW: dict[str, Any] = {
    "id": "benchChain",
    "nodes": [
        {"id": "a", "type": "publish", "route": "echo.run.0", "payload": {"result": 1}},
        {"id": "b", "type": "publish", "route": "echo.run.0", "payload": {"result": "${nodes.a.result + 1}"}},
        {"id": "c", "type": "publish", "route": "echo.run.0", "payload": {"result": "${nodes.b.result + 1}"}},
        {"id": "check", "type": "gate", "condition": "nodes.c.result == 3"},
    ],
}
NODES = len(BENCH_WORKFLOW["nodes"])
POLL_S = 0.05


async def measure(bench: Any, runs: int, counts: list[int], repeats: int, timeout: float) -> dict[str, Any]:
    """Runs/s of ``runs`` workflow runs sent at once, per orchestrator count."""
    plan = plan_workflow(BENCH_WORKFLOW, {}, bench.config.route_policy).to_json()
    ended: dict[str, str] = {}

    async def on_end(msg: Msg) -> None:
        kind = msg.subject.split(".", 2)[1]
        ended.setdefault(msg.subject.rsplit(".", 1)[1], kind)

    subs = [
        await bench.nc.subscribe(f"events.{kind}.wf.benchChain.*", cb=on_end, pending_msgs_limit=1_000_000)
        for kind in ("workflow_succeeded", "workflow_failed")
    ]
    result: dict[str, Any] = {}
    try:
        for count in counts:
            rounds = []
            for repeat in range(repeats):
                labels = [f"orchestrator-{count}x-{repeat}-{i}" for i in range(count)]
                for label in labels:
                    bench.spawn("orchestrator", label)
                try:
                    await _until_shared(bench, count, time.monotonic() + timeout)
                    prefix = f"wf{count}x{repeat}-"
                    ids = [f"{prefix}{i}" for i in range(runs)]
                    update = bench.progress.task(f"{runs} workflow runs, {count} orchestrator(s)", runs)
                    began = time.perf_counter()
                    commands = [StartRun(run_id=run_id, plan=plan) for run_id in ids]
                    for start in range(0, runs, 500):
                        await bench.publisher.publish_all(
                            [
                                (subject_of(c.run_id), encoder.encode(c), {MSG_ID: msg_id_of(c)})
                                for c in commands[start : start + 500]
                            ]
                        )
                    deadline = time.monotonic() + timeout
                    while True:
                        finished = sum(1 for run_id in ids if run_id in ended)
                        update(finished, f"{finished:,}/{runs:,}")
                        if finished == runs:
                            break
                        if time.monotonic() > deadline:
                            raise CogoError(f"{runs - finished} workflow runs not finished")
                        bench.check_children()
                        await asyncio.sleep(POLL_S)
                    elapsed = time.perf_counter() - began
                    failed = [r for r in ids if ended[r] != "workflow_succeeded"]
                    if failed:
                        raise CogoError(f"{len(failed)} bench runs failed, e.g. {failed[0]}")
                    rounds.append(runs / elapsed)
                finally:
                    for label in labels:
                        await bench.stop_child(label)
            median = statistics.median(rounds)
            result[str(count)] = {
                "runs_per_s": round(median, 1),
                "nodes_per_s": round(median * NODES, 1),
                "rounds": [round(r, 1) for r in rounds],
            }
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    return {"runs": runs, "nodes_per_run": NODES, "by_orchestrators": result}


async def _until_shared(bench: Any, count: int, deadline: float) -> None:
    """Until ``count`` orchestrators hold every partition between them, balanced (no
    rebalancing is left to happen inside a timed round)."""
    kv = await bench.js.key_value(LEASE_BUCKET)
    while True:
        owners = set()
        for partition in range(ORCHESTRATOR_PARTITIONS):
            with contextlib.suppress(Exception):
                entry = await kv.get(f"partition.{partition}")
                owners.add((partition, json.loads(entry.value or b"{}").get("owner")))
        held = Counter(owner for _, owner in owners)
        balanced = len(held) == count and max(held.values()) - min(held.values()) <= 1
        if len(owners) == ORCHESTRATOR_PARTITIONS and balanced:
            return
        if time.monotonic() > deadline:
            raise CogoError(f"{count} orchestrators did not share the partitions in time")
        bench.check_children()
        await asyncio.sleep(0.2)
