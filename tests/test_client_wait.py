"""``cogo.Client`` waits on the terminal event, not on the projector: a task it submitted
ends from its event alone, reads ``queued`` until its events say more, and an older task's
end is read from the stream past what the projector has applied. A stalled or lagging
projector is stood in for by a real responder on the status subject (the real projector is
stopped first)."""

from __future__ import annotations

import asyncio
import json

import pytest

import cogo
from cogo.projections.tasks import STATUS_SUBJECT
from tests import sample_apps


@pytest.fixture
def cogo_apps():
    return [sample_apps.app]


async def _replace_projector(env, answer: dict | None):
    """Stop the env's projector; answer status requests with ``answer`` (None: never)."""
    await env.startup.projector.stop()
    env.startup.projector = None
    nc = env.startup.admin
    asked: list[dict] = []

    async def respond(msg):
        asked.append(json.loads(msg.data))
        if answer is not None:
            await msg.respond(json.dumps(answer).encode())

    await nc.subscribe(STATUS_SUBJECT, cb=respond)
    await nc.flush()
    return asked


async def test_a_submitted_task_ends_from_its_event_with_a_stalled_projector(cogo_env):
    asked = await _replace_projector(cogo_env, None)  # takes every request, answers none
    client = cogo_env.client
    handles = [await client.submit("sample.greet.0", {"name": f"n{i}", "times": 1}) for i in range(20)]
    results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert [r["text"] for r in results] == [f"hello n{i}" for i in range(20)]
    failing = await client.submit("sample.boom.0", {"items": "not a list"})
    with pytest.raises(cogo.TaskFailed) as failed:
        await failing.result(timeout=30)
    assert failed.value.code == "payload.invalid"
    assert asked == []  # nothing was asked of the projector


async def test_status_right_after_submit_is_queued_not_unknown(cogo_env):
    # a projector that has projected nothing yet: every task is unknown to it
    await _replace_projector(cogo_env, {"error": {"code": "task.not_found", "message": "no"}, "projected_seq": 0})
    client = cogo_env.client
    handle = await client.submit("sample.sleepy.0", {"seconds": 0.5})
    status = await handle.status()
    assert status.status == "queued" and status.task_id == handle.task_id
    assert status.route == "sample.sleepy.0"
    assert (await client.status(handle.task_id)).status == "queued"
    with pytest.raises(cogo.errors.TaskNotFound):
        await client.status("submitted-elsewhere")  # nobody here knows of it
    assert await handle.result(timeout=30) == {"slept": 0.5}
    assert (await handle.status()).status == "succeeded"  # the event said more


async def test_an_older_task_is_found_on_the_bus_past_what_the_projector_applied(cogo_env):
    done = await cogo_env.client.submit("sample.greet.0", {"name": "old", "times": 1})
    await done.result(timeout=30)
    await _replace_projector(cogo_env, {"error": {"code": "task.not_found", "message": "no"}, "projected_seq": 0})
    # another client, which did not submit it: only the stream can tell it ended
    async with cogo.Client(cogo_env.url) as other:
        result = await other.handle(done.task_id, "sample.greet.0").result(timeout=30)
        assert result["text"] == "hello old"
        unrouted = await other.handle(done.task_id).wait(timeout=30)  # route unknown too
        assert unrouted.status == "succeeded"


async def test_the_projector_answers_a_finished_task_with_what_it_projected(cogo_env):
    handle = await cogo_env.client.submit("sample.greet.0", {"name": "p", "times": 1})
    await handle.result(timeout=30)
    await cogo_env.projector.wait_caught_up()
    nc = cogo_env.client.nc
    asks = [json.dumps({"task_id": handle.task_id, "wait": w}).encode() for w in (False, True)]
    replies = await asyncio.gather(*(nc.request(STATUS_SUBJECT, a, timeout=10) for a in asks))
    for reply in replies:
        answer = json.loads(reply.data)
        assert answer["status"] == "succeeded" and answer["result"]["text"] == "hello p"
        assert answer["projected_seq"] >= 2  # its enqueued and done events, at least
    missing = await nc.request(STATUS_SUBJECT, json.dumps({"task_id": "nope", "wait": False}).encode(), timeout=10)
    answer = json.loads(missing.data)
    assert answer["error"]["code"] == "task.not_found" and answer["projected_seq"] >= 2


async def test_a_resubmitted_task_id_answers_with_its_first_runs_end(cogo_env):
    client = cogo_env.client
    first = await client.submit("sample.greet.0", {"name": "once", "times": 1}, task_id="same")
    ended = await first.result(timeout=30)
    again = await client.submit("sample.greet.0", {"name": "twice", "times": 1}, task_id="same")
    assert again.duplicate  # it ran once; its end came before this handle subscribed
    assert await again.result(timeout=30) == ended
    assert (await again.status()).status == "succeeded"
