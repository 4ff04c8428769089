"""A local 3-node JetStream cluster on loopback (`cogo up --cluster 3`, fault tests).

Each node has its own client port, cluster port and store dir; every node lists every
other as a route. Streams are then created with ``replicas = 3`` so losing one node keeps
every stream available (RAFT needs a majority: 2 of 3).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cogo.streams.server import EmbeddedServer, free_port


class LocalCluster:
    """``size`` nats-server processes forming one JetStream cluster named ``cogo``."""

    def __init__(self, data_dir: Path, size: int = 3, *, sync: str = "always") -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        cluster_ports = [free_port() for _ in range(size)]
        routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
        self.nodes = [
            EmbeddedServer(
                Path(data_dir) / f"node{i}",
                sync=sync,
                name=f"cogo-{i}",
                cluster_port=cluster_ports[i],
                routes=[r for j, r in enumerate(routes) if j != i],
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: clients connect to all seeds."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            node.start()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every node answers JetStream requests (a meta leader was elected)."""
        await asyncio.gather(*(node.wait_ready(timeout) for node in self.nodes))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
