"""Read endpoints at a history size: ``cogo bench --history N`` (repeatable).

For each N, a fresh throwaway ``nats-server`` (``sync default``: filling is not what is
measured) gets N synthetic events spread over the last ``SPAN_S`` seconds (every one of
them inside a 1 h window), with one task in ``RUNS_EVERY`` part of a ``benchFlow``
workflow run. A projector in this process projects them, then the facade's read
endpoints, served in-process through ``httpx.ASGITransport``, are each requested
``--history-requests`` times after one warm-up (the rollups folded first, as between two
folds of a live system); the median is the figure, and the
spread (min-max) is reported beside it. With several sizes the ratio of each endpoint's
median to the smallest size's is reported too: the endpoints should stay flat in history.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from cogo.bench.projections import WORKFLOW_ID, synthetic_events
from cogo.config import Config, load_config
from cogo.errors import CogoError
from cogo.runtime.startup import Startup
from cogo.streams.envelope import MSG_ID
from cogo.streams.publisher import Publisher

SPAN_S = 50 * 60.0  # the events' timestamps: the 50 minutes before the fill
RUNS_EVERY = 50
FILL_WINDOW = 10_000  # publishes awaiting their ack, at most
ENDPOINTS = {
    "dashboard": ("/api/dashboard", {"window": "1h"}),
    "bus_latency": ("/api/metrics/bus/latency", {"window": "1h"}),
    "bus_latency_series": ("/api/metrics/bus/latency", {"window": "1h", "bucket": "1m"}),
    "prometheus": ("/metrics", {}),
    "workflow_metrics": (f"/api/metrics/workflows/{WORKFLOW_ID}", {}),
}


async def history_figures(
    sizes: list[int], *, requests: int, config_path: Path | None, progress: Any
) -> dict[str, Any]:
    """Per size: fill, project, then the median ms of each endpoint; ratios to the smallest."""
    config = load_config(config_path)
    by_size: dict[str, Any] = {}
    for size in sorted(set(sizes)):
        with tempfile.TemporaryDirectory(prefix="cogo-bench-history-") as tmp:
            by_size[str(size)] = await _one_size(size, Path(tmp), config, requests, progress)
    result: dict[str, Any] = {"requests": requests, "window": "1h", "sizes": by_size}
    if len(by_size) > 1:
        smallest = by_size[min(by_size, key=int)]["endpoints_ms"]
        result["ratio_to_smallest"] = {
            size: {
                name: round(figures["endpoints_ms"][name]["median"] / smallest[name]["median"], 2)
                for name in ENDPOINTS
                if smallest[name]["median"] > 0
            }
            for size, figures in by_size.items()
        }
    return result


async def _one_size(size: int, work_dir: Path, config: Config, requests: int, progress: Any) -> dict[str, Any]:
    # `cogo up`'s start-up with the bench's options: a throwaway server (filling is not what
    # is measured: no fsync per message), the projector and the facade in this process
    async with Startup(
        work_dir / "data",
        config,
        sync="default",
        server_dir=work_dir / "nats",
        name="cogo-bench-history",
    ) as boot:
        nc = await boot.start_bus()
        await boot.declare()
        began = time.perf_counter()
        await _fill(nc, size, progress)
        fill_s = time.perf_counter() - began
        began = time.perf_counter()
        projector = await boot.start_projector()
        await projector.wait_caught_up(timeout=1800)
        project_s = time.perf_counter() - began
        # as a live system is between folds (its unfolded tail is the last couple of
        # seconds of traffic, whatever the history), not right after a catch-up
        await projector.store.write(projector.store.fold_sync)
        endpoints = await _time_endpoints(boot, requests)
        db_mb = _file_mb(projector.path)
    update = progress.task(f"history {size:,}: endpoints", 1)
    update(1, ", ".join(f"{k} {v['median']:.0f} ms" for k, v in endpoints.items()))
    return {
        "events": size,
        "fill_s": round(fill_s, 1),
        "project_s": round(project_s, 1),
        "duckdb_mb": round(db_mb, 1),
        "endpoints_ms": endpoints,
    }


def _file_mb(path: Path) -> float:
    wal = Path(f"{path}.wal")
    return (path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6


async def _fill(nc: Any, size: int, progress: Any) -> None:
    events = await asyncio.to_thread(synthetic_events, size, span_s=SPAN_S, runs_every=RUNS_EVERY)
    update = progress.task(f"history {size:,}: fill EVENTS", size)
    publisher = Publisher(nc)
    await publisher.start()
    try:
        acks: list[asyncio.Future[Any]] = []
        for i, (subject, body, event_id) in enumerate(events, 1):
            acks.append(await publisher.publish(subject, body, {MSG_ID: event_id}, timeout=60))
            if len(acks) >= FILL_WINDOW:
                await asyncio.gather(*acks)
                acks = []
                update(i, "")
        await asyncio.gather(*acks)
        update(size, "")
    finally:
        await publisher.stop()


async def _time_endpoints(boot: Startup, requests: int) -> dict[str, dict[str, float]]:
    from cogo.http import dashboard, metrics, orchestrator
    from cogo.http.state import AppState

    policies = await boot.start_policies()
    state = AppState(nc=boot.admin, config=boot.config, policies=policies, data_dir=boot.data_dir)
    app = boot.facade(state, [*metrics.routes, *dashboard.routes, *orchestrator.routes])
    figures: dict[str, dict[str, float]] = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for name, (path, params) in ENDPOINTS.items():
            samples = []
            for attempt in range(requests + 1):
                began = time.perf_counter()
                response = await client.get(path, params=params, timeout=120)
                elapsed = (time.perf_counter() - began) * 1000.0
                if response.status_code != 200:
                    raise CogoError(f"GET {path}: {response.status_code} {response.text[:300]}")
                if attempt:  # the first one warms caches up
                    samples.append(elapsed)
            figures[name] = {
                "median": round(statistics.median(samples), 2),
                "min": round(min(samples), 2),
                "max": round(max(samples), 2),
            }
    return figures
