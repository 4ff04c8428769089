"""Two apps for the trust-boundary tests: ``alice`` (the victim) and ``mallory`` (the
attacker's own, whose NATS user the tests act as). Loaded with
``--app tests.security_apps:alice --app tests.security_apps:mallory``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

import cogo

alice = cogo.App("alice")
mallory = cogo.App("mallory")


class Job(msgspec.Struct):
    gate: str | None = None  # a file: the handler waits for it between its two chunks
    fail_times: int = 0  # the first attempts fail (retryable)


def _secret() -> dict[str, str]:
    return {"by": "alice"}


@alice.agent(
    "alice.work.0", policy={"max_attempts": 3, "timeout_ms": 60000, "backoff": {"initial_ms": 500, "max_ms": 500}}
)
async def work(ctx: cogo.TaskContext, job: Job) -> dict[str, object]:
    """Emit, wait for the gate, run the step ``secret``, emit again; fail first if asked."""
    if ctx.attempt <= job.fail_times:
        raise cogo.WorkerError(f"attempt {ctx.attempt} fails on purpose")
    await ctx.emit({"from": "alice", "n": 1})
    if job.gate:  # a file the test creates: polled off the loop, as any blocking call
        while not await asyncio.to_thread(Path(job.gate).exists):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    secret = await ctx.step("secret", _secret)
    await ctx.emit({"from": "alice", "n": 2})
    return {"by": "alice", "secret": secret, "attempt": ctx.attempt}


@mallory.agent("mallory.x.0")
async def x(ctx: cogo.TaskContext, payload: dict[str, object]) -> dict[str, str]:
    return {"by": "mallory"}
