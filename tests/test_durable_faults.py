"""Durable agents under faults, on real processes: two dispatchers share the work (their
record updates race), one is SIGKILLed while a parent's children wake up and finish; after a
new one starts, every child finishes once, no wake-up is lost and the parent ends with
every result."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from cogo.testing import CogoEnv
from tests import durable_apps
from tests.durable_apps import RUNS
from tests.helpers import wait_until
from tests.upsystem import cogo, terminate

CHILDREN = 20


@pytest.mark.skip(
    reason="known bug, issue 23 stays open: about 1 run in 5 a SIGKILL of a dispatcher while "
    "children wake their parent ends the parent with assignment.ttl_expired long before its "
    "ttl, or leaves it waiting (a lost wake-up); seen after the trust-boundary changes merged"
)
async def test_dispatcher_sigkill_while_children_finish(tmp_path: Path):
    env = CogoEnv(durable_apps.app, config="[runtime]\nsuspend_after_ms = 20\n",
                  data_dir=tmp_path / "cogo")  # fmt: skip
    await env.start()
    dispatcher = other = None
    try:
        # the in-process dispatcher makes way for one in its own process, to be killed
        (inproc,) = [a for a in env._running if a.kind == "dispatcher"]
        await inproc.stop(grace=5)
        env._running.remove(inproc)
        args = ["--nats-url", env.url, "--config", str(env.config_path)]
        dispatcher = cogo("run", "dispatcher", *args)
        other = cogo("run", "dispatcher", *args)
        topics = [f"t{i}" for i in range(CHILDREN)]
        handle = await env.client.submit(
            "dur.parent.0", {"topics": topics, "wait": True, "assignment": {"max_tokens": 40}}
        )
        tid = handle.task_id
        children = [f"{tid}/{t}" for t in topics]

        async def all_waiting() -> bool:
            states = []
            for c in [tid, *children]:
                try:
                    states.append((await env.client.status(c)).status)
                except Exception:
                    states.append(None)
            return set(states) == {"suspended"}

        await wait_until(all_waiting, 90, "the parent and its children never all waited")
        sends = asyncio.gather(*(env.client.signal(c, "go", c) for c in children))
        await asyncio.sleep(0.05)
        dispatcher.send_signal(signal.SIGKILL)  # while their wake-ups and results flow
        await asyncio.to_thread(dispatcher.wait, 10)
        await sends
        dispatcher = cogo("run", "dispatcher", *args)
        result = await handle.result(timeout=120)
        assert [n["topic"] for n in result["notes"]] == topics
        for c in children:
            assert RUNS[f"done:{c}"] == 1, c  # the code after each child's wait ran once
            assert RUNS[f"child:{c}"] >= 2  # suspended, then resumed
        events = await env.events(tid)
        assert [e["type"] for e in events].count("call_completed") == CHILDREN
    finally:
        if dispatcher is not None:
            await terminate(dispatcher)
        if other is not None:
            await terminate(other)
        await env.stop()
