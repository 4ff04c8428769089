"""Dead-lettering of messages JetStream gave up on after ``max_deliver`` deliveries.

The server announces each one on ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``
with its stream sequence, for ``TASKS`` (commands) and ``RESULTS`` (workers' reports). The
watcher (run inside every dispatcher process, as a queue group so exactly one handles each
advisory) copies the message to ``DLQ`` with its reason, removes it from its stream so it
never blocks the queue (a work-queue message past ``max_deliver`` would stay stored; a
result past it is not redelivered, and removing it keeps ``cogo reclaim`` from finding it
again), and has the dispatcher append ``execute_failed`` with ``error_code =
"dead_letter"``. ``cogo reclaim`` finds any it missed while no dispatcher ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from cogo.errors import DeadLetter
from cogo.runtime.base import Actor, publish_dead_letter
from cogo.streams.topology import MAX_DELIVERIES_ADVISORY, RESULTS, TASKS

log = logging.getLogger(__name__)

# report(subject, data, error_code, reason, deliveries): append the execute_failed event
Reporter = Callable[[str, bytes, str, str, int], Awaitable[None]]


class DeadLetterWatcher:
    """Moves messages past ``max_deliver`` to ``DLQ`` and reports them."""

    def __init__(self, dispatcher: Actor, report: Reporter) -> None:
        self.dispatcher = dispatcher
        self.report = report
        self.js = dispatcher.js
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for stream in (TASKS, RESULTS):
            self._subs.append(
                await self.dispatcher.nc.subscribe(
                    f"{MAX_DELIVERIES_ADVISORY}.{stream}.*", queue="cogo-deadletter", cb=self._on_advisory
                )
            )

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_advisory(self, msg: Msg) -> None:
        # handled off the subscription's callback task so one slow advisory holds up no other
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            await self.dead_letter_seq(
                int(advisory["stream_seq"]),
                int(advisory.get("deliveries", 0)),
                stream=RESULTS if advisory.get("stream") == RESULTS else TASKS,
            )
        except Exception:
            log.exception("dead-lettering from advisory failed: %r", msg.data[:500])

    async def dead_letter_seq(
        self, seq: int, deliveries: int, reason: str | None = None, *, stream: str = TASKS
    ) -> bool:
        """Dead-letter the ``stream`` message at ``seq``; False if it is already gone."""
        try:
            raw = await self.js.get_msg(stream, seq)
        except NotFoundError:
            return False
        subject, data = raw.subject or "", raw.data or b""
        reason = reason or f"gave up after {deliveries} deliveries (max_deliver)"
        await publish_dead_letter(
            self.js,
            stream=stream,
            subject=subject,
            data=data,
            seq=seq,
            deliveries=deliveries,
            code=DeadLetter.code,
            reason=reason,
            actor=self.dispatcher.name,
        )
        await self.report(subject, data, DeadLetter.code, reason, deliveries)
        for attempt in range(5):
            try:
                await self.js.delete_msg(stream, seq)
                break
            except NotFoundError:
                break
            except nats.errors.TimeoutError:
                # already in DLQ and reported; `cogo reclaim` removes it if this keeps failing
                log.warning("deleting dead letter seq %d timed out (try %d)", seq, attempt + 1)
                await asyncio.sleep(0.5)
        self.dispatcher.counters["dead_lettered"] += 1
        log.warning("dead-lettered %s seq %d: %s", subject, seq, reason)
        return True
