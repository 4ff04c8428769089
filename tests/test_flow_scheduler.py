"""``RouteFlow``, the fair choice of held tasks, without a bus: limits, turns, priorities."""

from __future__ import annotations

import itertools

from cogo.config import FlowPolicy
from cogo.runtime.flow.fairness import (
    AGE_PER_LEVEL_S,
    KEY_LIMIT,
    RATE_LIMIT,
    ROUTE_LIMIT,
    Held,
    RouteFlow,
)

_seq = itertools.count(1)


def held(key: str, priority: int = 5, deadline: float = 1e12, task: str | None = None) -> Held:
    seq = next(_seq)
    task = task or f"{key}-{seq}"
    return Held(
        seq=seq,
        task_id=task,
        attempt=1,
        key=key,
        priority=priority,
        deadline=deadline,
        held_at=0.0,
        slot=f"slot.r.{task}.1",
        data=b"{}",
    )


def release(flow: RouteFlow, picked: list[Held]) -> None:
    for h in picked:
        flow.slot_released(h.slot)


def test_keys_take_turns_and_a_key_keeps_its_order():
    flow = RouteFlow(FlowPolicy(concurrency=100), now=0.0)
    big = [held("big") for _ in range(6)]
    small = [held("small") for _ in range(2)]
    for h in [*big, *small]:
        flow.add(h)
    order = [h.task_id for h in flow.pick(1.0, most=8)]
    # one task per key per turn: the small key is not stuck behind the big one
    assert order == [big[0].task_id, small[0].task_id, big[1].task_id, small[1].task_id, *[h.task_id for h in big[2:]]]


def test_route_concurrency_and_per_key_concurrency():
    flow = RouteFlow(FlowPolicy(concurrency=3, concurrency_per_key=2), now=0.0)
    for key in "aabbbc":
        flow.add(held(key))
    first = flow.pick(1.0, most=10)
    assert len(first) == 3 and flow.running == 3
    assert [h.key for h in first] == ["a", "b", "c"]
    assert flow.pick(1.0, most=10) == []  # the route is full
    release(flow, first[:1])  # an "a" ends
    again = flow.pick(1.0, most=10)
    assert [h.key for h in again] == ["a"]
    release(flow, first[1:])
    rest = flow.pick(1.0, most=10)
    assert sorted(h.key for h in rest) == ["b", "b"]
    # b has 2 running now: its last task waits for its own limit, not the route's
    assert flow.running == 3


def test_per_key_limit_reason_and_other_keys_unaffected():
    flow = RouteFlow(FlowPolicy(concurrency_per_key=1), now=0.0)
    a1, a2, b1 = held("a"), held("a"), held("b")
    for h in (a1, a2, b1):
        flow.add(h)
    assert {h.task_id for h in flow.pick(1.0, most=10)} == {a1.task_id, b1.task_id}
    holds = flow.holds(1.0)
    assert [(h.task_id, limit) for h, limit in holds] == [(a2.task_id, KEY_LIMIT)]
    assert flow.holds(1.0) == []  # once
    flow.slot_released(a1.slot)
    assert [h.task_id for h in flow.pick(1.0, most=10)] == [a2.task_id]


def test_priority_first_within_the_route():
    flow = RouteFlow(FlowPolicy(concurrency=1), now=0.0)
    backlog = [held("batch", priority=2) for _ in range(5)]
    for h in backlog:
        flow.add(h)
    first = flow.pick(1.0, most=10)
    assert first == [backlog[0]]
    urgent = held("user", priority=9)
    flow.add(urgent)
    assert [(h.task_id, limit) for h, limit in flow.holds(1.0)] == [
        (backlog[1].task_id, ROUTE_LIMIT),
        (backlog[2].task_id, ROUTE_LIMIT),
        (backlog[3].task_id, ROUTE_LIMIT),
        (backlog[4].task_id, ROUTE_LIMIT),
        (urgent.task_id, ROUTE_LIMIT),
    ]
    release(flow, first)
    assert flow.pick(1.0, most=10) == [urgent]


