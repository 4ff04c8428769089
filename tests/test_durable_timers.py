"""Durable timers and signals (``ctx.sleep``, ``ctx.wait_signal``) on a real nats-server: the
task suspends (gives back its worker), a JetStream message schedule or a signal wakes it, the
handler replays from the top and every journaled request returns at once."""

from __future__ import annotations

import pytest

import cogo
from tests import durable_apps
from tests.durable_apps import RUNS


@pytest.fixture
def cogo_apps():
    return [durable_apps.app]


@pytest.fixture
def cogo_config():
    return "[runtime]\nsuspend_after_ms = 50\n"


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


async def test_a_sleep_suspends_and_a_schedule_resumes_it(cogo_env):
    handle = await cogo_env.client.submit("dur.sleep.0", {"s": 1.5})
    assert await handle.result(timeout=60) == {"slept": 1.5}
    tid = handle.task_id
    events = await cogo_env.events(tid)
    kinds = types(events)
    assert kinds.count("execute_suspended") == 1 and kinds.count("execute_resumed") == 1
    suspended = next(e for e in events if e["type"] == "execute_suspended")
    (waiting,) = suspended["data"]["waiting_for"]
    assert waiting["kind"] == "timer" and waiting["until"] > 0
    resumed = next(e for e in events if e["type"] == "execute_resumed")
    assert resumed["data"]["woken_by"].startswith("timer:") and resumed["attempt"] == 1
    # two runs of one attempt; the code after the sleep ran once
    assert RUNS[f"{tid}:runs"] == 2 and RUNS[f"{tid}:after"] == 1
    status = await handle.status()
    assert status.status == "succeeded" and status.attempt == 1 and status.waiting_for is None


async def test_a_short_sleep_does_not_suspend(cogo_env):
    handle = await cogo_env.client.submit("dur.sleep.0", {"s": 0.01})
    assert await handle.result(timeout=30) == {"slept": 0.01}
    assert "execute_suspended" not in types(await cogo_env.events(handle.task_id))


async def test_a_sleep_past_the_ttl_is_refused(cogo_env):
    handle = await cogo_env.client.submit("dur.sleep.0", {"s": 3600}, assignment={"ttl_ms": 60000})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=30)
    assert failed.value.code == "task.sleep_past_ttl", failed.value


async def test_a_signal_wakes_a_suspended_task(cogo_env):
    handle = await cogo_env.client.submit("dur.signal.0", {})
    tid = handle.task_id
    status = await _until_status(cogo_env, tid, "suspended")
    assert status.waiting_for == [{"kind": "signal", "name": "go"}]
    await cogo_env.client.signal(tid, "go", {"ok": 1})
    assert await handle.result(timeout=30) == {"got": {"ok": 1}}
    events = await cogo_env.events(tid)
    (signaled,) = [e for e in events if e["type"] == "task_signaled"]
    assert signaled["event_id"] == f"{tid}:signal:go" and signaled["data"]["data"] == {"ok": 1}


async def test_an_early_signal_is_kept_and_the_first_one_counts(cogo_env):
    # sent while the handler is still in a step, before it waits: kept, and it counts
    handle = await cogo_env.client.submit("dur.signal.0", {"pause": 1.0})
    tid = handle.task_id
    await cogo_env.client.signal(tid, "go", "first")
    await cogo_env.client.signal(tid, "go", "second")  # the same name again: dropped
    assert await handle.result(timeout=30) == {"got": "first"}
    events = await cogo_env.events(tid)
    assert "execute_suspended" not in types(events)
    assert [e["data"]["data"] for e in events if e["type"] == "task_signaled"] == ["first"]
    # a signal for a finished task: TaskFinished (HTTP 409); for an unknown one: 404
    with pytest.raises(cogo.errors.TaskFinished):
        await cogo_env.client.signal(tid, "go", "late")
    with pytest.raises(cogo.errors.TaskNotFound):
        await cogo_env.client.signal("no-such-task", "go", 1)


async def test_a_signal_wait_times_out_with_signal_timeout(cogo_env):
    handle = await cogo_env.client.submit("dur.signal.0", {"timeout": 1.0})
    assert await handle.result(timeout=60) == {"timeout": True}
    # a signal after the journaled timeout changes nothing
    tid = handle.task_id
    events = await cogo_env.events(tid)
    got = [e for e in events if e["type"] == "step_completed" and e["data"]["step"] == "~signal:go:got"]
    assert len(got) == 1 and got[0]["data"]["result"] == {"timeout": True}


async def _until_status(env, task_id: str, wanted: str):
    from tests.helpers import wait_until

    found = {}

    async def reached() -> bool:
        try:
            found["s"] = await env.client.status(task_id)
        except cogo.errors.TaskNotFound:
            return False
        return found["s"].status == wanted

    await wait_until(reached, 30, f"task {task_id} never became {wanted}")
    return found["s"]


async def test_the_ttl_ends_a_task_suspended_without_a_timeout(cogo_env):
    # nobody signals: the schedule left at the task's TTL deadline ends it
    handle = await cogo_env.client.submit("dur.signal.0", {}, assignment={"ttl_ms": 2500})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.code == "assignment.ttl_expired", failed.value
    assert "while it waited" in failed.value.message
    kinds = types(await cogo_env.events(handle.task_id))
    assert "execute_suspended" in kinds and "execute_resumed" not in kinds
    # a signal now is too late: the task ended
    with pytest.raises(cogo.errors.TaskFinished):
        await cogo_env.client.signal(handle.task_id, "go", 1)
