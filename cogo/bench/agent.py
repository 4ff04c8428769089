"""A decorated agent against the echo actor: the per-task cost of ``@app.agent``.

``app`` below is an ordinary user app (``cogo run cogo.bench.agent:app --agent bench_agent``):
a handler on ``bench.agent.0`` that takes a msgspec Struct and returns a dict. Its route is
declared as ``cogo up --app`` declares one (``declare_apps``: subject in ``TASKS``, durable
consumer, policy), its process is a real ``cogo run`` child, and its tasks go through the
real dispatcher like the echo tasks. The part runs ``--agent-tasks`` echo tasks, then as
many agent tasks, each a burst until projected (``Bench.run_tasks``), and reports for both
tasks/s and the worker process's CPU per task, plus agent / echo ratios: what the payload
validation, the handler call and the result encoding add over a hand-written ``Worker``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

import cogo
from cogo.bench.system import ROUTE, Bench, task_body

APP_REF = "cogo.bench.agent:app"
AGENT = "bench_agent"
AGENT_ROUTE = "bench.agent.0"
# the same payload both ways: the echo actor ignores the key, the agent validates it
PAYLOAD = b'{"n":1}'

app = cogo.App("bench")


class Ping(msgspec.Struct, forbid_unknown_fields=True):
    """The bench agent's payload."""

    n: int = 0


@app.agent(AGENT_ROUTE, name=AGENT)
async def bench_agent(ctx: cogo.TaskContext, ping: Ping) -> dict[str, int]:
    """Answer with the number it was given (validated in, a dict out)."""
    return {"n": ping.n}


STEPS_AGENT = "bench_steps"
STEPS_ROUTE = "bench.steps.0"


class Steps(msgspec.Struct, forbid_unknown_fields=True):
    """How many journaled steps the steps agent takes."""

    steps: int = 20


def _step(i: int) -> int:
    return i


@app.agent(STEPS_ROUTE, name=STEPS_AGENT)
async def bench_steps(ctx: cogo.TaskContext, job: Steps) -> dict[str, int]:
    """``job.steps`` journaled steps, one after the other (``cogo.bench.client``)."""
    total = 0
    for i in range(job.steps):
        total += await ctx.step(f"s{i}", _step, i)
    return {"total": total}


def _body(route: str) -> Callable[[str], bytes]:
    def body(task_id: str) -> bytes:
        return task_body(task_id, PAYLOAD, route=route)

    return body


async def agent_vs_echo(bench: Bench) -> dict[str, Any]:
    """tasks/s and worker CPU µs/task of the decorated agent and of echo, same run, same N."""
    count = bench.o.agent_tasks
    sub = await bench.nc.subscribe(f"events.execute_done.{AGENT_ROUTE}", cb=bench.on_done, pending_msgs_limit=1_000_000)
    bench.spawn(AGENT, "agent", target=APP_REF)
    try:
        # the agent process up and consuming before its clock starts
        await bench.run_tasks(min(200, count), "agent: warm-up", timeout=60, body=_body(AGENT_ROUTE))
        rows: dict[str, dict[str, Any]] = {}
        for name, workers, route in (("echo", "echo-", ROUTE), ("agent", "agent", AGENT_ROUTE)):
            before = bench.cpu_snapshot()
            elapsed = await bench.run_tasks(count, f"{name}: {count:,} tasks", body=_body(route))
            after = bench.cpu_snapshot()

            def us_per_task(prefix: str, before: dict[str, float] = before, after: dict[str, float] = after) -> float:
                used = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))
                return round(used / count * 1e6, 1)

            rows[name] = {
                "route": route,
                "tasks_per_s": round(count / elapsed, 1),
                "worker_cpu_us_per_task": us_per_task(workers),
                "dispatcher_cpu_us_per_task": us_per_task("dispatcher"),
            }
    finally:
        await sub.unsubscribe()
        await bench.stop_child("agent")
    echo, agent = rows["echo"], rows["agent"]
    return {
        "tasks": count,
        "echo": echo,
        "agent": agent,
        "tasks_per_s_ratio": round(agent["tasks_per_s"] / echo["tasks_per_s"], 3),
        "worker_cpu_ratio": round(agent["worker_cpu_us_per_task"] / max(echo["worker_cpu_us_per_task"], 0.1), 3),
    }