def test_token_bucket_starts_empty_and_holds_the_rate():
    flow = RouteFlow(FlowPolicy(rate_per_key_s=2.0, burst=4), now=0.0)
    tasks = [held("k") for _ in range(20)]
    for h in tasks:
        flow.add(h)
    assert flow.pick(0.0, most=100) == []  # a new admitter's buckets start empty
    assert [limit for _, limit in flow.holds(0.0)] == [RATE_LIMIT] * 20
    assert flow.next_wake() == 0.5  # the first token
    started = []
    now = 0.0
    while now <= 10.0:
        picked = flow.pick(now, most=100)
        started += [now] * len(picked)
        release(flow, picked)
        now = round(now + 0.1, 1)
    # at most burst + rate * elapsed starts by any moment, and the rate is reached
    for t in (0.5, 1.0, 2.0, 5.0, 9.9):
        assert sum(s <= t for s in started) <= 4 + 2.0 * t + 1e-9
    assert len(started) == 20  # 2/s over 10 s


def test_burst_after_idle_then_rate():
    flow = RouteFlow(FlowPolicy(rate_per_key_s=1.0, burst=3), now=0.0)
    for _ in range(6):
        flow.add(held("k"))
    assert len(flow.pick(100.0, most=10)) == 3  # a full bucket: the burst
    assert flow.pick(100.5, most=10) == []
    assert len(flow.pick(101.0, most=10)) == 1


def test_expired_held_tasks_leave_and_unknown_seqs_are_deduplicated():
    flow = RouteFlow(FlowPolicy(concurrency=1), now=0.0)
    running = held("a")
    late = held("a", deadline=5.0)
    flow.add(running)
    assert flow.add(late) and not flow.add(late)
    assert flow.pick(1.0, most=5) == [running]
    assert flow.expired(4.0) == []
    assert flow.expired(6.0) == [late]
    assert flow.waiting == 0
    flow.slot_released(running.slot)
    assert flow.pick(7.0, most=5) == []


def test_a_slot_taken_before_a_takeover_is_counted_and_its_task_redone():
    flow = RouteFlow(FlowPolicy(concurrency_per_key=1), now=0.0)
    redo = held("a")
    flow.slot_taken(redo.slot, "a", expires_at=1e12)  # found in the bucket at takeover
    other = held("a")
    flow.add(redo)
    flow.add(other)
    assert flow.pick(1.0, most=5) == [redo]  # forwarded again (de-duplicated), not recounted
    assert flow.running == 1
    assert flow.pick(1.0, most=5) == []  # the key's one slot is taken
    flow.slot_released(redo.slot)
    assert flow.pick(1.0, most=5) == [other]


def test_slots_expire_and_new_limits_apply_at_once():
    flow = RouteFlow(FlowPolicy(concurrency=1), now=0.0)
    first, second = held("a", deadline=10.0), held("b")
    flow.add(first)
    flow.add(second)
    assert flow.pick(1.0, most=5) == [first]
    assert flow.pick(2.0, most=5) == []
    # a release that never came: the slot expires a little after the task's deadline
    assert flow.pick(30.0, most=5) == [second]
    third = held("c")
    flow.add(third)
    assert flow.pick(31.0, most=5) == []
    flow.set_limits(FlowPolicy(concurrency=2))
    assert flow.pick(31.0, most=5) == [third]


def test_figures_per_key():
    flow = RouteFlow(FlowPolicy(concurrency_per_key=1, rate_per_key_s=10.0), now=0.0)
    for key in ("a", "a", "a", "b"):
        flow.add(held(key))
    flow.pick(5.0, most=10)
    rate, rows, omitted = flow.figures(5.0)
    by_key = {r.key: r for r in rows}
    assert by_key["a"].running == 1 and by_key["a"].waiting == 2
    assert by_key["a"].held_by == KEY_LIMIT and by_key["a"].waiting_by_priority == {"5": 2}
    assert by_key["b"].running == 1 and by_key["b"].waiting == 0 and by_key["b"].held_by is None
    assert rate == 0.2 and omitted == 0


