"""The executor dispatcher against a real nats-server: enforcement, retries, budgets, TTL."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from cogo.agents.echo import EchoActor
from cogo.errors import ConfigError
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID
from cogo.streams.policies import set_policy
from tests.helpers import EventReader, running, submit


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def test_happy_path_events_and_fields(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        tid = await submit(js, payload={"result": "hi", "tokens": 7, "cost_usd": 0.01})
        reader = EventReader(js)
        done = (await reader.wait_terminal([tid]))[tid]
    assert done.type == "execute_done"
    assert done.event_id == f"{tid}:terminal"
    assert done.route == "echo.run.0" and done.attempt == 1
    assert done.actor and done.actor.startswith("echo@")
    assert done.usage is not None and done.usage.tokens == 7 and done.usage.cost_usd == 0.01
    assert done.queue_wait_ms is not None and done.duration_ms is not None
    assert done.data["result"] == "hi"
    enq = [e for e in reader.of(tid) if e.type == "execute_enqueued"]
    assert len(enq) == 1
    assert enq[0].data["assignment"]["model"] == "local"  # route default filled in
    assert enq[0].data["assignment"]["timeout_ms"] == 10000


@pytest.mark.parametrize(
    ("assignment", "code"),
    [
        ({"model": "gpt-9-ultra"}, "policy.model_not_allowed"),
        ({"max_tokens": 10**9}, "policy.max_tokens_exceeded"),
        ({"max_cost_usd": 1000.0}, "policy.max_cost_exceeded"),
        ({"max_attempts": 99}, "policy.max_attempts_exceeded"),
        ({"timeout_ms": 10**9}, "policy.timeout_exceeded"),
        ({"ttl_ms": 10**10}, "policy.ttl_exceeded"),
        ({"max_tokens": "many"}, "assignment.invalid"),
        ({"max_tokens": -5}, "assignment.invalid"),
        ({"unknown_key": 1}, "assignment.invalid"),
        ({"backoff": {"multiplier": 0.5}}, "assignment.invalid"),
        ("not-an-object", "assignment.invalid"),
    ],
)
async def test_violations_are_rejected_with_stable_codes(nats_server, js, config, assignment, code):
    async with running(nats_server.url, config, ExecutorDispatcher):
        tid = await submit(js, payload={"__assignment": assignment})
        reader = EventReader(js)
        event = (await reader.wait_terminal([tid]))[tid]
    assert event.type == "execute_failed"
    assert event.error_code == code
    assert event.error  # a human message
    # nothing was forwarded to a worker
    assert [e.type for e in reader.of(tid)] == ["execute_failed"]


async def test_unknown_route_and_malformed_messages(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor) as (disp, _):
        tid = await submit(js, route="nobody.home.0")
        await js.publish(EXECUTE_SUBJECT, b"{not json", headers={MSG_ID: "bad-1"})
        await js.publish(EXECUTE_SUBJECT, b'{"task_id": "typed", "route": 5}')
        await js.publish(EXECUTE_SUBJECT, b'{"task_id": "noroute", "payload": {}}')
        await js.publish(EXECUTE_SUBJECT, b"[1,2,3]")
        ok = await submit(js, payload={"result": 1})  # the queue keeps flowing
        reader = EventReader(js)
        got = await reader.wait_terminal([tid, "typed", "noroute", ok])
        await asyncio.sleep(0.5)
        await reader.poll()
    assert got[tid].error_code == "route.unknown"
    assert got["typed"].error_code == "message.malformed"
    assert "$.route" in got["typed"].error
    assert got["noroute"].error_code == "message.malformed"
    assert got[ok].type == "execute_done"
    failed = [e for e in reader.events if e.type == "execute_failed"]
    assert sum(e.error_code == "message.malformed" for e in failed) == 4
    assert disp.counters["dead_lettered"] == 4
    dlq = await js.stream_info("DLQ")
    assert dlq.state.messages == 4
    # malformed messages are terminated, not redelivered
    assert disp.counters["errors"] == 0


async def test_retry_honours_exponential_backoff(nats_server, js, config):
    payload = {
        "fail_times": 3,
        "__assignment": {"max_attempts": 4, "backoff": {"initial_ms": 300, "multiplier": 2.0}},
    }
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        tid = await submit(js, payload=payload)
        reader = EventReader(js)
        done = (await reader.wait_terminal([tid], timeout=20))[tid]
    assert done.type == "execute_done" and done.attempt == 4
    retries = [e for e in reader.of(tid) if e.type == "execute_retry"]
    assert [r.backoff_ms for r in retries] == [300, 600, 1200]
    assert all(r.error_code == "worker.error" and r.next_attempt_at for r in retries)
    enqueued = {e.attempt: e for e in reader.of(tid) if e.type == "execute_enqueued"}
    assert sorted(enqueued) == [1, 2, 3, 4]
    for retry in retries:
        # the next attempt was not dispatched before its backoff was over
        nxt = enqueued[retry.attempt + 1]
        gap_ms = (_ts(nxt.at) - _ts(retry.at)) * 1000
        assert gap_ms >= retry.backoff_ms - 20, (retry.attempt, gap_ms)
        assert gap_ms < retry.backoff_ms + 1500, (retry.attempt, gap_ms)


async def test_attempts_exhausted(nats_server, js, config):
    payload = {
        "fail_always": True,
        "__assignment": {"max_attempts": 2, "backoff": {"initial_ms": 50}},
    }
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        tid = await submit(js, payload=payload)
        reader = EventReader(js)
        failed = (await reader.wait_terminal([tid]))[tid]
    assert failed.type == "execute_failed"
    assert failed.error_code == "attempts.exhausted"
    assert failed.attempt == 2
    assert "worker.error" in failed.error
    assert sum(e.type == "execute_retry" for e in reader.of(tid)) == 1


async def test_permanent_failure_is_not_retried(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        tid = await submit(js, payload={"fail_always": "permanent"})
        reader = EventReader(js)
        failed = (await reader.wait_terminal([tid]))[tid]
    assert failed.error_code == "worker.permanent"
    assert not [e for e in reader.of(tid) if e.type == "execute_retry"]


async def test_budget_exhausted_across_retries(nats_server, js, config):
    # each attempt spends 400 tokens and fails; the third pushes the total over 1000
    payload = {
        "fail_always": True,
        "tokens": 400,
        "__assignment": {"max_tokens": 1000, "max_attempts": 5, "backoff": {"initial_ms": 50}},
    }
    cost = {
        "fail_times": 9,
        "cost_usd": 0.2,
        "__assignment": {"max_cost_usd": 0.5, "max_attempts": 5, "backoff": {"initial_ms": 50}},
    }
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        tid = await submit(js, payload=payload)
        cid = await submit(js, payload=cost)
        reader = EventReader(js)
        got = await reader.wait_terminal([tid, cid])
    assert got[tid].error_code == "budget.tokens_exceeded"
    assert got[tid].attempt == 3 and got[tid].usage.tokens == 1200
    assert sum(e.type == "execute_retry" for e in reader.of(tid)) == 2  # retries stopped
    assert got[cid].error_code == "budget.cost_exceeded"
    assert got[cid].attempt == 3


async def test_ttl_expires_while_queued(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher):
        # no echo worker runs: the order waits in echo.run.0 past its TTL
        tid = await submit(js, payload={"__assignment": {"ttl_ms": 300}})
        await asyncio.sleep(0.8)
        async with running(nats_server.url, config, EchoActor):
            reader = EventReader(js)
            failed = (await reader.wait_terminal([tid]))[tid]
    assert failed.type == "execute_failed"
    assert failed.error_code == "assignment.ttl_expired"


async def test_ttl_expired_before_dispatch(nats_server, js, config):
    tid = await submit(js, payload={"__assignment": {"ttl_ms": 200}})
    await asyncio.sleep(0.5)
    async with running(nats_server.url, config, ExecutorDispatcher):
        reader = EventReader(js)
        failed = (await reader.wait_terminal([tid]))[tid]
    assert failed.error_code == "assignment.ttl_expired"
    assert [e.type for e in reader.of(tid)] == ["execute_failed"]


async def test_attempt_timeout_is_retried_then_fails(nats_server, js, config):
    payload = {"sleep_ms": 2000, "__assignment": {"timeout_ms": 200, "max_attempts": 2, "backoff": {"initial_ms": 50}}}
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        tid = await submit(js, payload=payload)
        reader = EventReader(js)
        failed = (await reader.wait_terminal([tid]))[tid]
    retry = [e for e in reader.of(tid) if e.type == "execute_retry"]
    assert retry and retry[0].error_code == "attempt.timeout"
    assert failed.error_code == "attempts.exhausted" and "attempt.timeout" in failed.error


async def test_resubmitting_same_task_id_runs_once(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor) as (_, echo):
        for _ in range(3):
            await submit(js, payload={"result": 1}, task_id="same-task")
        # without the Nats-Msg-Id header the dispatcher's own order id still dedupes
        await js.publish(EXECUTE_SUBJECT, b'{"task_id": "same-task", "route": "echo.run.0"}')
        reader = EventReader(js)
        await reader.wait_terminal(["same-task"])
        await asyncio.sleep(1.0)
        await reader.poll()
    events = reader.of("same-task")
    assert [e.type for e in events] == ["execute_enqueued", "execute_done"]
    assert echo.counters["succeeded"] == 1


async def test_policy_change_takes_effect_without_restart(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor) as (disp, _):
        first = await submit(js, payload={"__assignment": {"max_tokens": 5000}})
        reader = EventReader(js)
        assert (await reader.wait_terminal([first]))[first].type == "execute_done"
        # a ceiling below the route's own default would fail every plain task: refused
        with pytest.raises(ConfigError, match="max_tokens=4000 is above its ceiling 1000"):
            await set_policy(js, "echo.run.0", {"ceilings": {"max_tokens": 1000}}, actor="t")
        await set_policy(js, "echo.run.0", {"max_tokens": 800, "ceilings": {"max_tokens": 1000}}, actor="test")
        for _ in range(50):  # the dispatcher's KV watch applies it within moments
            if disp.policies.get("echo.run.0").ceilings.max_tokens == 1000:
                break
            await asyncio.sleep(0.05)
        second = await submit(js, payload={"__assignment": {"max_tokens": 5000}})
        got = await reader.wait_terminal([second])
        plain = await submit(js, payload={"result": "fits"})  # the new default fits the ceiling
        done = (await reader.wait_terminal([plain]))[plain]
    assert got[second].error_code == "policy.max_tokens_exceeded"
    assert done.type == "execute_done"
    changes = [e for e in reader.events if e.type == "policy_changed"]
    assert len(changes) == 1 and changes[0].route == "echo.run.0"
    assert changes[0].data["policy"]["ceilings"]["max_tokens"] == 1000


async def test_heartbeats_keep_a_long_task_claimed(nats_server, js, config):
    # ack_wait is 2 s in tests; a 5 s task must not be redelivered
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor) as (_, echo):
        tid = await submit(js, payload={"sleep_ms": 5000})
        reader = EventReader(js)
        done = (await reader.wait_terminal([tid], timeout=20))[tid]
    assert done.type == "execute_done" and done.attempt == 1
    assert echo.counters["heartbeats"] >= 3
    assert echo.counters["received"] == 1  # never redelivered


async def test_many_mixed_tasks_each_end_exactly_once(nats_server, js, config):
    ids: dict[str, str] = {}
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        for i in range(300):
            kind = ("ok", "flaky", "violation")[i % 3]
            payload = {
                "ok": {"result": i},
                "flaky": {"fail_times": 2, "__assignment": {"backoff": {"initial_ms": 20}}},
                "violation": {"__assignment": {"model": "nope"}},
            }[kind]
            ids[await submit(js, payload=payload)] = kind
        reader = EventReader(js)
        await reader.wait_terminal(ids, timeout=60)
        await asyncio.sleep(0.5)
        await reader.poll()
    terminal = reader.terminal()
    for tid, kind in ids.items():
        assert len(terminal[tid]) == 1, tid
        event = terminal[tid][0]
        if kind == "violation":
            assert event.error_code == "policy.model_not_allowed"
        else:
            assert event.type == "execute_done"
            assert event.attempt == (3 if kind == "flaky" else 1)
