"""A Jepsen-style ledger: what was submitted, what the bus acknowledged, how each task ended.

Every fault test drives load through ``Loader`` (which retries an unacknowledged publish
with the *same* task id, as a careful client would), injects its fault, then checks with
``Ledger.verdict`` that every acknowledged task ended in exactly one terminal event and no
attempt was forwarded twice. Figures go to ``test-artifacts/faults.jsonl`` for the report.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from cogo.streams.catalogue import TERMINAL_TYPES
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID, encoder, new_id
from tests.helpers import EventReader

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class Ledger:
    fault: str
    submitted: dict[str, dict[str, Any]] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    publish_errors: int = 0
    fault_at: float | None = None
    first_done_after_fault: float | None = None

    def verdict(self, reader: EventReader) -> dict[str, Any]:
        terminal: Counter[str] = Counter()
        enqueued: Counter[tuple[str, int]] = Counter()
        for e in reader.events:
            if e.task_id is None:
                continue
            if e.type in TERMINAL_TYPES:
                terminal[e.task_id] += 1
            elif e.type == "execute_enqueued":
                enqueued[(e.task_id, e.attempt or 0)] += 1
        if self.fault_at is not None:
            after = [_ts(e.at) for e in reader.events if e.type == "execute_done" and _ts(e.at) > self.fault_at]
            if after:
                self.first_done_after_fault = min(after)
        finished = sum(1 for t in self.acknowledged if terminal[t] >= 1)
        report = {
            "fault": self.fault,
            "submitted": len(self.submitted),
            "acknowledged": len(self.acknowledged),
            "publish_errors_retried": self.publish_errors,
            "finished": finished,
            "lost": len(self.acknowledged) - finished,
            "duplicated_terminal": sum(1 for c in terminal.values() if c > 1),
            "duplicated_attempts": sum(1 for c in enqueued.values() if c > 1),
            "recovery_s": (
                round(self.first_done_after_fault - self.fault_at, 3)
                if self.first_done_after_fault and self.fault_at
                else None
            ),
        }
        ARTIFACTS.mkdir(exist_ok=True)
        with open(ARTIFACTS / "faults.jsonl", "a") as fh:
            fh.write(json.dumps(report) + "\n")
        return report


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Loader:
    """Publishes ``count`` echo tasks at ``rate``/s; unacknowledged ones are retried, same id."""

    def __init__(
        self, js: JetStreamContext, ledger: Ledger, count: int, rate: float, payload: dict[str, Any] | None = None
    ) -> None:
        self.js = js
        self.ledger = ledger
        self.count = count
        self.rate = rate
        self.payload = payload or {"result": "ok"}

    async def run(self, deadline_s: float = 60.0) -> None:
        pending: list[str] = []
        interval = 1.0 / self.rate
        start = time.monotonic()
        for i in range(self.count):
            tid = new_id()
            self.ledger.submitted[tid] = {"payload": {**self.payload, "n": i}}
            pending.append(tid)
            await self._flush(pending)
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        end = time.monotonic() + deadline_s
        while pending and time.monotonic() < end:
            await self._flush(pending)
            if pending:
                await asyncio.sleep(0.2)

    async def _flush(self, pending: list[str]) -> None:
        while pending:
            tid = pending[0]
            body = {
                "task_id": tid,
                "route": "echo.run.0",
                "payload": self.ledger.submitted[tid]["payload"],
            }
            try:
                await self.js.publish(EXECUTE_SUBJECT, encoder.encode(body), headers={MSG_ID: tid}, timeout=1.0)
            except (TimeoutError, nats.errors.Error, APIError):
                # no ack: the task may or may not be stored; resend later with the same id
                self.ledger.publish_errors += 1
                return
            self.ledger.acknowledged.add(tid)
            pending.pop(0)
