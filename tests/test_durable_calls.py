"""``ctx.call`` on a real nats-server: child tasks with stable ids through the dispatcher,
their results journaled for the parent, in parallel, failures and unknown routes raised in
the parent, budgets carved from the parent's, recursion stopped; and a replay that asks for
other things than its journal ends ``task.nondeterministic``."""

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
    return "[runtime]\nsuspend_after_ms = 50\nmax_call_depth = 3\n"


async def test_parallel_calls_run_each_child_once_and_return_in_order(cogo_env):
    handle = await cogo_env.client.submit("dur.parent.0", {"topics": ["a", "b", "c"]})
    result = await handle.result(timeout=60)
    tid = handle.task_id
    assert [n["topic"] for n in result["notes"]] == ["a", "b", "c"]
    for t in "abc":
        assert RUNS[f"child:{tid}/{t}"] == 1
    # each child got its route's default (300) or half of what the parent's 1000 had left
    # (more once an earlier sibling ended and gave back what it did not spend)
    budgets = [n["budget"] for n in result["notes"]]
    assert budgets[:2] == [300, 300] and budgets[2] in (200, 300)
    events = await cogo_env.events(tid)
    started = [e for e in events if e["type"] == "call_started"]
    assert sorted(e["data"]["child_id"] for e in started) == [f"{tid}/{t}" for t in "abc"]
    assert len([e for e in events if e["type"] == "call_completed"]) == 3
    status = await handle.status()
    assert sorted(status.children) == [f"{tid}/{t}" for t in "abc"]
    child = await cogo_env.client.status(f"{tid}/a")
    assert child.parent_id == tid and child.status == "succeeded"


async def test_a_failed_child_raises_task_failed_in_the_parent(cogo_env):
    handle = await cogo_env.client.submit("dur.parent.0", {"topics": ["x"], "fail": True})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.code == "worker.permanent" and "child x fails" in failed.value.message
    assert RUNS[f"child:{handle.task_id}/x"] == 1


async def test_a_call_to_an_undeclared_route_is_route_unknown_and_leaves_nothing(cogo_env):
    handle = await cogo_env.client.submit("dur.parent.0", {"topics": ["x"], "route": "dur.nobody.0"})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.code == "route.unknown", failed.value
    events = await cogo_env.events(handle.task_id)
    assert not [e for e in events if e["type"] in ("call_started", "execute_suspended")]


async def test_the_parent_budget_bounds_its_tree(cogo_env):
    # 1000 tokens: children get 300, 300, then half of what is left each time: 200, 100,
    # 50 (each spends 100, then waits, holding its budget); the last spends 100, over what
    # it was given: it fails, and so does the parent, which cancels the others
    handle = await cogo_env.client.submit(
        "dur.parent.0", {"topics": ["a", "b", "c", "d", "e"], "tokens": 100, "wait": True}
    )
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.code == "budget.tokens_exceeded", failed.value
    tid = handle.task_id
    events = await cogo_env.events(tid)
    carved = [e["data"]["max_tokens"] for e in events if e["type"] == "call_started"]
    assert sorted(carved) == [50, 100, 200, 300, 300] and sum(carved) <= 1000
    # the SQL tree view sums usage per subtree: within the root's budget
    await cogo_env.projector.wait_caught_up()
    rows = await cogo_env.projector.store.read(
        lambda con: con.execute(
            "SELECT task_id, parent_id, root_id, depth, subtree_tasks, subtree_tokens "
            "FROM task_tree WHERE root_id = ? ORDER BY task_id",
            [tid],
        ).fetchall()
    )
    root = next(r for r in rows if r[0] == tid)
    # (a child cancelled while its handler still ran reports no usage on its terminal
    # event: at least e's 100 are there, never more than the budget)
    assert root[2] == tid and root[3] == 0 and root[4] == 6 and 100 <= root[5] <= 1000
    assert {r[1] for r in rows if r[0] != tid} == {tid}


async def test_explicit_child_budgets_sum_within_the_parent(cogo_env):
    handle = await cogo_env.client.submit(
        "dur.parent.0",
        {"topics": ["a", "b"], "tokens": 50, "assignment": {"max_tokens": 100}},
    )
    result = await handle.result(timeout=60)
    assert [n["budget"] for n in result["notes"]] == [100, 100]
    # the children's 100 tokens count against the parent's tree: 1000 - 100 left
    assert result["remaining"] == 900


async def test_an_agent_calling_itself_is_stopped_by_the_depth_limit(cogo_env):
    handle = await cogo_env.client.submit("dur.recurse.0", {})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.code == "call.depth_exceeded", failed.value
    # root + 3 levels of children; the 4th level was never started
    deepest = f"{handle.task_id}/again/again/again"
    status = await cogo_env.client.status(deepest)
    assert status.status == "failed" and status.error_code == "call.depth_exceeded"
    with pytest.raises(cogo.errors.TaskNotFound):
        await cogo_env.client.status(f"{deepest}/again")


async def test_a_replay_that_asks_for_another_step_is_nondeterministic(cogo_env):
    handle = await cogo_env.client.submit("dur.nondet.0", {"s": 1.0})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.code == "task.nondeterministic", failed.value
    assert "step 'b'" in failed.value.message and "step 'a'" in failed.value.message


async def test_calls_in_a_task_group_suspend_and_resume(cogo_env):
    from tests.helpers import wait_until

    handle = await cogo_env.client.submit("dur.group.0", {})
    tid = handle.task_id

    async def waiting() -> bool:
        try:
            s = await cogo_env.client.status(tid)
        except cogo.errors.TaskNotFound:
            return False
        return s.status == "suspended" and len(s.waiting_for or []) == 2

    await wait_until(waiting, 30, "the parent never waited for both children")
    status = await cogo_env.client.status(tid)
    assert sorted(w["name"] for w in status.waiting_for) == [f"{tid}/m", f"{tid}/n"]
    for t in ("m", "n"):
        await cogo_env.client.signal(f"{tid}/{t}", "go", t)
    assert await handle.result(timeout=60) == ["m", "n"]
    for t in ("m", "n"):
        assert RUNS[f"done:{tid}/{t}"] == 1


async def test_a_replay_that_calls_under_another_key_is_nondeterministic(cogo_env):
    from tests.helpers import wait_until

    handle = await cogo_env.client.submit("dur.nondet_call.0", {})
    child = f"{handle.task_id}/a"

    async def child_waits() -> bool:
        try:
            return (await cogo_env.client.status(child)).status == "suspended"
        except cogo.errors.TaskNotFound:
            return False

    await wait_until(child_waits, 30, "the child never waited")
    await cogo_env.client.signal(child, "go", 1)  # the parent resumes, and asks for "b"
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.code == "task.nondeterministic", failed.value
    assert "call 'b'" in failed.value.message and "call 'a'" in failed.value.message
