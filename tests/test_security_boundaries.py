"""Trust boundaries under ``cogo up --auth``: one app cannot speak for another's tasks.

One real ``cogo up --auth`` with two apps, ``alice`` (the victim) and ``mallory``. The
attacker is an outsider with plain nats-py, logged in as mallory's NATS user (its password
from the data dir's ``credentials.json``) or as the ``client`` user; each test is one attack
of the audit (issue 21, items 1-6) and checks both that the server refuses what it can and
that what it cannot refuse never counts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

import cogo
from cogo.config import Backoff
from cogo.sdk.steps import journal_subject
from cogo.streams.catalogue import StepCompleted
from cogo.streams.envelope import (
    EXECUTE_SUBJECT,
    KIND_HEADER,
    MSG_ID,
    RESULTS_SUBJECT,
    RETRY_SUBJECT,
    ResolvedAssignment,
    WorkOrder,
    WorkResult,
    encoder,
    new_id,
    result_subject,
)
from cogo.streams.events import encode_event, iso, make_event
from cogo.streams.outputs import OUTPUTS, Output, decode_output, encode_output, output_subject
from cogo.streams.seal import MAC_HEADER, OutputVerifier
from tests.helpers import SUITE_CONFIG, EventReader, wait_until
from tests.secured import SecuredSystem, accepted, secured_system

APPS = ["--app", "tests.security_apps:alice", "--app", "tests.security_apps:mallory"]
ALICE, MALLORY = "alice.work.0", "mallory.x.0"
# small enough that held retries in a consumer's ack_pending would stall it (item 6)
CONFIG = SUITE_CONFIG.replace("[bus]\n", "[bus]\nmax_ack_pending = 16\n")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredSystem]:
    with secured_system(tmp_path_factory.mktemp("security"), CONFIG, *APPS) as running:
        yield running


def forged_order(task_id: str, route: str = ALICE, attempt: int = 1, **fields: Any) -> WorkOrder:
    now = time.time()
    assignment = ResolvedAssignment(
        model="gpt-4.1",
        max_tokens=10**12,
        max_cost_usd=1e9,
        timeout_ms=60_000,
        ttl_ms=600_000,
        max_attempts=99,
        backoff=Backoff(initial_ms=1, multiplier=1.0, max_ms=1),
    )
    return WorkOrder(
        task_id=task_id,
        route=route,
        attempt=attempt,
        payload={},
        assignment=assignment,
        submitted_at=now,
        deadline=now + 600,
        correlation_id=task_id,
        **fields,
    )


def forged_result(order: WorkOrder) -> bytes:
    result = WorkResult(
        order=order,
        ok=True,
        actor="mallory",
        claimed_at=time.time(),
        queue_wait_ms=1.0,
        duration_ms=1.0,
        result={"forged_by": "mallory"},
    )
    return encoder.encode(result)


def opened(gate: Path) -> None:
    gate.write_text("go")


async def test_a_forged_result_never_counts_and_the_genuine_one_does(system, tmp_path):
    gate = tmp_path / "gate"
    nc, errors = await system.connect("app-mallory")
    async with system.client() as client:
        handle = await client.submit(ALICE, {"gate": str(gate)})
        tid = handle.task_id
        plain_id = {MSG_ID: f"{tid}:1:result"}  # the id the genuine report used to have
        # the shared subject, and alice's own: the server refuses them
        assert not await accepted(nc, RESULTS_SUBJECT, forged_result(forged_order(tid)), plain_id)
        assert not await accepted(nc, result_subject(ALICE), forged_result(forged_order(tid)), plain_id)
        # mallory's own subject takes it, but the dispatcher counts a report only for its
        # subject's route, and only with an order it sealed itself
        for order in (forged_order(tid), forged_order(tid, route=MALLORY)):
            assert await accepted(nc, result_subject(MALLORY), forged_result(order), plain_id)
        opened(gate)
        result = await handle.result(timeout=60)
        status = await handle.status()
    await nc.close()
    assert result["by"] == "alice" and "forged_by" not in result
    assert all(e.get("actor") != "mallory" for e in status.events), status.events
    assert any("permissions violation" in e for e in errors), errors


async def test_the_journal_of_a_task_is_written_by_its_own_route_only(system):
    tid = new_id()
    nc, _ = await system.connect("app-mallory")
    event = make_event(
        "step_completed",
        event_id=f"{tid}:step:secret",
        task_id=tid,
        correlation_id=tid,
        route=ALICE,
        actor="mallory",
        attempt=1,
        data=StepCompleted(step="secret", delivery=1, result={"by": "mallory"}),
    )
    headers = {MSG_ID: event.event_id}
    assert not await accepted(nc, journal_subject(ALICE, tid), encode_event(event), headers)
    # its own route's journal takes it (and the plain id): alice never reads it there, and
    # her entry's id is guarded, so it cannot be taken first
    assert await accepted(nc, journal_subject(MALLORY, tid), encode_event(event), headers)
    await nc.close()
    async with system.client() as client:
        # attempt 1 fails before the step: attempt 2 reads the journal, then runs the step
        handle = await client.submit(ALICE, {"fail_times": 1}, task_id=tid)
        result = await handle.result(timeout=60)
    assert result["attempt"] == 2
    assert result["secret"] == {"by": "alice"}


async def test_forged_output_chunks_and_end_markers_are_never_shown(system, tmp_path):
    gate = tmp_path / "gate"
    nc, _ = await system.connect("app-mallory")
    async with system.client() as client:
        handle = await client.submit(ALICE, {"gate": str(gate)})
        tid = handle.task_id
        subject = output_subject(tid)
        chunk = Output(task_id=tid, attempt=1, at=iso(), seq=1, data={"from": "mallory"})
        end = Output(task_id=tid, attempt=1, at=iso(), end=True, status="succeeded")
        # the subject is open to every worker (ctx.emit): what it stores must not count
        assert await accepted(nc, subject, encode_output(chunk), {})
        assert await accepted(nc, subject, encode_output(end), {MSG_ID: f"{tid}:end"})
        assert await accepted(nc, subject, encode_output(chunk), {MAC_HEADER: "0" * 64})
        reading = asyncio.create_task(_collect(client.stream(tid)))
        await asyncio.sleep(0.5)  # the reader has seen the forgeries by now, if it shows them
        assert not reading.done(), "a forged end marker closed the stream"
        opened(gate)
        chunks = await asyncio.wait_for(reading, 60)
        await handle.result(timeout=60)
    assert [c.data for c in chunks] == [{"from": "alice", "n": 1}, {"from": "alice", "n": 2}]
    # over HTTP too (SSE): alice's chunks, then the end marker with the task's real status
    async with system.http() as http:
        body = (await http.get(f"/api/tasks/{tid}/stream")).text
    frames = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [f.get("data") for f in frames[:-1]] == [{"from": "alice", "n": 1}, {"from": "alice", "n": 2}]
    assert frames[-1]["end"] and frames[-1]["status"] == "succeeded"
    # the genuine end marker is in the stream: the forged one did not take its id
    admin = await nats.connect(system.info["nats_url"], user="admin", password=system.passwords["admin"])
    verifier = OutputVerifier(system.info["output_key"])
    sub = await admin.jetstream().subscribe(subject, stream=OUTPUTS, ordered_consumer=True)
    genuine_ends = 0
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except (TimeoutError, nats.errors.TimeoutError):
            break
        if decode_output(msg.data).end and verifier.valid(tid, msg.data, msg.headers):
            genuine_ends += 1
    await admin.close()
    await nc.close()
    assert genuine_ends == 1


async def _collect(stream: Any) -> list[Output]:
    return [chunk async for chunk in stream]


async def test_worker_events_count_only_from_the_tasks_own_route(system, tmp_path):
    gate = tmp_path / "gate"
    nc, _ = await system.connect("app-mallory")
    async with system.client() as client, system.http() as http:
        handle = await client.submit(ALICE, {"gate": str(gate)})
        tid = handle.task_id

        def started(route: str, attempt: int) -> bytes:
            return encode_event(
                make_event(
                    "execute_started",
                    event_id=f"{tid}:started:{attempt}",
                    task_id=tid,
                    correlation_id=tid,
                    route=route,
                    actor="mallory",
                    attempt=attempt,
                    data={"claimed_at": iso(), "delivery": 1},
                )
            )

        for kind in ("execute_started", "llm_call"):
            assert not await accepted(nc, f"events.{kind}.{ALICE}", started(ALICE, 1), {})
        assert not await accepted(nc, "events.execute_started", started(ALICE, 1), {})
        # on its own route's subject it is stored, and must not count as alice's task's,
        # whatever its body claims: the projection takes type and route from the subject
        assert await accepted(nc, f"events.execute_started.{MALLORY}", started(MALLORY, 7), {})
        assert await accepted(nc, f"events.execute_started.{MALLORY}", started(ALICE, 1), {})
        done = encode_event(
            make_event(
                "execute_done",
                event_id=f"{tid}:terminal",
                task_id=tid,
                correlation_id=tid,
                route=ALICE,
                actor="mallory",
                attempt=1,
                data={"claimed_at": iso(), "submitted_at": iso(), "result": {"forged_by": "mallory"}},
            )
        )
        assert await accepted(nc, f"events.execute_started.{MALLORY}", done, {})

        async def projected() -> bool:
            # the forgeries, and the dispatcher's execute_enqueued (which may come after them)
            sql = (
                f"SELECT count(*) FILTER (actor = 'mallory'), count(*) FILTER "
                f"(type = 'execute_enqueued') FROM bus_events WHERE task_id = '{tid}'"
            )
            rows = (await http.post("/api/sql", json={"sql": sql})).json().get("rows") or [[0, 0]]
            return rows[0][0] == 3 and rows[0][1] == 1

        await wait_until(projected, 60, "the forged event in bus_events")
        status = await handle.status()
        assert status.route == ALICE and status.attempt == 1 and not status.finished
        assert all(e.get("actor") != "mallory" for e in status.events), status.events
        sql = f"SELECT DISTINCT type, route FROM bus_events WHERE task_id = '{tid}' AND actor = 'mallory'"
        rows = (await http.post("/api/sql", json={"sql": sql})).json()["rows"]
        assert rows == [["execute_started", MALLORY]], rows
        opened(gate)
        assert (await handle.result(timeout=60))["by"] == "alice"
    await nc.close()


async def test_no_app_may_purge_the_artifacts(system):
    admin = await nats.connect(system.info["nats_url"], user="admin", password=system.passwords["admin"])
    bucket = await admin.jetstream().object_store("artifacts")
    await bucket.put("alice-task/report.json", b'{"kept": true}')
    nc, errors = await system.connect("app-mallory")
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await nc.jetstream(timeout=2).purge_stream("OBJ_artifacts")
    await nc.close()
    assert (await bucket.get("alice-task/report.json")).data == b'{"kept": true}'
    await admin.close()
    assert any("permissions violation" in e for e in errors), errors


async def test_a_forged_retry_is_a_fresh_task_with_the_routes_ceilings(system):
    tid = new_id()
    client_nc, _ = await system.connect("client")
    forged = forged_order(tid, attempt=2)
    # the public subject takes it as a submission: never forwarded as it is
    await client_nc.jetstream().publish(
        EXECUTE_SUBJECT,
        encoder.encode(forged),
        headers={MSG_ID: f"{tid}:2:retry", KIND_HEADER: "retry"},
        timeout=5,
    )
    await client_nc.close()
    # and only dispatchers may publish retries, due now or as schedules
    nc, _ = await system.connect("app-mallory")
    data = encoder.encode(forged_order(new_id(), attempt=2, not_before=time.time() + 86_400))
    assert not await accepted(nc, RETRY_SUBJECT, data, {})
    assert not await accepted(
        nc,
        "schedules.retry.x.2",
        data,
        {"Nats-Schedule": "@at 2099-01-01T00:00:00Z", "Nats-Schedule-Target": RETRY_SUBJECT},
    )
    await nc.close()
    async with system.client() as client:
        final = await client.wait(cogo.TaskHandle(client, tid, ALICE), timeout=60)
    admin = await nats.connect(system.info["nats_url"], user="admin", password=system.passwords["admin"])
    reader = EventReader(admin.jetstream(), f"events.execute_enqueued.{ALICE}")
    await reader.poll()
    await admin.close()
    enqueued = [e for e in reader.events if e.task_id == tid]
    assert [e.attempt for e in enqueued] == [1], enqueued
    assignment = enqueued[0].data["assignment"]
    assert assignment["max_tokens"] <= 200_000 and assignment["allowed_models"], assignment
    assert final.status == "succeeded"


async def test_a_bypass_needs_a_grant_over_nats_and_http(system):
    ask = {"__assignment": {"max_tokens": 450_000, "bypass": ["max_tokens"]}}
    async with system.client() as client:
        handle = await client.submit(ALICE, ask)
        with pytest.raises(cogo.TaskFailed) as failed:
            await handle.result(timeout=60)
        assert failed.value.code == "policy.bypass_denied"
        async with system.http() as http:
            answer = await http.post("/api/tasks", json={"route": ALICE, "payload": ask})
            assert answer.status_code == 202
            over_http = answer.json()["task_id"]
        final = await client.wait(cogo.TaskHandle(client, over_http, ALICE), timeout=60)
        assert final.error_code == "policy.bypass_denied"
        # granted for the route's canary cohort (what the rollout seed asks it for)
        admin = await nats.connect(system.info["nats_url"], user="admin", password=system.passwords["admin"])
        kv = await admin.jetstream().key_value("rollouts")
        split = {"route": ALICE, "candidate": "v9", "percent": 0}
        await kv.put(f"route.{ALICE}", json.dumps(split).encode())
        reader = EventReader(admin.jetstream(), "events.policy_bypassed.>")
        try:
            pinned = {**ask, "__cohort": "canary"}

            async def granted() -> Any:
                handle = await client.submit(ALICE, pinned)
                await asyncio.sleep(0.3)
                await reader.poll()
                return [e for e in reader.events if e.task_id == handle.task_id]

            audits = await wait_until(granted, 60, "a canary task's bypass granted")
        finally:
            await kv.delete(f"route.{ALICE}")
            await admin.close()
    assert audits[0].data["granted_by"] == "canary"
    assert {e.task_id for e in reader.events}.isdisjoint({handle.task_id, over_http})


async def test_held_retries_never_block_fresh_tasks(system):
    """40 tasks whose retry waits a day, on a system whose consumers hold 16 unacked
    messages at most: fresh tasks still run (held in ack_pending, they stalled it)."""
    held = {
        "fail_times": 1,
        "__assignment": {
            "ttl_ms": 86_400_000,
            "backoff": {"initial_ms": 86_000_000, "max_ms": 86_000_000},
        },
    }
    admin = await nats.connect(system.info["nats_url"], user="admin", password=system.passwords["admin"])
    reader = EventReader(admin.jetstream(), f"events.execute_retry.{ALICE}")
    async with system.client() as client:
        handles = [await client.submit(ALICE, held) for _ in range(40)]
        ids = {h.task_id for h in handles}

        async def all_retrying() -> bool:
            await reader.poll()
            return ids <= {e.task_id for e in reader.events}

        await wait_until(all_retrying, 120, "every held task's execute_retry")
        fresh = [await client.submit(ALICE, {}) for _ in range(5)]
        results = await asyncio.gather(*(h.result(timeout=90) for h in fresh))
    info = await admin.jetstream().consumer_info("TASKS", "orchestrator-execute-0")
    await admin.close()
    assert all(r["by"] == "alice" for r in results)
    assert info.num_ack_pending < 16
