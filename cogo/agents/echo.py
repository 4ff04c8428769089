"""The echo actor on ``echo.run.0``: a built-in diagnostic worker for demos, tests and benchmarks.

Payload keys (all optional):
  ``result``       echoed back in ``execute_done``
  ``sleep_ms``     work that long (heartbeats keep the claim alive meanwhile)
  ``fail_times``   fail the first N attempts with ``worker.error``
  ``fail_always``  fail every attempt (``true``), or with ``"permanent"`` once, no retry
  ``tokens``, ``cost_usd``   reported as this attempt's usage
  ``exit_process`` kill the worker process mid-task (a poison-message drill; needs
                   ``COGO_ECHO_ALLOW_EXIT=1`` in the worker's environment)

Environment knobs, to simulate a bad release in rollout drills:
  ``COGO_ECHO_FAIL_RATE``   fail this share (0..1) of tasks permanently, chosen by a hash
                            of the task id (so a task's retries fail alike)
  ``COGO_ECHO_FAIL_AFTER``  ...but only after this process handled that many tasks (a
                            defect that shows under sustained traffic, not in smoke tests)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from cogo.config import ECHO_ALLOW_EXIT_ENV, ECHO_FAIL_AFTER_ENV, ECHO_FAIL_RATE_ENV, env
from cogo.errors import PermanentWorkerError, WorkerError
from cogo.sdk.context import Outcome, TaskContext
from cogo.sdk.worker import Worker
from cogo.streams.envelope import WorkOrder


class EchoActor(Worker):
    """Echoes its payload; sleeps, fails and spends on request."""

    kind = "echo"
    route = "echo.run.0"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_rate = float(env(ECHO_FAIL_RATE_ENV, "0"))
        self.fail_after = int(env(ECHO_FAIL_AFTER_ENV, "0"))
        self.runs = 0

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        payload = order.payload
        self.runs += 1
        if self.fail_rate > 0 and self.runs > self.fail_after and _fails(order, self.fail_rate):
            raise PermanentWorkerError(f"echo {self.version or ''} injected failure (fail rate)")
        # spent whether or not the attempt then fails (budgets count failed attempts too)
        ctx.report_usage(tokens=int(payload.get("tokens", 0)), cost_usd=float(payload.get("cost_usd", 0)))
        sleep_ms = float(payload.get("sleep_ms", 0) or 0)
        if payload.get("exit_process") and env(ECHO_ALLOW_EXIT_ENV) == "1":
            os._exit(70)  # drill: the process dies holding the message
        if sleep_ms > 0:
            await asyncio.sleep(sleep_ms / 1000.0)
        fail_always = payload.get("fail_always")
        if fail_always == "permanent":
            raise PermanentWorkerError("echo asked to fail permanently")
        if fail_always or order.attempt <= int(payload.get("fail_times", 0) or 0):
            raise WorkerError(f"echo asked to fail attempt {order.attempt}")
        return Outcome(result=payload.get("result"))


def _fails(order: WorkOrder, rate: float) -> bool:
    # salted, so the choice is independent of the canary split (also a task-id hash)
    digest = hashlib.sha256(b"echo-fail:" + order.task_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < rate * 10_000
