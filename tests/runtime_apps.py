"""Agents that exercise the agent runtime (``ctx.llm``, ``ctx.step``, ``ctx.emit``); they run
in the test's process, so ``RUNS`` counts what each step function really ran."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

import cogo

app = cogo.App("rt")
RUNS: Counter[str] = Counter()
FAST = {"max_attempts": 3, "timeout_ms": 20000, "backoff": {"initial_ms": 50, "multiplier": 1.0, "max_ms": 50}}


def work(name: str, tokens: int = 7) -> dict[str, Any]:
    """A step body (a plain function: it runs in a thread) that counts its runs."""
    RUNS[name] += 1
    return {"step": name, "run": RUNS[name]}


@app.agent("rt.steps.0", policy=FAST)
async def steps(ctx: cogo.TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    """Steps ``a`` then ``b``; attempts before ``fail_until`` fail between them."""
    key = p.get("key", ctx.task_id)

    async def charged(name: str) -> dict[str, Any]:
        ctx.report_usage(tokens=7)
        return await asyncio.to_thread(work, name)

    a = await ctx.step("a", charged, f"{key}:a")
    if ctx.attempt < p.get("fail_until", 1):
        raise cogo.WorkerError(f"attempt {ctx.attempt} fails after step a")
    b = await ctx.step("b", charged, f"{key}:b")
    return {"a": a, "b": b}


@app.agent("rt.misuse.0", policy=FAST)
async def misuse(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """Each ``how`` misuses the runtime one way."""
    how = p["how"]
    if how == "reuse":
        await ctx.step("same", work, f"{ctx.task_id}:1")
        await ctx.step("same", work, f"{ctx.task_id}:2")
    elif how == "not_json":
        await ctx.step("opaque", lambda: object())
    elif how == "nested":
        await ctx.step("outer", ctx.step, "inner", work, "x")
    elif how == "emit":
        await ctx.emit({"fine": True})
        await ctx.emit({"not": {1, 2}.__class__})
    elif how == "raises":
        key = f"{ctx.task_id}:raises"

        def flaky() -> str:
            RUNS[key] += 1
            if RUNS[key] == 1:
                raise RuntimeError("the step fails the first time")
            return "second time lucky"

        return await ctx.step("flaky", flaky)
    elif how == "big":
        key = f"{ctx.task_id}:big"

        def big() -> list[str]:
            RUNS[key] += 1
            return ["x" * 1000] * 100  # ~100 kB: over step_inline_max_bytes

        value = await ctx.step("big", big)
        if ctx.attempt == 1:
            raise cogo.WorkerError("fail once after the big step")
        return {"items": len(value), "first": value[0][:3], "runs": RUNS[key]}
    return None


@app.agent("rt.talk.0", policy={**FAST, "max_tokens": 2000})
async def talk(ctx: cogo.TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    """One ``ctx.llm.chat``; its reply is the result."""
    messages = p.get("messages") or [{"role": "user", "content": p.get("prompt", "hello")}]
    kwargs = {k: p[k] for k in ("model", "max_tokens", "tools", "stream") if k in p}
    reply = await ctx.llm.chat(messages, **kwargs)
    return msgspec.to_builtins(reply)  # type: ignore[no-any-return]


async def wait_for_file(path: Path) -> None:
    """Until ``path`` exists (the test opens the gate by creating it)."""
    while not await asyncio.to_thread(path.exists):  # noqa: ASYNC110 - a file, not an event
        await asyncio.sleep(0.05)


@app.agent("rt.speak.0", policy=FAST)
async def speak(ctx: cogo.TaskContext, p: dict[str, Any]) -> dict[str, int]:
    """Emit ``lines`` chunks; wait for ``gate`` (a file) after the first; fail if asked."""
    gate = Path(p["gate"]) if p.get("gate") else None
    for i in range(p.get("lines", 3)):
        await ctx.emit({"line": i, "attempt": ctx.attempt})
        if gate is not None and i == 0:
            await wait_for_file(gate)
    if ctx.attempt < p.get("fail_until", 1):
        raise cogo.WorkerError("fails after emitting")
    if p.get("permanent"):
        raise cogo.PermanentWorkerError("fails for good after emitting")
    return {"lines": p.get("lines", 3)}
