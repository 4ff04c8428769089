"""The cluster's shape belongs to the cluster: no process lowers (or raises) replicas.

A real 3-node JetStream cluster on loopback. A process whose configuration says 1 replica
declares over streams made at 3 (a worker started without ``--config``): everything keeps 3,
and the warning names both values. Only ``set_replicas`` (``cogo cluster replicas N``)
changes the shape; a process configured for more than the cluster has then neither raises it
nor crashes on ``consumer config replica count exceeds parent stream``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from msgspec.structs import replace
from nats.aio.client import Client as NATS

from cogo.config import Config
from cogo.runtime.loader import declare_apps
from cogo.streams.cluster import LocalCluster
from cogo.streams.connection import connect
from cogo.streams.registry import declare
from cogo.streams.routes import RouteDecl
from cogo.streams.topology import EVENTS, TASKS, durable_name, set_replicas

COGO_STREAMS = ["TASKS", "RESULTS", "EVENTS", "DLQ", "FLOW", "OUTPUTS"]


def with_replicas(config: Config, replicas: int) -> Config:
    return replace(config, bus=replace(config.bus, replicas=replicas))


@pytest.fixture
async def cluster_nc(tmp_path: Path) -> AsyncIterator[NATS]:
    cluster = LocalCluster(tmp_path / "cluster", 3, sync="default")
    cluster.start()
    try:
        await cluster.wait_ready()
        nc = await connect(cluster.url, "test-replicas")
        try:
            yield nc
        finally:
            await nc.close()
    finally:
        cluster.stop()


async def declare_settled(nc: NATS, config: Config) -> None:
    """Declare every app's routes; the meta leader of a new cluster may still be settling."""
    last: Exception | None = None
    for _ in range(100):
        try:
            await declare_apps(nc.jetstream(), config)
            return
        except Exception as exc:  # noqa: BLE001 - "no suitable peers" until all three joined
            last = exc
            await asyncio.sleep(0.2)
    raise AssertionError(f"the cluster never took the topology: {last}")


async def replicas_of(nc: NATS) -> dict[str, int]:
    """Every Cogo stream's replicas, and every durable consumer's on TASKS and RESULTS."""
    js = nc.jetstream()
    out = {}
    for name in COGO_STREAMS:
        info = await js.stream_info(name)
        out[name] = int(info.config.num_replicas or 1)
        for consumer in await js.consumers_info(name):
            if consumer.config.durable_name:
                out[f"{name}/{consumer.name}"] = int(consumer.config.num_replicas or 0)
    return out


async def test_a_process_configured_for_fewer_replicas_keeps_the_clusters(
    cluster_nc: NATS, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    await declare_settled(cluster_nc, with_replicas(config, 3))
    before = await replicas_of(cluster_nc)
    assert set(before.values()) == {3}, before
    assert f"{TASKS}/{durable_name('echo.run.0')}" in before

    # a worker started as the README once showed: no --config, so [bus] replicas = 1
    caplog.set_level(logging.WARNING, logger="cogo.streams.topology")
    await declare_apps(cluster_nc.jetstream(), with_replicas(config, 1))
    assert await replicas_of(cluster_nc) == before
    warnings = [r.getMessage() for r in caplog.records if "replica" in r.getMessage()]
    assert any(m.startswith(f"stream {EVENTS} has 3 replica(s)") and "says 1" in m for m in warnings), warnings
    assert any(m.startswith(f"consumer {TASKS}/") and "says 1" in m for m in warnings), warnings


async def test_only_the_admin_command_changes_the_shape(cluster_nc: NATS, config: Config) -> None:
    js = cluster_nc.jetstream()
    await declare_settled(cluster_nc, with_replicas(config, 3))
    changed = await set_replicas(js, 1)
    assert any(line.startswith(f"stream {EVENTS}: 3 -> 1") for line in changed), changed
    assert set((await replicas_of(cluster_nc)).values()) == {1}

    # a process configured for 3 neither raises the shape back nor crashes on a consumer
    # with more replicas than its stream; a route new to the cluster takes its stream's count
    three = with_replicas(config, 3)
    await declare_apps(js, three)
    new_route = RouteDecl(route="extra.work.0", app="test", agent="extra")
    await declare(js, three, [new_route])
    after = await replicas_of(cluster_nc)
    assert set(after.values()) == {1}, after
    assert after[f"{TASKS}/{durable_name('extra.work.0')}"] == 1

    changed = await set_replicas(js, 3)
    assert f"stream {TASKS}: 1 -> 3" in changed
    assert set((await replicas_of(cluster_nc)).values()) == {3}
    assert await set_replicas(js, 3) == []  # nothing left to change
    assert cluster_nc.connected_url is not None
    url = cluster_nc.connected_url.geturl()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cogo", "cluster", "replicas", "3", "--nats-url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "already at 3 replica(s)" in done.stdout, done.stderr
