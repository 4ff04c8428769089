"""The dispatcher's seal (``cogo.streams.seal``) and message schedules
(``cogo.streams.schedule``): pure checks, schedules on a real nats-server, and signed
principals through a real dispatcher."""

from __future__ import annotations

import time

import msgspec
import nats.errors
import pytest

from cogo.agents.echo import EchoActor
from cogo.config import SEAL_KEY_ENV, Backoff
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.envelope import (
    EXECUTE_SUBJECT,
    MSG_ID,
    PRINCIPAL_HEADER,
    PRINCIPAL_MAC_HEADER,
    RETRY_SUBJECT,
    ResolvedAssignment,
    Usage,
    WorkOrder,
    WorkResult,
    decode_result,
    encoder,
    new_id,
)
from cogo.streams.outputs import Output, encode_output
from cogo.streams.schedule import at_header, cancel_schedule, publish_at
from cogo.streams.seal import OutputVerifier, Sealer, guard_id, output_mac
from cogo.streams.topology import TASKS
from tests.helpers import EventReader, running


def _order(**fields: object) -> WorkOrder:
    assignment = ResolvedAssignment(
        model="gpt-4o-mini",
        max_tokens=4000,
        max_cost_usd=0.5,
        timeout_ms=1000,
        ttl_ms=60000,
        max_attempts=3,
        backoff=Backoff(initial_ms=100, multiplier=2.0, max_ms=1000),
        allowed_models=("gpt-4o-mini",),
    )
    now = time.time()
    base: dict[str, object] = dict(
        task_id="t-1",
        route="alice.work.0",
        attempt=1,
        payload={"text": "é ✓", "n": 0.1},
        assignment=assignment,
        submitted_at=now,
        deadline=now + 60,
        correlation_id="t-1",
    )
    return WorkOrder(**{**base, **fields})  # type: ignore[arg-type]


def test_a_sealed_order_survives_the_workers_round_trip_and_nothing_else():
    sealer = Sealer("k" * 43)
    sealed = sealer.seal(_order())
    assert sealed.seal and sealed.token and sealed.out_token
    # the worker decodes the order and reports it back inside its result
    report = WorkResult(order=sealed, ok=True, actor="w", claimed_at=1.0, queue_wait_ms=1.0, duration_ms=1.0)
    echoed = decode_result(encoder.encode(report)).order
    assert sealer.verify(echoed)
    for change in (
        {"task_id": "t-2"},
        {"route": "mallory.x.0"},
        {"attempt": 2},
        {"usage_so_far": Usage(tokens=0, cost_usd=-1.0)},
        {"bypass": ("max_tokens",)},
        {"assignment": msgspec.structs.replace(sealed.assignment, max_tokens=10**12)},
        {"seal": None},
    ):
        assert not sealer.verify(msgspec.structs.replace(echoed, **change)), change
    assert not Sealer("another key").verify(echoed)


def test_guarded_ids_and_output_macs():
    sealer = Sealer("key")
    token = sealer.token("t-1")
    assert guard_id(None, "t-1:terminal") == "t-1:terminal"  # no key: ids as they are
    guarded = guard_id(token, "t-1:terminal")
    assert guarded.startswith("t-1:terminal~") and guarded == guard_id(token, "t-1:terminal")
    assert guarded != guard_id(sealer.token("t-2"), "t-1:terminal")
    # a reader holds the output key only, and verifies what the worker wrote
    data = encode_output(Output(task_id="t-1", attempt=1, at="now", seq=1, data="hi"))
    headers = {"Cogo-Mac": output_mac(sealer.seal(_order()).out_token or "", data)}
    reader = OutputVerifier(sealer.output_key)
    assert reader.valid("t-1", data, headers)
    assert not reader.valid("t-2", data, headers)
    assert not reader.valid("t-1", data + b" ", headers)
    assert not reader.valid("t-1", data, {})
    assert sealer.valid_principal("http", "t-1", sealer.principal_mac("http", "t-1"))
    assert not sealer.valid_principal("http", "t-2", sealer.principal_mac("http", "t-1"))


def test_at_header_is_rfc3339_with_milliseconds():
    assert at_header(0.25) == "@at 1970-01-01T00:00:00.250Z"


async def test_a_schedule_fires_once_at_its_time_and_a_cancelled_one_never(js):
    sub = await js.pull_subscribe_bind("orchestrator-retry-0", stream=TASKS)
    fires_at = time.time() + 1.0
    await publish_at(js, key="test.one", target=RETRY_SUBJECT, data=b"one", at=fires_at, headers={"Cogo-Kind": "retry"})
    await publish_at(js, key="test.two", target=RETRY_SUBJECT, data=b"two", at=fires_at)
    await cancel_schedule(js, key="test.two")
    (msg,) = await sub.fetch(1, timeout=10)
    assert msg.data == b"one" and msg.headers["Cogo-Kind"] == "retry"
    assert time.time() >= fires_at - 0.05  # the server held it, not a consumer
    await msg.ack()
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await sub.fetch(1, timeout=2)


async def test_a_principal_counts_only_as_the_facade_signed_it(nats_server, js, config, monkeypatch):
    """With a seal key, a ``Cogo-Principal`` header is believed only with its MAC for that
    very task: anyone on NATS can write the header, only the facade can sign it."""
    monkeypatch.setenv(SEAL_KEY_ENV, "test-seal-key")
    sealer = Sealer("test-seal-key")
    policy = msgspec.structs.replace(config.policy, bypass_principals=["http"])
    config = msgspec.structs.replace(config, policy=policy)
    ask = {"__assignment": {"max_tokens": 300_000, "bypass": ["max_tokens"]}}
    signed, claimed, replayed = new_id(), new_id(), new_id()
    headers = {
        signed: {PRINCIPAL_HEADER: "http", PRINCIPAL_MAC_HEADER: sealer.principal_mac("http", signed)},
        claimed: {PRINCIPAL_HEADER: "http"},
        # a genuine signature, lifted from another task
        replayed: {PRINCIPAL_HEADER: "http", PRINCIPAL_MAC_HEADER: sealer.principal_mac("http", signed)},
    }
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        for task_id, extra in headers.items():
            body = {"task_id": task_id, "route": "echo.run.0", "payload": ask}
            await js.publish(EXECUTE_SUBJECT, encoder.encode(body), headers={MSG_ID: task_id, **extra})
        reader = EventReader(js)
        done = await reader.wait_terminal(list(headers))
    assert done[signed].type == "execute_done"
    assert done[claimed].error_code == done[replayed].error_code == "policy.bypass_denied"
