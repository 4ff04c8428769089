"""The slot log: fast-path slots recorded in batches, checkpointed, and replayed on takeover.

``SlotLog`` against a real JetStream (records, checkpoint, purge), then real ``cogo run
dispatcher`` processes: the admitter SIGKILLed while the attempts it admitted on the fast
path run, and the dispatcher that takes the route over must still count them.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from cogo.config import FlowPolicy
from cogo.runtime.flow import slotlog
from cogo.runtime.flow.fairness import RouteFlow
from cogo.runtime.flow.slotlog import KV_STREAM, SlotLog
from cogo.streams.flow import (
    decode_log_record,
    decode_snapshot,
    log_filter,
    log_prefix,
    partition_of,
    slot_prefix,
    snapshot_key,
)
from cogo.streams.policies import set_policy
from cogo.streams.publisher import Publisher
from cogo.streams.topology import FLOW_BUCKET
from tests.flow_support import (
    ROUTE,
    attempt_intervals,
    flow_is_empty,
    live_keys,
    max_overlap,
    partition_owners,
    start_actor,
    submit_keyed,
    two_dispatchers,
)
from tests.helpers import EventReader, submit, wait_until
from tests.upsystem import stop_all


async def read_log(js, route: str) -> list[tuple[int, object]]:
    """(stream sequence, record) of every record of ``route``'s slot log, in order."""
    info = await js.stream_info(KV_STREAM, subjects_filter=log_filter(route))
    if not info.state.subjects:
        return []
    out = []
    sub = await js.subscribe(log_filter(route), stream=KV_STREAM, ordered_consumer=True)
    try:
        for _ in range(sum(info.state.subjects.values())):
            msg = await sub.next_msg(timeout=5)
            out.append((msg.metadata.sequence.stream, decode_log_record(msg.data)))
    finally:
        await sub.unsubscribe()
    return out


def replay(records: list[tuple[int, object]]) -> set[str]:
    """The running slots the records say, applied as an admitter applies them."""
    running: set[str] = set()
    for _, record in records:
        running |= {slot for slot, _, _ in record.starts}
        running -= set(record.ends)
    return running


async def test_a_batch_is_one_record_and_a_checkpoint_purges_what_came_before(nats_server, nc, js, monkeypatch):
    monkeypatch.setattr(slotlog, "CHECKPOINT_RECORDS", 3)
    publisher = Publisher(nc)
    await publisher.start()
    flow = RouteFlow(FlowPolicy(concurrency=100), now=0.0)
    log = SlotLog(publisher, js, ROUTE, "s1", flow.logged_slots, lambda: True)
    deadline = 4e9
    attempts: list[int] = []  # stream sequences of the attempts that rode behind records

    async def start(n: int) -> None:
        slot = f"{slot_prefix(ROUTE)}t{n}.1"
        assert flow.try_start(slot, f"k{n % 2}", deadline, now=1.0)
        # an attempt of its own rides behind the record (here: a message to another key)
        (ack,) = await log.start(slot, f"k{n % 2}", deadline, [(f"$KV.{FLOW_BUCKET}.test.t{n}", b"attempt", None)])
        attempts.append(ack.seq)

    # ten starts gathered by one turn of the loop: one record
    await asyncio.gather(*(start(n) for n in range(10)))
    records = await read_log(js, ROUTE)
    assert len(records) == 1 and len(records[0][1].starts) == 10
    assert min(attempts) > records[0][0]  # the record was stored before any of its attempts
    # ends, and starts, in later batches
    for n in range(4):
        flow.slot_released(f"{slot_prefix(ROUTE)}t{n}.1")
        await log.end(f"{slot_prefix(ROUTE)}t{n}.1", deadline)
    await start(10)
    records = await read_log(js, ROUTE)
    assert len(records) >= 3  # the fourth was due as a checkpoint
    running = {f"{slot_prefix(ROUTE)}t{n}.1" for n in range(4, 11)}
    assert replay(records) == running
    # once read back up to the checkpoint, what came before it goes; the rest still says
    # the same running slots
    log.read_to(records[-1][0])
    await log.close()
    after = await read_log(js, ROUTE)
    assert len(after) < len(records)
    assert replay(after) == running == {s for s, _, _ in flow.logged_slots()}
    # everything ends; a quiet route's log shrinks at the next checkpoint to nothing running
    for slot in running:
        flow.slot_released(slot)
    await asyncio.gather(*(log.end(slot, deadline) for slot in running))
    monkeypatch.setattr(slotlog, "CHECKPOINT_EVERY_S", 0.0)
    log.tick()
    await log.close()
    records = await read_log(js, ROUTE)
    log.read_to(records[-1][0])
    await log.close()
    quiet = await read_log(js, ROUTE)
    assert len(quiet) <= 1 and replay(quiet) == set()  # the checkpoint itself, if not expired
    await publisher.stop()


