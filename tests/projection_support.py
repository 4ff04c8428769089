"""What the projector tests share: a workload through the real dispatcher and echo actor,
dead letters, a snapshot of every table, a facade over a projection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from cogo.agents.echo import EchoActor
from cogo.http.app import create_app
from cogo.http.metrics import routes as metric_routes
from cogo.http.state import AppState
from cogo.projections import rollups
from cogo.runtime.base import publish_dead_letter
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.policies import PolicyStore
from tests.helpers import EventReader, running, submit

RESULT_TYPES = ("execute_done", "execute_retry", "execute_failed")


async def workload(nats_server: Any, js: Any, config: Any) -> EventReader:
    """Real tasks through the dispatcher and echo: successes, retries, failures, a violation."""
    payloads: list[dict[str, Any]] = []
    for i in range(24):
        payloads.append({"sleep_ms": (i * 7) % 40, "tokens": 10 + i, "cost_usd": 0.001})
    payloads += [{"fail_times": 1, "tokens": 5}, {"fail_times": 2, "sleep_ms": 5}]
    payloads += [
        {"fail_always": "permanent"},
        {"fail_always": True, "__assignment": {"max_attempts": 2}},
    ]
    payloads += [{"__assignment": {"model": "not-a-model"}}]  # policy violation: no attempt
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        ids = [await submit(js, payload=p) for p in payloads]
        reader = EventReader(js)
        await reader.wait_terminal(ids, timeout=20)
    await reader.poll()
    return reader


async def dead_letter(js: Any, n: int) -> None:
    for seq in range(1, n + 1):
        await publish_dead_letter(
            js,
            subject="echo.run.0",
            data=b'{"task_id": "dead-%d", "route": "echo.run.0"}' % seq,
            seq=1000 + seq,
            deliveries=3,
            code="dead_letter",
            reason="gave up after 3 deliveries",
            actor="dispatcher@test:1",
        )


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table and view of the projection, in a stable order."""
    queries = {
        "bus_events": "SELECT * FROM bus_events ORDER BY seq",
        "dlq_messages": "SELECT * FROM dlq_messages ORDER BY seq",
        "checkpoint": "SELECT * FROM projector_checkpoint ORDER BY stream",
        "task_latency": "SELECT * FROM task_latency ORDER BY task_id",
        "latency_by_route": "SELECT * FROM latency_by_route ORDER BY ALL",
        "latency_by_minute": "SELECT * FROM latency_by_minute ORDER BY ALL",
        "failure_trend": "SELECT * FROM failure_trend ORDER BY ALL",
        "event_counts": "SELECT * FROM event_counts ORDER BY ALL",
        "cohort_latency": "SELECT * FROM cohort_latency ORDER BY ALL",
        **{
            table: f"SELECT * FROM {table} ORDER BY ALL"
            for table in [
                *(f.table(g) for f in rollups.FAMILIES for g in rollups.GRAINS),
                "rollup_run_tasks",
                "rollup_gate_failures",
                "workflow_runs",
                "rollup_state",
            ]
        },
    }
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {name: con.execute(sql).fetchall() for name, sql in queries.items()}
    finally:
        con.close()


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), written out."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def app_for(nc: Any, js: Any, config: Any, data_dir: Path, projector: Any = None) -> Any:
    state = AppState(nc=nc, config=config, policies=PolicyStore(js), data_dir=data_dir, projector=projector)
    return create_app(state, extra_routes=metric_routes)
