"""Apps used by the tests of ``cogo.App`` (importable as ``tests.sample_apps:app``)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any, TypedDict

import msgspec
import pydantic

import cogo

app = cogo.App("sample")


class Greeting(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    times: int = 1


class Greeted(msgspec.Struct):
    text: str
    pid: int


@app.agent("sample.greet.0", policy={"max_attempts": 2, "timeout_ms": 5000})
async def greet(ctx: cogo.TaskContext, who: Greeting) -> Greeted:
    """Greet someone (a Struct in, a Struct out)."""
    return Greeted(" ".join([f"hello {who.name}"] * who.times), os.getpid())


class Flaky(pydantic.BaseModel):
    fail_times: int = pydantic.Field(ge=0)
    permanent: bool = False


@app.agent("sample.flaky.0", policy={"max_attempts": 4})
async def flaky(ctx: cogo.TaskContext, job: Flaky) -> dict[str, int]:
    """Fail the first ``fail_times`` attempts (a pydantic model in)."""
    if job.permanent:
        raise cogo.PermanentWorkerError("asked to fail for good")
    if ctx.attempt <= job.fail_times:
        raise cogo.WorkerError(f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


class Order(TypedDict):
    items: list[str]


@app.agent("sample.boom.0", policy={"max_attempts": 2})
async def boom(ctx: cogo.TaskContext, order: Order) -> None:
    """Raise an unexpected exception (a TypedDict in)."""
    raise KeyError(f"no such item: {order['items'][0]}")


@dataclasses.dataclass
class Nap:
    seconds: float


@app.agent("sample.sleepy.0", policy={"max_attempts": 2, "timeout_ms": 1500})
async def sleepy(ctx: cogo.TaskContext, nap: Nap) -> dict[str, float]:
    """Sleep (a dataclass in); past its 1.5 s timeout the attempt times out."""
    await asyncio.sleep(nap.seconds)
    return {"slept": nap.seconds}


@app.agent("sample.spend.0", policy={"max_tokens": 100, "max_attempts": 3})
async def spend(ctx: cogo.TaskContext, payload: dict[str, Any]) -> dict[str, int]:
    """Report ``tokens`` per call, ``calls`` times (a plain dict in)."""
    for _ in range(int(payload.get("calls", 1))):
        ctx.report_usage(tokens=int(payload.get("tokens", 0)))
    return {"remaining": ctx.remaining_tokens}


@app.agent("sample.odd.0")
async def odd(ctx: cogo.TaskContext, payload: dict[str, Any]) -> Any:
    """Return something that is not JSON data, or something too large for the bus."""
    if payload.get("big"):
        return "x" * 600_000
    return object()


class Upper(cogo.Worker):
    """A class-based agent."""

    route = "sample.upper.0"

    async def run(self, order: Any, ctx: cogo.TaskContext) -> cogo.Outcome:
        return cogo.Outcome(result=str(ctx.payload.get("text", "")).upper())


app.add(Upper, name="upper", policy={"timeout_ms": 3000})


# another app claiming one of sample's routes: refused when both are loaded
rival = cogo.App("rival")


@rival.agent("sample.greet.0")
async def greet_too(ctx: cogo.TaskContext, payload: dict[str, Any]) -> str:
    return "rival"
