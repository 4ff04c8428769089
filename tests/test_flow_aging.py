"""Flow control on the bus: a steady stream of high-priority tasks does not starve a low one
(aging), and a route under its limits is admitted at once, without a hold in ``FLOW``."""

from __future__ import annotations

from cogo.agents.echo import EchoActor
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.runtime.flow import fairness as flow_module
from cogo.streams.policies import set_policy
from tests.helpers import EventReader, running, submit, wait_until

ROUTE = "echo.run.0"


def _keyed(priority: int, **payload):
    return {**payload, "__assignment": {"key": f"p{priority}", "priority": priority}}


async def test_a_low_priority_task_runs_while_high_ones_keep_coming(nats_server, js, config, monkeypatch):
    # a level per 0.3 s of waiting (10 s shipped): the same rule, in a test's time
    monkeypatch.setattr(flow_module, "AGE_PER_LEVEL_S", 0.3)
    await set_policy(js, ROUTE, {"flow": {"concurrency": 1}})
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor) as (dispatcher, _):
        await wait_until(lambda: _admitting(dispatcher), 30, "the dispatcher admitting the route")
        reader = EventReader(js)
        highs = [await submit(js, payload=_keyed(9, sleep_ms=60)) for _ in range(3)]
        low = await submit(js, payload=_keyed(0, sleep_ms=10))
        low_started = False
        while len(highs) < 200 and not low_started:
            await reader.poll(wait=0.05)
            enqueued = {e.task_id for e in reader.events if e.type == "execute_enqueued"}
            low_started = low in enqueued
            while sum(h not in enqueued for h in highs) < 3:  # high ones always waiting
                highs.append(await submit(js, payload=_keyed(9, sleep_ms=60)))
        done = await reader.wait_terminal([low, *highs], timeout=60)
    assert low_started, "the low task waited behind 200 high ones"
    assert all(e.type == "execute_done" for e in done.values())
    enqueued_seq = [e.task_id for e in reader.events if e.type == "execute_enqueued"]
    after_low = enqueued_seq[enqueued_seq.index(low) + 1 :]
    assert sum(t in highs for t in after_low) >= 2  # high ones were waiting when it went


async def test_under_its_limits_a_task_is_admitted_without_a_hold(nats_server, js, config):
    await set_policy(js, ROUTE, {"flow": {"concurrency": 1000, "concurrency_per_key": 1000}})
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor) as (dispatcher, _):
        await wait_until(lambda: _admitting(dispatcher), 30, "the dispatcher admitting the route")
        reader = EventReader(js)
        tasks = []
        for i in range(20):
            tasks.append(await submit(js, payload=_keyed(5, result=i)))
            await reader.wait_terminal(tasks[-1:], timeout=30)  # one at a time: none waits
        flow_stream = await js.stream_info("FLOW")
    assert dispatcher.counters["flow_admitted_at_once"] == 20
    assert dispatcher.counters["flow_held"] == 0
    assert flow_stream.state.last_seq == 0  # nothing ever went through FLOW
    # each attempt still held a slot, released with its result (the route's limits count it)
    enqueued = [e for e in reader.events if e.type == "execute_enqueued"]
    assert len(enqueued) == 20 and all(e.data["held_ms"] == 0.0 for e in enqueued)


async def _admitting(dispatcher) -> bool:
    admitter = dispatcher.flow.admitters.get(ROUTE)
    return admitter is not None and admitter.flow is not None
