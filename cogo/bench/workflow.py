"""Workflow step latency: runs of a chain of N ``publish`` nodes through the real orchestrator.

The orchestrator runs as its own ``cogo run orchestrator`` process for this part only (it
follows EVENTS, which the saturated figure should not pay for). Each run is a plan of
``--step-nodes`` publish nodes to the echo route, in list order (each waits for the
previous one's ``execute_done``), started with a ``StartRun`` command; runs go one at a
time, so the figure is latency, not throughput. Per run: start -> ``workflow_succeeded``
as this process sees it, and the gaps between consecutive ``node_succeeded`` events (one
step: the orchestrator decides, submits, the task runs, its result comes back).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import msgspec
from nats.aio.msg import Msg

from cogo.bench.system import POLL_S, ROUTE, Bench, percentile
from cogo.errors import CogoError
from cogo.streams.catalogue import NODE_SUCCEEDED, RUN_OUTCOMES, WORKFLOW_SUCCEEDED
from cogo.workflows.inbox import StartRun, send_command
from cogo.workflows.planner import plan_workflow

WORKFLOW_ID = "benchSteps"


class _RunEvent(msgspec.Struct):
    type: str = ""
    correlation_id: str = ""


_decoder = msgspec.json.Decoder(_RunEvent)


def chain_definition(nodes: int) -> dict[str, Any]:
    """A workflow of ``nodes`` empty echo tasks, one after the other."""
    return {
        "id": WORKFLOW_ID,
        "description": "cogo bench: a chain of publish nodes",
        "version": 1,
        "nodes": [{"id": f"step{i + 1}", "type": "publish", "route": ROUTE, "payload": {}} for i in range(nodes)],
    }


async def workflow_steps(bench: Bench) -> dict[str, Any]:
    """Run latency and per-step latency of ``--step-runs`` chains of ``--step-nodes``."""
    runs, nodes = bench.o.step_runs, bench.o.step_nodes
    plan = plan_workflow(chain_definition(nodes), {}, bench.config.route_policy).to_json()
    seen: dict[str, list[tuple[str, float]]] = {}

    async def on_event(msg: Msg) -> None:
        at = time.perf_counter()
        try:
            event = _decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        seen.setdefault(event.correlation_id, []).append((event.type, at))

    sub = await bench.nc.subscribe(f"events.*.wf.{WORKFLOW_ID}.*", cb=on_event)
    bench.spawn("orchestrator")
    update = bench.progress.task(f"workflow, {nodes} steps", runs)
    run_ms: list[float] = []
    step_ms: list[float] = []
    prefix = bench.task_prefix("w")
    try:
        # the first run also waits for the orchestrator process to come up
        for index in range(runs + 1):
            run_id = f"{prefix}{index}"
            began = time.perf_counter()
            await send_command(bench.js, StartRun(run_id=run_id, plan=plan))
            ended = await _wait_outcome(bench, seen, run_id, 120.0 if index == 0 else 60.0)
            if index == 0:
                continue  # warm-up
            run_ms.append((ended - began) * 1000.0)
            done = [at for kind, at in seen[run_id] if kind == NODE_SUCCEEDED]
            step_ms.extend((b - a) * 1000.0 for a, b in zip(done, done[1:], strict=False))
            update(index, f"{run_ms[-1]:,.0f} ms a run")
    finally:
        await sub.unsubscribe()
        await bench.stop_child("orchestrator")
    steps = sorted(step_ms)
    return {
        "runs": runs,
        "nodes": nodes,
        "run_ms_median": round(statistics.median(run_ms), 2),
        "step_ms_median": round(statistics.median(run_ms) / nodes, 2),
        "step_gap_ms": {
            "p50": round(percentile(steps, 50), 2),
            "p90": round(percentile(steps, 90), 2),
            "max": round(steps[-1], 2) if steps else 0.0,
        },
    }


async def _wait_outcome(bench: Bench, seen: dict[str, list[tuple[str, float]]], run_id: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        for kind, at in seen.get(run_id, []):
            if kind == WORKFLOW_SUCCEEDED:
                return at
            if kind in RUN_OUTCOMES:
                raise CogoError(f"workflow run {run_id} ended with {kind}")
        if time.monotonic() > deadline:
            raise CogoError(f"workflow run {run_id} did not finish in {timeout:.0f}s")
        bench.check_children()
        await asyncio.sleep(POLL_S / 5)
