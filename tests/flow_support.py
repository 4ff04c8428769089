"""What the flow-control tests share: dispatcher and echo processes, the admission
partitions and slots as the FLOW bucket holds them, and attempt intervals read back from the
events' own timestamps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from nats.js.client import JetStreamContext

from cogo.streams.envelope import new_id
from cogo.streams.events import Event
from cogo.streams.flow import slot_prefix
from cogo.streams.topology import FLOW, FLOW_BUCKET
from tests.helpers import submit, wait_until
from tests.upsystem import cogo_run, stop_all

ROUTE = "echo.run.0"
ENDS = ("execute_retry", "execute_done", "execute_failed")


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def start_actor(kind: str, url: str, config_path: Path, logs: Path) -> subprocess.Popen[bytes]:
    """``cogo run KIND`` on ``url`` with this config, its log a fresh file under ``logs``."""
    log = logs / f"{kind}-{new_id()[:6]}.log"
    return cogo_run(kind, url, "--config", str(config_path), log=log)


async def partition_owners(js: JetStreamContext) -> dict[int, str]:
    kv = await js.key_value(FLOW_BUCKET)
    return {
        int(key.split(".")[1]): json.loads(value)["owner"]
        for key, value in (await live_keys(kv, "partition.>")).items()
    }


async def live_keys(kv: Any, pattern: str) -> dict[str, bytes]:
    """The keys under ``pattern`` that hold a value now, read through a watch."""
    found: dict[str, bytes] = {}
    watcher = await kv.watch(pattern)
    try:
        async with asyncio.timeout(10):
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value and entry.operation not in ("DEL", "PURGE"):
                    found[entry.key] = entry.value
                else:
                    found.pop(entry.key, None)
    finally:
        await watcher.stop()
    return found


@contextlib.asynccontextmanager
async def two_dispatchers(
    js: JetStreamContext, url: str, config_path: Path, logs: Path, echoes: int = 1
) -> AsyncIterator[dict[str, subprocess.Popen[bytes]]]:
    procs = {f"dispatcher-{i}": start_actor("dispatcher", url, config_path, logs) for i in (1, 2)}
    procs.update({f"echo-{i}": start_actor("echo", url, config_path, logs) for i in range(echoes)})
    try:

        async def shared() -> bool:
            # both dispatchers hold admission partitions: the work is really split
            owners = await partition_owners(js)
            return len(owners) == 8 and len(set(owners.values())) == 2

        await wait_until(shared, 30, "two dispatchers sharing the admission partitions")
        yield procs
    finally:
        await stop_all(procs.values(), timeout=20)


def key_of(enqueued: Event) -> str:
    return (enqueued.data or {}).get("assignment", {}).get("key") or ""


def attempt_intervals(events: list[Event]) -> list[tuple[str, float, float]]:
    """(key, start, end) of every attempt: from its execute_enqueued to its result's event."""
    starts: dict[tuple[str, int], tuple[str, float]] = {}
    out = []
    for e in events:
        if e.type == "execute_enqueued" and e.task_id:
            starts[(e.task_id, e.attempt or 0)] = (key_of(e), ts(e.at))
    for e in events:
        if e.type in ENDS and e.task_id and (e.task_id, e.attempt or 0) in starts:
            key, start = starts[(e.task_id, e.attempt or 0)]
            out.append((key, start, ts(e.at)))
    return out


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    intervals = list(intervals)
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    most = now = 0
    for _, step in points:
        now += step
        most = max(most, now)
    return most


async def submit_keyed(
    js: JetStreamContext,
    key: str,
    count: int,
    prefix: str,
    priority: int | None = None,
    **payload: Any,
) -> list[str]:
    assignment: dict[str, Any] = {"key": key}
    if priority is not None:
        assignment["priority"] = priority
    return [
        await submit(js, task_id=f"{prefix}-{key}-{i}", payload={**payload, "__assignment": assignment})
        for i in range(count)
    ]


async def flow_is_empty(js: JetStreamContext, route: str = ROUTE) -> bool:
    kv = await js.key_value(FLOW_BUCKET)
    slots = await live_keys(kv, slot_prefix(route) + ">")
    held = (await js.stream_info(FLOW)).state.messages
    return not slots and held == 0
