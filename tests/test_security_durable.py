"""Durable agents' trust boundaries under ``cogo up --auth``: an app can neither read
another app's signals and children's results, nor forge its tasks' children, nor drop the
signals, cancels and wake-ups sent to them.

One real ``cogo up --auth`` with two apps, ``victim`` and ``mallory``; the attacker is plain
nats-py logged in as mallory's NATS user (its password from ``credentials.json``). Each
test is one attack: the server refuses what it can, and what it cannot refuse never counts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.js import api

import cogo
from cogo.runtime.records import record_key
from cogo.sdk.steps import task_bucket
from cogo.streams.catalogue import CALL_STARTED, CallStarted
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID, new_id
from cogo.streams.events import encode_event, make_event
from cogo.streams.topology import EVENTS, SUSPENSION_BUCKET
from tests.helpers import SUITE_CONFIG, wait_until
from tests.secured import SecuredSystem, accepted, secured_system

APPS = ["--app", "tests.security_durable_apps:victim", "--app", "tests.security_durable_apps:mallory"]
WAIT, PARENT, MALLORY = "victim.wait.0", "victim.parent.0", "mallory.x.0"
CONFIG = SUITE_CONFIG + "\n[runtime]\nsuspend_after_ms = 50\n"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredSystem]:
    with secured_system(tmp_path_factory.mktemp("security-durable"), CONFIG, *APPS) as running:
        yield running


async def suspended(client: cogo.Client, task_id: str) -> None:
    async def check() -> bool:
        try:
            return (await client.status(task_id)).status == "suspended"
        except cogo.errors.TaskNotFound:
            return False

    await wait_until(check, 60, f"{task_id} never suspended")


async def consumer_created(nc: nats.NATS, **config: Any) -> bool:
    """Whether the server let the attacker create a consumer on EVENTS (False: refused)."""
    js = nc.jetstream(timeout=2)
    cfg = api.ConsumerConfig(
        name=f"m-{new_id()}",
        deliver_subject=nc.new_inbox(),
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=2.0,
        mem_storage=True,
        **config,
    )
    try:
        await js.add_consumer(EVENTS, cfg)
    except (nats.errors.Error, TimeoutError):
        return False
    return True


async def test_an_app_reads_no_other_apps_signals_nor_childrens_results(system):
    nc, errors = await system.connect("app-mallory")
    heard: list[bytes] = []

    async def on_msg(msg: Any) -> None:
        heard.append(msg.data)

    for pattern in (
        "events.task_signaled.*",
        "events.task_signaled.>",
        "events.call_completed.*",
        "events.call_completed.>",
        f"events.task_signaled.{WAIT}.*",
        f"events.call_completed.{PARENT}.*",
        "events.>",
    ):
        await nc.subscribe(pattern, cb=on_msg)
    await nc.flush()
    secret = f"secret-{new_id()}"
    async with system.client() as client:
        parent = await client.submit(PARENT, {})
        child = f"{parent.task_id}/c"
        await suspended(client, child)
        # any task's journal: one consumer with several filters (none in the request's
        # subject), or one filter on another app's route; the old route-less subjects
        subjects = ["events.task_signaled.>", "events.call_completed.>"]
        assert not await consumer_created(nc, filter_subjects=subjects)
        assert not await consumer_created(nc, filter_subject=f"events.task_signaled.{WAIT}.*")
        assert not await consumer_created(nc, filter_subject=f"events.call_completed.{PARENT}.*")
        bucket = task_bucket(child)
        assert not await consumer_created(nc, filter_subject=f"events.task_signaled.{bucket}")
        # its own route's journal, as its worker reads it: granted
        assert await consumer_created(nc, filter_subject=f"events.task_signaled.{MALLORY}.*")
        await client.signal(child, "go", secret)
        # the signal reached the child, whose result reached its parent (both journaled)
        assert await parent.result(timeout=60) == {"child": {"got": secret}}
    await nc.flush()
    await nc.close()
    assert not [m for m in heard if secret.encode() in m], "mallory read the victim's secret"
    assert any("permissions violation" in e for e in errors), errors


async def test_an_app_cannot_forge_another_apps_child(system):
    """A forged ``call_started`` would list an unrelated task as the victim's child: its
    status would show it, and cancelling the victim would cancel that task too."""
    nc, _ = await system.connect("app-mallory")
    secret = f"secret-{new_id()}"
    async with system.client() as client:
        bystander = await client.submit(WAIT, {})  # an unrelated task of the victim's
        parent = await client.submit(PARENT, {})
        child = f"{parent.task_id}/c"
        await suspended(client, child)
        await suspended(client, parent.task_id)
        forged = {}
        for route in (PARENT, MALLORY):  # the victim's journal, and mallory's own
            entry = make_event(
                CALL_STARTED,
                event_id=f"{parent.task_id}:call:evil-{route}",
                actor="mallory",
                task_id=parent.task_id,
                correlation_id=parent.task_id,
                route=PARENT,
                attempt=1,
                data=CallStarted(
                    child_id=bystander.task_id, key="evil", child_route=WAIT, seq=0, max_tokens=1, max_cost_usd=0.0
                ),
            )
            subject = f"events.{CALL_STARTED}.{route}.{task_bucket(parent.task_id)}"
            forged[route] = await accepted(nc, subject, encode_event(entry), {MSG_ID: entry.event_id})
        # the route-less subject of before
        old = f"events.{CALL_STARTED}.{task_bucket(parent.task_id)}"
        forged["old"] = await accepted(nc, old, encode_event(entry), {MSG_ID: new_id()})
        assert forged == {PARENT: False, MALLORY: True, "old": False}
        await asyncio.sleep(1.0)  # the projector has stored mallory's entry by now

        async def projected() -> bool:
            return (await client.status(parent.task_id)).children == [child]

        await wait_until(projected, 30, "the parent's children")
        assert bystander.task_id not in (await client.status(parent.task_id)).children
        await client.cancel(parent.task_id)
        ended = await parent.wait(timeout=60)
        assert ended.status == "cancelled", (ended.error_code, ended.error, ended.events)
        assert (await client.handle(child).wait(timeout=60)).status == "cancelled"
        # the bystander was no child: it still waits, and its signal still counts
        assert (await client.status(bystander.task_id)).status == "suspended"
        await client.signal(bystander.task_id, "go", secret)
        assert await bystander.result(timeout=60) == {"got": secret}
    await nc.close()


async def test_an_app_cannot_drop_signals_cancels_and_wake_ups_by_message_id(system):
    """Mallory may publish to the submit subject (``ctx.call``): a message there under the
    id a command would have must not make the command a duplicate."""
    nc, _ = await system.connect("app-mallory")
    secret = f"secret-{new_id()}"
    async with system.client() as client:
        signalled = await client.submit(WAIT, {})
        cancelled = await client.submit(WAIT, {})
        parent = await client.submit(PARENT, {})
        child = f"{parent.task_id}/c"
        for tid in (signalled.task_id, cancelled.task_id, child):
            await suspended(client, tid)
        ids = [f"{signalled.task_id}:signal:go", f"{cancelled.task_id}:cancel", f"{child}:wake", f"{child}:signal:go"]
        for msg_id in ids:
            assert await accepted(nc, EXECUTE_SUBJECT, b"{}", {MSG_ID: msg_id})
        await client.signal(signalled.task_id, "go", secret)
        assert await signalled.result(timeout=60) == {"got": secret}
        await client.cancel(cancelled.task_id)
        assert (await cancelled.wait(timeout=60)).status == "cancelled"
        # the child's end wakes its parent with a wake-up of the child's id
        await client.signal(child, "go", secret)
        assert await parent.result(timeout=60) == {"child": {"got": secret}}
    await nc.close()


async def test_a_suspension_record_holds_no_token(system):
    """Apps read the ``suspensions`` bucket (is my task cancelled?): a suspended task's
    record must not hand them its token (which guards its message ids), its output token
    or its seal."""
    nc, _ = await system.connect("app-mallory")
    async with system.client() as client:
        waiting = await client.submit(WAIT, {})
        await suspended(client, waiting.task_id)
        kv = await nc.jetstream(timeout=5).key_value(SUSPENSION_BUCKET)
        entry = await kv.get(record_key(waiting.task_id))
        assert entry.value is not None
        record = json.loads(entry.value)
        assert record["state"] == "suspended" and record["order"]["task_id"] == waiting.task_id
        order = record["order"]
        assert [order.get(k) for k in ("token", "out_token", "seal")] == [None] * 3, order
        # the resumed run's order was sealed anew: the signal still counts
        await client.signal(waiting.task_id, "go", "ok")
        assert await waiting.result(timeout=60) == {"got": "ok"}
    await nc.close()
