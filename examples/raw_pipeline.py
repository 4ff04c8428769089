"""The hops of one Cogo task, hand-written with plain nats-py: the yardstick for ``cogo bench``.

    python examples/raw_pipeline.py [--tasks 20000] [--sync always|default]

On a throwaway nats-server with Cogo's streams (same stream settings, same fsync), one
process does what the dispatcher and an echo worker do, minus everything Cogo adds
(policies, budgets, retries, heartbeats, the projector): submit -> ``orchestrator.execute.0``
-> (``execute_enqueued`` event + order on ``echo.run.0``) -> result on
``orchestrator.result.0`` -> ``execute_done`` event. Prints tasks/s from the first submit to
the last ``execute_done`` stored. Every message is stored and removed as the issue's
yardstick did: all three hops on the ``TASKS`` work queue. Cogo now sends the result on its
own limits-retention stream (``RESULTS``): the record moves off ``TASKS`` and its removal
goes, so with ``--sync always`` Cogo's ``TASKS`` fsyncs a task are fewer than this one's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig

from cogo.config import load_config
from cogo.streams.connection import connect
from cogo.streams.routes import ensure_subjects, route_subjects
from cogo.streams.server import EmbeddedServer
from cogo.streams.topology import TASKS, ensure_topology

WINDOW = 2000  # publishes awaiting their stream ack, per stage


async def stage(js, stream: str, durable: str, handle, stop: asyncio.Event) -> None:  # noqa: ANN001
    """Pull batches from ``durable``; for each message await ``handle`` then ack."""
    sub = await js.pull_subscribe_bind(durable, stream)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(500, timeout=0.2)
        except TimeoutError:
            continue
        await asyncio.gather(*(handle(m) for m in msgs))
        for m in msgs:
            await m.ack()


async def main(tasks: int, sync: str) -> None:
    with tempfile.TemporaryDirectory(prefix="cogo-raw-") as tmp:
        server = EmbeddedServer(Path(tmp), sync=sync)
        server.start()
        try:
            await server.wait_ready()
            nc = await connect(server.url, "raw-pipeline")
            js = nc.jetstream()
            # the streams with the three subjects of the pipeline, none of Cogo's consumers
            routes = ["orchestrator.execute.0", "echo.run.0", "orchestrator.result.0"]
            await ensure_topology(js, load_config())
            await ensure_subjects(js, TASKS, [s for r in routes for s in route_subjects(r)])
            for durable, subject in (
                ("raw-exec", "orchestrator.execute.0"),
                ("raw-echo", "echo.run.0"),
                ("raw-result", "orchestrator.result.0"),
            ):
                await js.add_consumer(
                    "TASKS",
                    ConsumerConfig(
                        durable_name=durable,
                        filter_subject=subject,
                        ack_policy=AckPolicy.EXPLICIT,
                        max_ack_pending=20_000,
                        ack_wait=60,
                    ),
                )
            done = 0
            finished = asyncio.Event()
            stop = asyncio.Event()

            async def on_execute(msg):  # noqa: ANN001, ANN202
                task = json.loads(msg.data)
                event = json.dumps({"type": "execute_enqueued", "task_id": task["task_id"]})
                await asyncio.gather(
                    js.publish(f"events.execute_enqueued.{task['route']}", event.encode()),
                    js.publish("echo.run.0", msg.data),
                )

            async def on_order(msg):  # noqa: ANN001, ANN202
                await js.publish("orchestrator.result.0", msg.data)

            async def on_result(msg):  # noqa: ANN001, ANN202
                nonlocal done
                task = json.loads(msg.data)
                event = json.dumps({"type": "execute_done", "task_id": task["task_id"]})
                await js.publish(f"events.execute_done.{task['route']}", event.encode())
                done += 1
                if done == tasks:
                    finished.set()

            workers = [
                asyncio.create_task(stage(js, "TASKS", "raw-exec", on_execute, stop)),
                asyncio.create_task(stage(js, "TASKS", "raw-echo", on_order, stop)),
                asyncio.create_task(stage(js, "TASKS", "raw-result", on_result, stop)),
            ]
            began = time.perf_counter()
            pending: list[asyncio.Future] = []
            for i in range(tasks):
                body = json.dumps({"task_id": f"raw-{i}", "route": "echo.run.0"}).encode()
                pending.append(await js.publish_async("orchestrator.execute.0", body))
                if len(pending) >= WINDOW:
                    await asyncio.gather(*pending)
                    pending = []
            await asyncio.gather(*pending)
            await asyncio.wait_for(finished.wait(), 600)
            elapsed = time.perf_counter() - began
            stop.set()
            await asyncio.gather(*workers)
            await nc.close()
            print(
                f"raw nats-py pipeline, sync {sync}: {tasks} tasks in {elapsed:.2f}s = {tasks / elapsed:,.0f} tasks/s"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--sync", choices=["always", "default"], default="always")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.sync))
