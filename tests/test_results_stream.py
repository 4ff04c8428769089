"""Workers' reports on ``RESULTS`` (limits retention, trimmed below the dispatcher's ack
floor): one stored record per report, reports left on ``TASKS`` by older workers still
count, and a report the dispatcher never manages to handle fails its task once."""

from __future__ import annotations

import time

import pytest

from cogo.agents.echo import EchoActor
from cogo.runtime import dispatcher as dispatcher_module
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.envelope import (
    MSG_ID,
    RESULT_SUBJECT,
    RESULTS_SUBJECT,
    WorkResult,
    decode_order,
    encoder,
)
from cogo.streams.routes import durable_name
from cogo.streams.topology import RESULTS, TASKS
from tests.helpers import EventReader, running, submit, wait_until


async def _queued_order(url, js, config):
    """A real attempt of a task, taken from ``echo.run.0`` (no echo worker runs)."""
    async with running(url, config, ExecutorDispatcher):
        tid = await submit(js, payload={"result": "never run"})

        async def forwarded():
            info = await js.consumer_info(TASKS, durable_name("echo.run.0"))
            return info.num_pending

        await wait_until(forwarded, 30, "the attempt forwarded to echo.run.0")
    raw = await js.get_last_msg(TASKS, "echo.run.0")
    return tid, decode_order(raw.data)


def _report(order) -> bytes:
    now = time.time()
    return encoder.encode(
        WorkResult(
            order=order,
            ok=True,
            actor="old-worker@1",
            claimed_at=now,
            queue_wait_ms=1.0,
            duration_ms=1.0,
            result="from an old worker",
        )
    )


async def test_reports_are_one_record_each_and_trimmed(nats_server, js, config, monkeypatch):
    monkeypatch.setattr(dispatcher_module, "TRIM_EVERY_S", 0.2)
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        tids = [await submit(js, payload={"result": i}) for i in range(20)]
        done = await EventReader(js).wait_terminal(tids)
        assert {e.type for e in done.values()} == {"execute_done"}

        async def trimmed():
            state = (await js.stream_info(RESULTS)).state
            return state if state.messages == 0 else None

        state = await wait_until(trimmed, 30, "RESULTS trimmed below the ack floor")
    # one stored write per report: no duplicates, no removal records
    assert state.last_seq == 20
    # nothing went the old way through the work queue
    old = await js.consumer_info(TASKS, durable_name(RESULT_SUBJECT))
    assert old.delivered.stream_seq == 0


async def test_a_report_left_on_tasks_by_an_older_worker_completes_its_task(nats_server, js, config):
    tid, order = await _queued_order(nats_server.url, js, config)
    # what a worker of a version before RESULTS sends: its report on TASKS
    await js.publish(RESULT_SUBJECT, _report(order), headers={MSG_ID: f"{tid}:1:result"})
    async with running(nats_server.url, config, ExecutorDispatcher):
        done = (await EventReader(js).wait_terminal([tid]))[tid]
    assert done.type == "execute_done"
    assert done.data["result"] == "from an old worker"
    old = await js.consumer_info(TASKS, durable_name(RESULT_SUBJECT))
    assert old.delivered.stream_seq > 0 and old.num_pending == 0 and old.num_ack_pending == 0


@pytest.mark.parametrize("malformed", [False, True])
async def test_a_report_never_handled_fails_once_and_is_not_redelivered(nats_server, js, config, malformed):
    tid, order = await _queued_order(nats_server.url, js, config)
    body = b"{not a report" if malformed else _report(order)
    ack = await js.publish(RESULTS_SUBJECT, body, headers={MSG_ID: f"{tid}:1:result"})
    if not malformed:
        # deliveries that never ack (a dispatcher failing on it max_deliver times)
        sub = await js.pull_subscribe_bind(durable_name(RESULTS_SUBJECT), RESULTS)
        for _ in range(config.bus.max_deliver):
            (msg,) = await sub.fetch(1, timeout=10)
            await msg.nak()
        await sub.unsubscribe()
    async with running(nats_server.url, config, ExecutorDispatcher) as (disp,):

        async def in_dlq():
            return (await js.stream_info("DLQ")).state.messages

        await wait_until(in_dlq, 30, "the report dead-lettered")
        reader = EventReader(js)
        await reader.poll()
        if not malformed:
            failed = (await reader.wait_terminal([tid]))[tid]
            assert failed.type == "execute_failed"
            assert failed.error_code == "dead_letter"
            assert RESULTS_SUBJECT in failed.error
        info = await js.consumer_info(RESULTS, durable_name(RESULTS_SUBJECT))
        assert info.num_ack_pending == 0 and info.num_pending == 0
    dead = await js.get_last_msg("DLQ", f"dlq.{RESULTS_SUBJECT}")
    assert dead.headers[MSG_ID] == f"dlq:{RESULTS}:{ack.seq}"
    assert dead.data == body
    assert disp.counters["dead_lettered"] == 1
    assert disp.counters["errors"] == 0
    assert not [e for e in reader.of(tid) if e.type == "execute_done"]
