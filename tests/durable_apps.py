"""Durable agents for the tests: calls, sleeps, signals, suspension; they run in the test's
process (``cogo_env``), so ``RUNS`` counts what each handler and child really ran."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

import cogo

app = cogo.App("dur")
RUNS: Counter[str] = Counter()
FAST = {
    "max_attempts": 2,
    "timeout_ms": 20000,
    "ttl_ms": 120000,
    "backoff": {"initial_ms": 50, "multiplier": 1.0, "max_ms": 50},
}


@app.agent("dur.sleep.0", policy=FAST)
async def sleeper(ctx: cogo.TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    RUNS[f"{ctx.task_id}:runs"] += 1
    await ctx.sleep(p["s"])
    RUNS[f"{ctx.task_id}:after"] += 1
    return {"slept": p["s"]}


@app.agent("dur.signal.0", policy=FAST)
async def waiter(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    RUNS[f"{ctx.task_id}:runs"] += 1
    if p.get("pause"):
        await ctx.step("pause", asyncio.sleep, p["pause"])
    try:
        return {"got": await ctx.wait_signal("go", timeout_s=p.get("timeout"))}
    except cogo.SignalTimeout:
        return {"timeout": True}


@app.agent("dur.child.0", policy={**FAST, "max_tokens": 300})
async def child(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    RUNS[f"child:{ctx.task_id}"] += 1
    if p.get("tokens"):
        ctx.report_usage(tokens=p["tokens"])
    if p.get("fail"):
        raise cogo.PermanentWorkerError(f"child {p['topic']} fails")
    if p.get("wait"):
        await ctx.wait_signal("go")
        await ctx.step("done", _mark, f"done:{ctx.task_id}")
    return {"topic": p["topic"], "budget": ctx.assignment.max_tokens}


def _mark(name: str) -> None:
    RUNS[name] += 1


@app.agent("dur.parent.0", policy={**FAST, "max_tokens": 1000})
async def parent(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    RUNS[f"parent:{ctx.task_id}"] += 1
    extra = {k: p[k] for k in ("fail", "tokens", "wait") if k in p}
    notes = await asyncio.gather(
        *(
            ctx.call(p.get("route", "dur.child.0"), {"topic": t, **extra}, assignment=p.get("assignment"), key=t)
            for t in p["topics"]
        )
    )
    return {"notes": notes, "remaining": ctx.remaining_tokens}


@app.agent("dur.recurse.0", policy=FAST)
async def recurse(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """Calls itself without end: the depth limit (or the budget) stops it."""
    RUNS["recurse"] += 1
    return await ctx.call("dur.recurse.0", {"n": p.get("n", 0) + 1}, key="again")


@app.agent("dur.nondet.0", policy=FAST)
async def nondet(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """Asks for different steps on its second run: a replay that does not match."""
    RUNS[f"nondet:{ctx.task_id}"] += 1
    first = "a" if RUNS[f"nondet:{ctx.task_id}"] == 1 else "b"
    await ctx.step(first, lambda: first)
    await ctx.sleep(p.get("s", 1.0))
    return first


@app.agent("dur.slow.0", policy=FAST)
async def slow(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """Runs until cancelled (its next await gets CancelledError)."""
    RUNS[f"slow:{ctx.task_id}"] += 1
    try:
        await asyncio.sleep(p.get("s", 60))
    except asyncio.CancelledError:
        RUNS[f"slow-cancelled:{ctx.task_id}"] += 1
        raise
    return "done"


@app.agent("dur.tree.0", policy={**FAST, "max_tokens": 5000})
async def tree(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """A parent whose children wait for a signal (a tree to cancel), and a slow one."""
    calls = [ctx.call("dur.child.0", {"topic": t, "wait": True}, key=t) for t in ("x", "y")]
    calls.append(ctx.call("dur.slow.0", {"s": 60}, key="slow"))
    return await asyncio.gather(*calls)


# run as its own process (``cogo run tests.durable_apps:waiting``) by the fault and scale tests
waiting = cogo.App("durwait")


@waiting.agent("durwait.signal.0", policy={**FAST, "ttl_ms": 600000, "max_attempts": 3})
async def wait_for_go(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """Waits for signal ``go``, then runs one step that counts (exactly once per task)."""
    data = await ctx.wait_signal("go")
    return await ctx.step("after", _count, ctx.task_id, data)


def _count(task_id: str, data: Any) -> Any:
    path = os.environ.get("DUR_LEDGER")
    if path:
        with open(path, "a") as ledger:
            ledger.write(f"{task_id}\n")
    return {"task": task_id, "data": data}


# declared by a test but started only later: its tasks wait in the queue meanwhile
queued = cogo.App("durq")


@queued.agent("durq.child.0", policy=FAST)
async def queued_child(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    RUNS[f"queued:{ctx.task_id}"] += 1
    return "ran"


@app.agent("dur.group.0", policy={**FAST, "max_tokens": 1000})
async def group(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """Calls in a TaskGroup (the run suspends through an ExceptionGroup), then a sleep."""
    async with asyncio.TaskGroup() as tg:
        calls = [
            tg.create_task(ctx.call("dur.child.0", {"topic": t, "wait": True}, key=t, assignment={"max_tokens": 100}))
            for t in ("m", "n")
        ]
    await ctx.sleep(0.5)
    return [c.result()["topic"] for c in calls]


@app.agent("dur.nondet_call.0", policy={**FAST, "max_tokens": 1000})
async def nondet_call(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """Calls a child under another key on its second run."""
    RUNS[f"nondet_call:{ctx.task_id}"] += 1
    key = "a" if RUNS[f"nondet_call:{ctx.task_id}"] == 1 else "b"
    return await ctx.call("dur.child.0", {"topic": key, "wait": True}, key=key, assignment={"max_tokens": 100})
