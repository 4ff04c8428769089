"""Small asyncio helpers every layer uses."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from typing import Any

NUDGE_S = 1.0


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None], nudge_s: float = NUDGE_S) -> None:
    """Cancel ``tasks`` and wait until every one has ended, whatever it raised.

    A cancellation can be lost on Python 3.11: ``asyncio.wait_for`` (ours, or a library's,
    such as nats-py's ``fetch``) returns the inner result instead of raising when the
    cancel arrives in the same loop iteration as that result. A loop that then goes on
    would make a single ``cancel(); await task`` wait forever, so a task still running
    after ``nudge_s`` is cancelled again, until it ends. The caller's own cancellation
    still propagates."""
    given = [t for t in tasks if t is not None]
    pending = {t for t in given if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=nudge_s)
    for task in given:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit


def dump_tasks() -> str:
    """Every task of the running loop with the stack it is suspended in (for a hang)."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(limit=12, file=out)
    return out.getvalue()
