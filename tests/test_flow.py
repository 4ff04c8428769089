"""Flow control with TWO dispatcher processes sharing the work (docs/design.md §14).

Real ``cogo run dispatcher`` processes and an echo worker process on a real nats-server:
both dispatchers take submissions and results, one of them admits the route. Every
figure is checked from the events' own timestamps: an attempt holds its slot from its
``execute_enqueued`` (stamped after its slot was taken) to its result's event (stamped
before its slot is released), so those intervals may never overlap past a limit.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

from cogo.streams.flow import partition_of
from cogo.streams.policies import set_policy
from tests.flow_support import (
    ROUTE,
    attempt_intervals,
    flow_is_empty,
    key_of,
    max_overlap,
    partition_owners,
    submit_keyed,
    ts,
    two_dispatchers,
)
from tests.helpers import EventReader, projecting, wait_until

# -- the limits hold -------------------------------------------------------------------


async def test_per_key_and_route_concurrency_hold_and_small_keys_go_first(
    nats_server, nc, js, config, config_path, data_dir, tmp_path
):
    await set_policy(js, ROUTE, {"flow": {"concurrency": 4, "concurrency_per_key": 2}})
    async with two_dispatchers(js, nats_server.url, config_path, tmp_path / "logs"):
        big = await submit_keyed(js, "big", 24, "c", sleep_ms=150)
        other = await submit_keyed(js, "other", 8, "c", sleep_ms=150)
        small = await submit_keyed(js, "small", 3, "c", sleep_ms=150)
        reader = EventReader(js)
        done = await reader.wait_terminal([*big, *other, *small], timeout=60)
        await wait_until(lambda: flow_is_empty(js), 30, "every slot released")
        await asyncio.sleep(0.5)
        await reader.poll()
    assert all(e.type == "execute_done" for e in done.values())
    intervals = attempt_intervals(reader.events)
    assert len(intervals) == 35
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, start, end in intervals:
        by_key[key].append((start, end))
    assert max_overlap(by_key["big"]) == 2  # the limit, reached and never passed
    assert all(max_overlap(v) <= 2 for v in by_key.values())
    assert max_overlap((s, e) for _, s, e in intervals) == 4
    # keys take turns: the small key, submitted last, is through long before the big one
    enqueued = {e.task_id: ts(e.at) for e in reader.events if e.type == "execute_enqueued"}
    small_last = max(enqueued[t] for t in small)
    assert sum(enqueued[t] > small_last for t in big) >= 12
    # each held task recorded once, with the limit that held it
    throttled = [e for e in reader.events if e.type == "execute_throttled"]
    assert len(throttled) == len({(e.task_id, e.attempt) for e in throttled}) >= 20
    assert {e.data["limit"] for e in throttled} <= {"concurrency", "concurrency_per_key"}
    assert {e.data["key"] for e in throttled} >= {"big", "other"}
    # the hold is part of the queue wait: enqueued and done both count it
    held = {e.task_id for e in throttled}
    for e in reader.events:
        if e.type == "execute_enqueued" and e.task_id in held:
            assert e.data["held_ms"] > 0 and e.queue_wait_ms >= e.data["held_ms"]
    assert all(done[t].queue_wait_ms >= 150 for t in big[-4:])
    # and SQL tells the same (flow_holds over the projected bus_events)
    async with projecting(nc, config, data_dir) as projector:
        await projector.wait_caught_up()
        holds = await projector.store.read(
            lambda cur: cur.execute("SELECT task_id, held_ms, outcome FROM flow_holds").fetchall()
        )
        by_key_sql = dict(
            await projector.store.read(
                lambda cur: cur.execute("SELECT key, holds FROM flow_throttled_by_key").fetchall()
            )
        )
    expected = {}
    for e in reader.events:
        if e.type == "execute_enqueued" and e.task_id in held:
            start = next(ts(t.data["held_at"]) for t in throttled if t.task_id == e.task_id)
            expected[e.task_id] = round((ts(e.at) - start) * 1000.0, 3)
    assert {t: (round(ms, 3), o) for t, ms, o in holds} == {t: (ms, "admitted") for t, ms in expected.items()}
    assert by_key_sql == dict(Counter(e.data["key"] for e in throttled))


async def test_rate_per_key_then_priority_overtakes_a_backlog(nats_server, js, config_path, tmp_path):
    await set_policy(js, ROUTE, {"flow": {"rate_per_key_s": 5.0, "burst": 2}})
    async with two_dispatchers(js, nats_server.url, config_path, tmp_path / "logs"):
        reader = EventReader(js)
        rated = [*await submit_keyed(js, "a", 10, "r"), *await submit_keyed(js, "b", 10, "r")]
        await reader.wait_terminal(rated, timeout=60)
        starts: dict[str, list[float]] = defaultdict(list)
        for e in reader.events:
            if e.type == "execute_enqueued":
                starts[key_of(e)].append(ts(e.at))
        for key in ("a", "b"):
            times = sorted(starts[key])
            assert len(times) == 10
            # a token bucket of 2 at 5/s: in any window, at most 2 + 5 * its length starts,
            # give or take one token
            for i, first in enumerate(times):
                for j in range(i, len(times)):
                    assert j - i + 1 <= 2 + 5.0 * (times[j] - first) + 1, (key, i, j)
            assert times[-1] - times[0] > 1.0  # the rate really held them back

        # priority: one slot, a backlog of 5s, then urgent 9s overtake what still waits
        await set_policy(js, ROUTE, {"flow": {"rate_per_key_s": None, "burst": None, "concurrency": 1}})
        backlog = await submit_keyed(js, "batch", 15, "p", priority=2, sleep_ms=100)

        async def backlog_waiting() -> bool:
            await reader.poll()
            started = {e.task_id for e in reader.events if e.type == "execute_enqueued"}
            return len(started & set(backlog)) >= 2

        await wait_until(backlog_waiting, 30, "the backlog running")
        urgent = await submit_keyed(js, "user", 3, "p", priority=9, sleep_ms=100)
        await reader.wait_terminal([*backlog, *urgent], timeout=60)
        await wait_until(lambda: flow_is_empty(js), 30, "every slot released")
    enqueued = {e.task_id: ts(e.at) for e in reader.events if e.type == "execute_enqueued"}
    urgent_last = max(enqueued[t] for t in urgent)
    overtaken = [t for t in backlog if enqueued[t] > urgent_last]
    assert len(overtaken) >= 8, (len(overtaken), sorted(enqueued[t] for t in backlog))
    limits = Counter(e.data["limit"] for e in reader.events if e.type == "execute_throttled")
    assert limits["rate_per_key_s"] >= 10 and limits["concurrency"] >= 10


# -- nothing leaks when processes die ------------------------------------------------------


async def test_no_slot_leaks_after_sigkill_of_the_admitter_and_of_a_worker(nats_server, js, config_path, tmp_path):
    await set_policy(js, ROUTE, {"flow": {"concurrency": 6, "concurrency_per_key": 2}})
    async with two_dispatchers(js, nats_server.url, config_path, tmp_path / "logs", echoes=2) as procs:
        ids = []
        for key in ("k1", "k2", "k3", "k4"):
            ids += await submit_keyed(js, key, 12, "f", sleep_ms=250)
        reader = EventReader(js)

        async def running_some() -> bool:
            await reader.poll()
            return sum(e.type == "execute_done" for e in reader.events) >= 6

        await wait_until(running_some, 30, "the load running")
        owner = (await partition_owners(js))[partition_of(ROUTE)]
        admitter = next(p for p in procs.values() if owner.endswith(f":{p.pid}"))
        admitter.kill()  # SIGKILL the process admitting the route, mid-admission
        echo = procs["echo-0"]
        echo.kill()  # and a worker holding claimed attempts (and their slots)
        await asyncio.to_thread(admitter.wait, 10)
        await asyncio.to_thread(echo.wait, 10)
        done = await reader.wait_terminal(ids, timeout=90)
        await wait_until(lambda: flow_is_empty(js), 30, "every slot released")
        await asyncio.sleep(0.5)
        await reader.poll()
    assert all(e.type == "execute_done" for e in done.values())
    terminal = Counter(e.task_id for e in reader.events if e.type in ("execute_done", "execute_failed"))
    assert set(terminal.values()) == {1}
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    intervals = attempt_intervals(reader.events)
    for key, start, end in intervals:
        by_key[key].append((start, end))
    # the limits held through the takeover and the redelivered attempts
    assert all(max_overlap(v) <= 2 for v in by_key.values()), {k: max_overlap(v) for k, v in by_key.items()}
    assert max_overlap((s, e) for _, s, e in intervals) <= 6
    # the survivor took the route over: both processes admitted some of it
    admitters = {e.actor for e in reader.events if e.type == "execute_enqueued"}
    assert len(admitters) == 2 and any(a.endswith(f":{admitter.pid}") for a in admitters)
