"""Projector ingest benchmark: ``python -m cogo.bench.projections [--events N]``.

Starts a throwaway nats-server, fills EVENTS with N realistic events (the dispatcher's
four types, with usage and timing data), then times a fresh projector from zero to
caught up, a replay of the same stream, and the DuckDB writes alone (bodies already in
memory). Prints events/s for each.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from cogo.config import load_config
from cogo.projections.replay import Rebuild
from cogo.projections.store import EventBatch, ProjectionStore
from cogo.runtime.startup import Startup
from cogo.streams.catalogue import (
    EXECUTE_DONE,
    EXECUTE_ENQUEUED,
    EXECUTE_FAILED,
    EXECUTE_RETRY,
    GATE_FAILED,
    GATE_PASSED,
    WORKFLOW_EVENT_TYPES,
    WORKFLOW_FAILED,
    WORKFLOW_STARTED,
    WORKFLOW_SUCCEEDED,
)
from cogo.streams.envelope import MSG_ID, Usage
from cogo.streams.events import Event, encode_event, event_subject, iso, make_event
from cogo.workflows.history import subject_of

WORKFLOW_ID = "benchFlow"


# a resolved assignment as the dispatcher writes it (the catalogue checks every key)
_ASSIGNMENT = {
    "model": "local",
    "max_tokens": 4000,
    "max_cost_usd": 0.5,
    "timeout_ms": 30000,
    "ttl_ms": 600000,
    "max_attempts": 3,
    "backoff": {"initial_ms": 500, "multiplier": 2.0, "max_ms": 30000},
}


def synthetic_events(
    count: int,
    seed: int = 7,
    *,
    span_s: float | None = None,
    end: float | None = None,
    runs_every: int = 0,
) -> list[tuple[str, bytes, str]]:
    """(subject, body, event_id) of ``count`` events shaped like the dispatcher's.

    With ``span_s`` the tasks' timestamps (``at`` included) spread evenly over the
    ``span_s`` seconds before ``end`` (default now), as a system busy for that long would
    write them; otherwise every event is stamped now. With ``runs_every`` = k, every k-th
    task belongs to a run of the ``benchFlow`` workflow (its start, node, gate and outcome
    events around the task; one gate in five fails).
    """
    rng = random.Random(seed)
    out: list[tuple[str, bytes, str]] = []
    now = time.time() if end is None else end
    # ~2.1 events per task (a retry for one in ten): enough to place the last task near `end`
    expected_tasks = max(1.0, count / 2.1)
    task = 0
    while len(out) < count:
        task += 1
        tid = f"bench-{task:08d}"
        route = f"echo.run.{task % 3}"
        if span_s is None:
            submitted = now - 3600 + task * 0.001
        else:
            submitted = now - span_s + min(1.0, task / expected_tasks) * span_s
        run_id = f"bench-run-{task:08d}" if runs_every and task % runs_every == 0 else None
        common = {"task_id": tid, "correlation_id": run_id or tid, "route": route}
        qw, dur = rng.expovariate(1 / 5.0), rng.expovariate(1 / 40.0)
        claimed = submitted + qw / 1000
        timing = {"submitted_at": iso(submitted), "claimed_at": iso(claimed)}
        usage = Usage(tokens=rng.randint(10, 2000), cost_usd=0.001, duration_ms=dur)
        events: list[tuple[Event, float]] = []
        if run_id is not None:
            events.append((_run_event(WORKFLOW_STARTED, run_id, "started", plan={}), submitted))
        events.append(
            (
                make_event(
                    EXECUTE_ENQUEUED,
                    event_id=f"{tid}:enqueued:1",
                    actor="dispatcher@b:1",
                    attempt=1,
                    queue_wait_ms=0.4,
                    data={"submitted_at": iso(submitted), "deadline": iso(submitted + 600), "assignment": _ASSIGNMENT},
                    **common,
                ),
                submitted,
            )
        )
        kind = rng.random()
        finished = claimed + dur / 1000
        if kind < 0.1:
            events.append(
                (
                    make_event(
                        EXECUTE_RETRY,
                        event_id=f"{tid}:retry:1",
                        actor="echo@b:1",
                        attempt=1,
                        queue_wait_ms=qw,
                        duration_ms=dur,
                        backoff_ms=200,
                        next_attempt_at=iso(finished + 0.2),
                        error_code="worker.error",
                        error="echo asked to fail attempt 1",
                        usage=usage,
                        data=timing,
                        **common,
                    ),
                    finished,
                )
            )
        terminal = EXECUTE_FAILED if kind < 0.03 else EXECUTE_DONE
        events.append(
            (
                make_event(
                    terminal,
                    event_id=f"{tid}:terminal",
                    actor="echo@b:1",
                    attempt=1,
                    queue_wait_ms=qw,
                    duration_ms=dur,
                    usage=usage,
                    error_code="worker.permanent" if terminal == EXECUTE_FAILED else None,
                    error="no" if terminal == EXECUTE_FAILED else None,
                    data={**timing, "result": {"ok": True}} if terminal == EXECUTE_DONE else timing,
                    **common,
                ),
                finished,
            )
        )
        if run_id is not None:
            passed = terminal == EXECUTE_DONE and rng.random() >= 0.2
            gate = GATE_PASSED if passed else GATE_FAILED
            events.append(
                (
                    _run_event(
                        gate,
                        run_id,
                        "verdict:outcome:1",
                        node_id="verdict",
                        condition="nodes.build.status == 'succeeded'",
                        verdict="passed" if passed else "failed",
                    ),
                    finished + 0.001,
                )
            )
            outcome = WORKFLOW_SUCCEEDED if passed else WORKFLOW_FAILED
            run_ms = round((finished + 0.002 - submitted) * 1000.0, 3)
            events.append(
                (
                    _run_event(
                        outcome, run_id, "outcome", duration_ms=run_ms, failed=None if passed else "node verdict failed"
                    ),
                    finished + 0.002,
                )
            )
        for event, at in events:
            if span_s is not None:
                event = msgspec.structs.replace(event, at=iso(at))
            subject = subject_of(event) if event.type in WORKFLOW_EVENT_TYPES else None
            out.append((subject or event_subject(event), encode_event(event), event.event_id))
    return out[:count]


def _run_event(
    type: str,
    run_id: str,
    suffix: str,
    *,
    duration_ms: float | None = None,
    failed: str | None = None,
    **data: Any,
) -> Event:
    return make_event(
        type,
        event_id=f"{run_id}:{suffix}",
        correlation_id=run_id,
        actor="orchestrator@b:1",
        duration_ms=duration_ms,
        error_code="workflow.gate_failed" if failed else None,
        error=failed,
        data={"run_id": run_id, "workflow_id": WORKFLOW_ID, **data},
    )


async def fill(js: object, events: list[tuple[str, bytes, str]]) -> None:
    pending = []
    for subject, body, event_id in events:
        pending.append(await js.publish_async(subject, body, headers={MSG_ID: event_id}))  # type: ignore[attr-defined]
        if len(pending) >= 4000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def main(count: int, batch: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cogo-bench-") as tmp:
        data_dir = Path(tmp)
        # `cogo up`'s start-up with the bench's options: a throwaway server, no agents
        async with Startup(data_dir, load_config(), name="cogo-bench") as boot:
            nc = await boot.start_bus()
            await boot.declare()
            began = time.perf_counter()
            await fill(boot.js, synthetic_events(count))
            print(f"filled EVENTS with {count} events in {time.perf_counter() - began:.1f}s")

            began = time.perf_counter()
            projector = await boot.start_projector(batch=batch)
            await projector.wait_caught_up(timeout=600)
            elapsed = time.perf_counter() - began
            rows = projector.streams["EVENTS"].rows
            await projector.stop()
            boot.projector = None
            print(f"projector: {rows} events in {elapsed:.2f}s = {rows / elapsed:,.0f} events/s")

            rebuild = Rebuild(nc, data_dir / "replay.duckdb", batch=batch)
            began = time.perf_counter()
            await rebuild.run()
            result = await rebuild.finish()
            elapsed = time.perf_counter() - began
            replayed = result.messages["EVENTS"]
            print(f"replay:    {replayed} events in {elapsed:.2f}s = {replayed / elapsed:,.0f} events/s")

        # DuckDB alone: the same bodies, already in memory, in batches of `batch`
        store = ProjectionStore(data_dir / "store-only.duckdb")
        store.open_sync()
        bodies = [body for _, body, _ in synthetic_events(count)]
        began = time.perf_counter()
        for start in range(0, count, batch):
            chunk = bodies[start : start + batch]
            seqs = list(range(start + 1, start + len(chunk) + 1))
            store.apply_events_sync(EventBatch(seqs, chunk))
        elapsed = time.perf_counter() - began
        store.close_sync()
        store.shutdown()
        print(f"duckdb:    {count} events in {elapsed:.2f}s = {count / elapsed:,.0f} events/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.events, args.batch))