def test_memory_follows_what_waits_and_runs_not_what_passed_through():
    flow = RouteFlow(FlowPolicy(concurrency=10), now=0.0)
    for _ in range(5000):
        task = held("k", deadline=1e9)
        flow.add(task)
        (picked,) = flow.pick(1.0, most=1)
        flow.slot_released(picked.slot)
        flow.forget(picked.seq)
    assert flow.running == flow.waiting == 0
    assert len(flow._deadlines) <= 1024 + 1 and len(flow._expiries) <= 1024 + 1
    assert not flow._by_seq


def test_priorities_age_so_a_steady_high_stream_never_starves_a_low_task():
    flow = RouteFlow(FlowPolicy(concurrency=1), now=0.0)
    low = held("batch", priority=0)
    flow.add(low)
    started: list[tuple[float, Held]] = []
    now = 0.0
    while now < 200.0:  # a fresh priority-9 task every second, two always waiting
        for _ in range(2 if now == 0.0 else 1):
            fresh = held("user", priority=9)
            fresh.held_at = now
            flow.add(fresh)
        picked = flow.pick(now, most=1)
        started += [(now, h) for h in picked]
        release(flow, picked)
        now += 1.0
    low_at = next(t for t, h in started if h is low)
    # the fresh 9s go first while the low one ages, then it outranks them: it started
    # once its wait, in levels, lifted it past 9 (and the 9 waiting beside it)
    assert 9 * AGE_PER_LEVEL_S <= low_at <= 11 * AGE_PER_LEVEL_S
    assert all(h.priority == 9 for t, h in started if t < low_at)
    assert any(t > low_at for t, _ in started)  # the high stream went on after it


def test_aging_keeps_priority_order_among_tasks_that_waited_alike():
    flow = RouteFlow(FlowPolicy(concurrency=1), now=0.0)
    tasks = [held("k", priority=p) for p in (1, 4, 7)]
    for h in tasks:
        flow.add(h)  # all held at 0.0
    order = []
    for now in (500.0, 501.0, 502.0):  # long waits, but equal: priority still decides
        picked = flow.pick(now, most=1)
        order += [h.priority for h in picked]
        release(flow, picked)
    assert order == [7, 4, 1]


def test_try_start_admits_at_once_only_under_the_limits_with_nothing_waiting():
    flow = RouteFlow(FlowPolicy(concurrency=2, concurrency_per_key=1), now=0.0)
    assert flow.try_start("slot.r.t1.1", "a", 100.0, 1.0)
    assert flow.running == 1
    assert flow.try_start("slot.r.t1.1", "a", 100.0, 1.0)  # a redelivery: counted once
    assert flow.running == 1
    assert not flow.try_start("slot.r.t2.1", "a", 100.0, 1.0)  # key "a" is at its limit
    assert flow.try_start("slot.r.t3.1", "b", 100.0, 1.0)
    assert not flow.try_start("slot.r.t4.1", "c", 100.0, 1.0)  # the route is full
    flow.slot_released("slot.r.t1.1")
    waiting = held("c")
    flow.add(waiting)
    assert not flow.try_start("slot.r.t5.1", "d", 100.0, 1.0)  # no overtaking what waits
    assert flow.pick(1.0, most=5) == [waiting]
    rated = RouteFlow(FlowPolicy(rate_per_key_s=1.0, burst=1), now=0.0)
    assert not rated.try_start("slot.r.x.1", "k", 100.0, 0.5)  # its bucket fills from 0
    assert rated.try_start("slot.r.x.1", "k", 100.0, 1.0)
    assert not rated.try_start("slot.r.y.1", "k", 100.0, 1.5)  # the token is spent