async def test_a_takeover_counts_the_fast_path_slots_of_the_killed_admitter(nats_server, js, config_path, tmp_path):
    tasks = 3
    await set_policy(js, ROUTE, {"flow": {"concurrency": tasks}})
    logs = tmp_path / "logs"
    first = start_actor("dispatcher", nats_server.url, config_path, logs)
    procs = [first, start_actor("echo", nats_server.url, config_path, logs)]
    reader = EventReader(js)
    kv = await js.key_value(FLOW_BUCKET)
    try:

        async def admitting() -> bool:
            # the only dispatcher admits the route: a quick task goes by the fast path
            # (its slot is a record of the log, not a KV key)
            tid = await submit(js, payload={"__assignment": {"key": "warm"}})
            await reader.wait_terminal([tid], timeout=30)
            return bool(await live_keys(kv, log_prefix(ROUTE) + ">"))

        await wait_until(admitting, 60, "the dispatcher admitting on the fast path")
        # they run past the takeover (the lease's TTL is 4 s), within the route's 10 s timeout
        slow = await submit_keyed(js, "a", tasks, "s", sleep_ms=9000)

        async def running() -> bool:
            await reader.poll()
            started = {e.task_id for e in reader.events if e.type == "execute_enqueued"}
            return set(slow) <= started

        await wait_until(running, 30, "the slow tasks admitted")
        # their slots are in the log only: no KV entry per attempt
        assert await live_keys(kv, slot_prefix(ROUTE) + ">") == {}
        # a second dispatcher, and the admitter SIGKILLed while the slow tasks run
        procs.append(start_actor("dispatcher", nats_server.url, config_path, logs))
        owner = (await partition_owners(js))[partition_of(ROUTE)]
        admitter = next(p for p in procs if owner.endswith(f":{p.pid}"))
        admitter.kill()
        await asyncio.to_thread(admitter.wait, 10)
        more = await submit_keyed(js, "b", tasks, "m", sleep_ms=100)
        done = await reader.wait_terminal([*slow, *more], timeout=90)
        await wait_until(lambda: flow_is_empty(js), 30, "every slot released")
        await asyncio.sleep(0.5)
        await reader.poll()
    finally:
        await stop_all(procs)
    assert all(e.type == "execute_done" for e in done.values())
    ends = ("execute_done", "execute_failed")
    terminal = Counter(e.task_id for e in reader.events if e.type in ends)
    assert all(terminal[t] == 1 for t in [*slow, *more])
    # the survivor counted the killed admitter's running attempts from the log: the new
    # tasks waited for them instead of running beside them
    intervals = [i for i in attempt_intervals(reader.events) if i[0] in ("a", "b")]
    assert max_overlap((s, e) for _, s, e in intervals) <= tasks
    throttled = {e.task_id: e.data["limit"] for e in reader.events if e.type == "execute_throttled"}
    assert set(more) <= set(throttled) and {throttled[t] for t in more} == {"concurrency"}
    # and what ended is in the log as ended: nothing of the route runs any more
    assert replay(await read_log(js, ROUTE)) == set()


async def test_fast_path_slots_freed_by_the_other_dispatcher_are_freed_in_the_log(
    nats_server, js, config_path, tmp_path
):
    # limits far above the load: the admitter takes its own claims by the fast path, and
    # the other dispatcher handles about half of all results, freeing those slots by a purge
    # of their keys, which the admitter's watch must turn into ends of the log
    await set_policy(js, ROUTE, {"flow": {"concurrency": 1000, "concurrency_per_key": 1000}})
    kv = await js.key_value(FLOW_BUCKET)
    async with two_dispatchers(js, nats_server.url, config_path, tmp_path / "logs"):
        reader = EventReader(js)
        ids = []
        for key in ("x", "y", "z"):
            ids += await submit_keyed(js, key, 20, "o", sleep_ms=20)
        done = await reader.wait_terminal(ids, timeout=60)
        assert all(e.type == "execute_done" for e in done.values())

        async def nothing_runs() -> bool:
            entry = await kv.get(snapshot_key(ROUTE))
            snapshot = decode_snapshot(entry.value or b"")
            logged = replay(await read_log(js, ROUTE))
            return snapshot.running == 0 and not logged and await flow_is_empty(js)

        await wait_until(nothing_runs, 30, "every slot freed, in memory and in the log")
        # some of them took the fast path: their slots were records of the log
        assert await live_keys(kv, log_prefix(ROUTE) + ">")
