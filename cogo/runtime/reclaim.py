"""``cogo reclaim``: what is stuck in flight, redelivered, or stranded, per route consumer.

In a work-queue stream an acknowledged message is deleted, so a message still stored below
its consumer's ack floor (or already delivered, when nothing is in flight) was given up on (``max_deliver`` reached) without being
dead-lettered, e.g. because no dispatcher was running when the server's advisory fired.
``--dead-letter`` moves those to ``DLQ`` and appends their ``execute_failed`` events.

``RESULTS`` (workers' reports) has limits retention: an acknowledged report stays stored
until the dispatcher trims it, and the server does not say which stored reports were acked,
so nothing there can be told stranded from handled. Its consumer is listed with its
counters only; a report past ``max_deliver`` is dead-lettered from the server's advisory,
which fires while a dispatcher pulls from that consumer, i.e. while one runs to handle it.
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from cogo.config import Config
from cogo.runtime.deadletter import DeadLetterWatcher
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.envelope import RESULTS_SUBJECT
from cogo.streams.routes import durable_name
from cogo.streams.topology import RESULTS, stream_of, task_consumers

MAX_LISTED = 1000


async def reclaim(nc: NATS, config: Config, dead_letter: bool = False) -> dict[str, Any]:
    js = nc.jetstream()
    report: dict[str, Any] = {"consumers": []}
    dispatcher = ExecutorDispatcher(nc, config) if dead_letter else None
    watcher = DeadLetterWatcher(dispatcher, dispatcher.verdicts.report_dead_letter) if dispatcher else None
    consumers = await task_consumers(js)
    try:
        consumers.append(await js.consumer_info(RESULTS, durable_name(RESULTS_SUBJECT)))
    except NotFoundError:  # a bus from before RESULTS
        pass
    for info in consumers:
        route = info.config.filter_subject or info.name
        stream = stream_of(route)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        delivered = info.delivered.stream_seq if info.delivered else 0
        # with nothing in flight, every delivered message still stored was given up on;
        # otherwise only those below the ack floor are certainly stranded (on TASKS: an
        # acked message is deleted there, a report on RESULTS is not; see the docstring)
        limit = 0 if stream == RESULTS else delivered if not info.num_ack_pending else floor
        stranded: list[dict[str, Any]] = []
        seq = 1
        while seq <= limit and len(stranded) < MAX_LISTED:
            try:
                msg = await js.get_msg(stream, seq, subject=route, next=True)
            except NotFoundError:
                break
            if msg.seq is None or msg.seq > limit:
                break
            stranded.append({"seq": msg.seq, "subject": msg.subject, "bytes": len(msg.data or b"")})
            seq = msg.seq + 1
        moved = 0
        if watcher is not None:
            for item in stranded:
                if await watcher.dead_letter_seq(
                    item["seq"],
                    info.config.max_deliver or 0,
                    "stranded below the ack floor",
                    stream=stream,
                ):
                    moved += 1
        report["consumers"].append(
            {
                "route": route,
                "stream": stream,
                "consumer": info.name,
                "pending": info.num_pending,
                "in_flight": info.num_ack_pending,
                "redelivered": info.num_redelivered,
                "waiting_pulls": info.num_waiting,
                "ack_floor": floor,
                "stranded": stranded,
                "dead_lettered": moved,
            }
        )
    return report
