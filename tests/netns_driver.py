"""What ``tests/test_cluster_netns.py`` runs *inside* a host's network namespace (its
addresses are reachable only from there): ``python -m tests.netns_driver load|replicas|check``.

``load``: submit N echo tasks to a facade at a steady rate, one JSON line per answer
(``{"task_id", "status", "code", "at"}``); a 503 is retried after its ``Retry-After``, any
other failure is recorded as it is. ``replicas``: every stream's and durable consumer's
replicas, as JSON. ``check``: read EVENTS and the streams' shape and print one JSON object
with what the test asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import httpx
import nats.errors
from nats.js import api

from cogo.streams.connection import connect
from cogo.streams.events import decode_event

COGO_STREAMS = ["TASKS", "RESULTS", "EVENTS", "DLQ", "FLOW", "OUTPUTS"]


async def load(args: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {args.token}"}
    async with httpx.AsyncClient(base_url=args.http, headers=headers, timeout=30) as http:
        start = time.monotonic()
        for i in range(args.count):
            # a steady rate: the i-th task leaves at start + i / rate
            await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
            task_id = f"{args.prefix}-{i}"
            body = {"route": "echo.run.0", "task_id": task_id, "payload": {"result": i}}
            for _ in range(60):
                try:
                    r = await http.post("/api/tasks", json=body)
                    code, status = r.json().get("code"), r.status_code
                except httpx.HTTPError as exc:
                    code, status, r = type(exc).__name__, 0, None
                print(json.dumps({"task_id": task_id, "status": status, "code": code, "at": time.time()}), flush=True)
                if status != 503:
                    break
                # the same task_id again: the bus deduplicates a submission that did land
                await asyncio.sleep(float(r.headers.get("retry-after", 1)) if r else 1.0)


async def check(args: argparse.Namespace) -> None:
    nc = await connect(args.nats, "netns-check", user="admin", password=args.admin_password)
    js = nc.jetstream()
    try:
        sub = await js.pull_subscribe(
            "events.>",
            stream="EVENTS",
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=60.0,
                deliver_policy=api.DeliverPolicy.ALL,
                mem_storage=True,
            ),
        )
        done: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        done_at: list[float] = []
        timeline: Counter[str] = Counter()  # "<second> <type>": how many
        while True:
            try:
                msgs = await sub.fetch(2000, timeout=2)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for msg in msgs:
                event = decode_event(msg.data)
                timeline[f"{int(msg.metadata.timestamp.timestamp())} {event.type}"] += 1
                if event.type == "execute_done":
                    done[event.task_id] += 1
                    if event.task_id.startswith(args.stall_prefix):
                        done_at.append(msg.metadata.timestamp.timestamp())
                elif event.type == "execute_failed":
                    failed[event.task_id] += 1
        replicas = await shape(js)
        events = (await js.stream_info("EVENTS")).state.messages
        projections = {}
        for url, token in zip(args.facade, args.facade_token, strict=True):
            projections[url] = await projected(url, token, events)
    finally:
        await nc.close()
    print(
        json.dumps(
            {
                "done": done,
                "failed": failed,
                "done_at": sorted(done_at),
                "replicas": replicas,
                "events": events,
                "projections": projections,
                "timeline": timeline,
            }
        )
    )


async def shape(js: Any) -> dict[str, int]:
    """The replicas each RAFT group has (its leader and peers), not what a config asked."""
    replicas: dict[str, int] = {}
    for name in COGO_STREAMS:
        info = await js.stream_info(name)
        replicas[name] = peers(info.cluster)
        for consumer in await js.consumers_info(name):
            if consumer.config.durable_name:
                replicas[f"{name}/{consumer.name}"] = peers(consumer.cluster)
    return replicas


async def replicas(args: argparse.Namespace) -> None:
    nc = await connect(args.nats, "netns-shape", user="admin", password=args.admin_password)
    try:
        print(json.dumps(await shape(nc.jetstream())))
    finally:
        await nc.close()


def peers(cluster: api.ClusterInfo | None) -> int:
    return 0 if cluster is None else 1 + len(cluster.replicas or [])


async def projected(url: str, token: str, events: int, timeout: float = 60.0) -> int:
    """The facade's row count of ``bus_events`` once it reaches ``events`` (or the deadline)."""
    headers = {"Authorization": f"Bearer {token}"}
    rows = -1
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await http.post("/api/sql", json={"sql": "SELECT count(*) FROM bus_events"})
            if r.status_code == 200:
                rows = int(r.json()["rows"][0][0])
                if rows >= events:
                    break
            await asyncio.sleep(0.5)
    return rows


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load")
    p.add_argument("--http", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--prefix", required=True)
    p.set_defaults(func=load)
    p = sub.add_parser("check")
    p.add_argument("--nats", required=True)
    p.add_argument("--admin-password", required=True)
    p.add_argument("--facade", action="append", default=[])
    p.add_argument("--facade-token", action="append", default=[])
    p.add_argument("--stall-prefix", default="", help="tasks whose finishing times are kept")
    p.set_defaults(func=check)
    p = sub.add_parser("replicas")
    p.add_argument("--nats", required=True)
    p.add_argument("--admin-password", required=True)
    p.set_defaults(func=replicas)
    args = parser.parse_args(argv)
    return asyncio.run(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
