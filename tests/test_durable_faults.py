"""Durable agents under faults, on real processes: two dispatchers share the work (their
record updates race), one is SIGKILLed while a parent's children wake up and finish; after a
new one starts, every child finishes once, no wake-up is lost and the parent ends with
every result. And, in one process, a dispatcher that dies at the worst point of handling a
wake-up: after the task's record was updated, before what that update causes went out."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

import cogo
from cogo.runtime.records import Record
from cogo.testing import CogoEnv
from tests import durable_apps
from tests.durable_apps import RUNS
from tests.helpers import wait_until
from tests.upsystem import cogo as cogo_proc
from tests.upsystem import terminate

CHILDREN = 20


@pytest.fixture
def cogo_apps():
    return [durable_apps.app]


@pytest.fixture
def cogo_config():
    return "[runtime]\nsuspend_after_ms = 50\n"


async def test_dispatcher_sigkill_while_children_finish(tmp_path: Path):
    env = CogoEnv(durable_apps.app, config="[runtime]\nsuspend_after_ms = 20\n", data_dir=tmp_path / "cogo")
    await env.start()
    dispatcher = other = None
    try:
        # the in-process dispatcher makes way for one in its own process, to be killed
        (inproc,) = [a for a in env.startup.agents if a.kind == "dispatcher"]
        await inproc.stop(grace=5)
        env.startup.agents.remove(inproc)
        args = ["--nats-url", env.url, "--config", str(env.config_path)]
        dispatcher = cogo_proc("run", "dispatcher", *args)
        other = cogo_proc("run", "dispatcher", *args)
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
        dispatcher = cogo_proc("run", "dispatcher", *args)
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


def _crash_once(env: CogoEnv, monkeypatch: pytest.MonkeyPatch, method: str) -> list[Record]:
    """The in-process dispatcher's handler dies the first time it reaches ``method`` of its
    suspensions (the record is already written): its command is delivered again."""
    (dispatcher,) = [a for a in env.startup.agents if a.kind == "dispatcher"]
    suspensions = dispatcher.suspensions
    real = getattr(suspensions, method)
    crashed: list[Record] = []

    async def crash_once(*args: object) -> None:
        record = args[-1]
        assert isinstance(record, Record)
        if not crashed and (method != "_effects" or record.state == "running"):
            crashed.append(record)
            raise ConnectionResetError(f"the dispatcher died in {method}")
        await real(*args)

    monkeypatch.setattr(suspensions, method, crash_once)
    return crashed


async def _suspended(env: CogoEnv, task_id: str) -> None:
    async def suspended() -> bool:
        try:
            return (await env.client.status(task_id)).status == "suspended"
        except Exception:
            return False

    await wait_until(suspended, 30, f"task {task_id} never suspended")


async def test_a_signal_delivered_again_sends_the_resumed_run_it_marked(cogo_env, monkeypatch):
    # the record says "running, woken by signal:go" but the run never went out: only the
    # redelivered signal knows, and it must send it (a lost wake-up otherwise)
    crashed = _crash_once(cogo_env, monkeypatch, "_effects")
    handle = await cogo_env.client.submit("dur.signal.0", {})
    await _suspended(cogo_env, handle.task_id)
    await cogo_env.client.signal(handle.task_id, "go", 7)
    assert await handle.result(timeout=30) == {"got": 7}
    assert [r.woken_by for r in crashed] == ["signal:go"]
    kinds = [e["type"] for e in await cogo_env.events(handle.task_id)]
    assert kinds.count("execute_resumed") == 1


async def test_a_timer_delivered_again_sends_the_resumed_run_it_marked(cogo_env, monkeypatch):
    crashed = _crash_once(cogo_env, monkeypatch, "_effects")
    # longer than the slack by which a timer counts as due when its run suspends: the
    # schedule's wake-up resumes it, not the suspension's report
    handle = await cogo_env.client.submit("dur.sleep.0", {"s": 3.0})
    assert await handle.result(timeout=30) == {"slept": 3.0}
    assert [(r.woken_by or "").split(":")[0] for r in crashed] == ["timer"]
    assert RUNS[f"{handle.task_id}:after"] == 1


async def test_a_ttl_expiry_delivered_again_still_ends_the_task(cogo_env, monkeypatch):
    # the record says "cancelled" (nothing may resume it) but no terminal event was stored
    crashed = _crash_once(cogo_env, monkeypatch, "_expired")
    handle = await cogo_env.client.submit("dur.signal.0", {}, assignment={"ttl_ms": 2500})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=30)
    assert failed.value.code == "assignment.ttl_expired", failed.value
    assert len(crashed) == 1
