"""What a journaled step costs: ``python -m cogo.bench.journal [--steps N] [--sync S]``.

A benchmark, not a test: an agent on a private nats-server runs ``N`` steps whose function
does nothing, so each ``await ctx.step(...)`` costs only the runtime's work (encode the
result, append ``step_completed`` and wait for the stream's ack). Its first attempt then
fails on purpose; the second replays the ``N`` steps from the journal: the first replayed
step pays for the journal scan, the rest for a lookup. Printed: p50 / p99 / mean of each,
next to a bare ``await`` of the same function.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cogo

app = cogo.App("stepbench")


async def _nothing(i: int) -> dict[str, int]:
    return {"i": i}


@app.agent(
    "stepbench.run.0", policy={"max_attempts": 2, "timeout_ms": 600000, "backoff": {"initial_ms": 10, "max_ms": 10}}
)
async def run(ctx: cogo.TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    """``steps`` empty steps, timed one by one; the first attempt fails after them."""
    n = int(p["steps"])
    bare = []
    for i in range(n):
        t = time.perf_counter()
        await _nothing(i)
        bare.append(time.perf_counter() - t)
    timed = []
    for i in range(n):
        t = time.perf_counter()
        await ctx.step(f"s{i}", _nothing, i)
        timed.append(time.perf_counter() - t)
    if ctx.attempt == 1:  # the timings go out as output; the retry replays the journal
        await ctx.emit({"journaled": timed, "bare": bare})
        raise cogo.WorkerError("the first attempt fails on purpose")
    return {"replay": timed}


def _figures(seconds: list[float]) -> str:
    ms = sorted(s * 1000.0 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):8.3f} ms   p99 {p99:8.3f} ms   mean {statistics.fmean(ms):8.3f} ms"


async def bench(steps: int, sync: str) -> dict[str, list[float]]:
    from cogo.testing import CogoEnv

    with tempfile.TemporaryDirectory(prefix="cogo-stepbench-") as tmp:
        config = "[actors]\nmax_result_bytes = 16777216\n[runtime]\nmax_chunk_bytes = 16777216\n"
        async with CogoEnv(app, config=config, data_dir=Path(tmp), sync=sync) as env:
            handle = await env.client.submit("stepbench.run.0", {"steps": steps})
            result = await handle.result(timeout=600)
            (first,) = [chunk.data async for chunk in handle.stream()]
    return {
        "bare": first["bare"],
        "journaled": first["journaled"],
        "replay_first": result["replay"][:1],
        "replay": result["replay"][1:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cogo.bench.journal", description=__doc__)
    parser.add_argument("--steps", type=int, default=2000, help="steps per attempt (2,000)")
    parser.add_argument(
        "--sync",
        choices=["always", "default"],
        default="always",
        help="JetStream fsync: always (as `cogo up`) or the server default",
    )
    args = parser.parse_args(argv)
    got = asyncio.run(bench(args.steps, args.sync))
    print(f"journaled step overhead, {args.steps} steps, sync={args.sync}")
    print(f"  bare await of the step fn       {_figures(got['bare'])}")
    print(f"  ctx.step, first run (journaled) {_figures(got['journaled'])}")
    print(f"  ctx.step, replay: journal scan  {_figures(got['replay_first'])}")
    print(f"  ctx.step, replay: each after    {_figures(got['replay'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
