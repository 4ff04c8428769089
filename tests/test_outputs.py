"""Streamed output (``ctx.emit``, stream ``OUTPUTS``) on a real nats-server: chunks carry
attempt and sequence, every task that emitted gets an end marker (failed ones too), and it
reads back through ``TaskHandle.stream()``, ``GET /api/tasks/{id}/stream`` (SSE) and
``cogo submit --follow`` (a real process)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

import cogo
from cogo.streams.outputs import OUTPUTS, decode_output, output_subject
from tests import runtime_apps
from tests.helpers import facade


@pytest.fixture
def cogo_apps():
    return [runtime_apps.app]


async def stored(env, task_id: str) -> list:
    """Every OUTPUTS message of the task, as stored."""
    chunks = []
    async for msg in _ordered(env, task_id):
        chunks.append(decode_output(msg.data))
    return chunks


async def _ordered(env, task_id):
    js = env.client.nc.jetstream()
    sub = await js.subscribe(output_subject(task_id), stream=OUTPUTS, ordered_consumer=True)
    try:
        while True:
            try:
                yield await sub.next_msg(timeout=0.5)
            except Exception:
                return
    finally:
        await sub.unsubscribe()


async def test_a_retried_tasks_output_has_both_attempts_and_one_end(cogo_env):
    handle = await cogo_env.client.submit("rt.speak.0", {"lines": 2, "fail_until": 2})
    chunks = [c async for c in handle.stream()]
    assert [(c.attempt, c.seq, c.data) for c in chunks] == [
        (1, 1, {"line": 0, "attempt": 1}),
        (1, 2, {"line": 1, "attempt": 1}),
        (2, 1, {"line": 0, "attempt": 2}),
        (2, 2, {"line": 1, "attempt": 2}),
    ]
    assert await handle.result(timeout=10) == {"lines": 2}
    raw = await stored(cogo_env, handle.task_id)
    assert [o.end for o in raw] == [False] * 4 + [True]
    assert (raw[-1].status, raw[-1].attempt) == ("succeeded", 2)


async def test_a_failed_task_that_emitted_gets_its_end_marker(cogo_env):
    handle = await cogo_env.client.submit("rt.speak.0", {"lines": 1, "permanent": True})
    with pytest.raises(cogo.TaskFailed):
        await handle.result(timeout=30)
    *_, end = await stored(cogo_env, handle.task_id)
    assert end.end and end.status == "failed" and end.error_code == "worker.permanent"
    assert [c.data async for c in handle.stream()] == [{"line": 0, "attempt": 1}]


async def test_a_task_that_never_emitted_has_no_output_and_its_stream_ends(cogo_env):
    handle = await cogo_env.client.submit("rt.steps.0", {})
    await handle.result(timeout=30)
    assert await stored(cogo_env, handle.task_id) == []  # no marker either: no subject
    assert [c async for c in handle.stream()] == []


@pytest.fixture
async def http(cogo_env):
    nc, data_dir = cogo_env.client.nc, cogo_env.data_dir
    async with facade(nc, cogo_env.config, data_dir, projector=cogo_env.projector, timeout=30) as client:
        yield client


def sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            events.append({**fields, "data": json.loads(fields["data"])})
    return events


async def test_sse_replays_from_the_first_chunk_and_closes_after_the_end(cogo_env, http):
    handle = await cogo_env.client.submit("rt.speak.0", {"lines": 3, "fail_until": 2})
    response = await http.get(f"/api/tasks/{handle.task_id}/stream")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    chunks, end = events[:-1], events[-1]
    assert [e["event"] for e in chunks] == ["chunk"] * 6 and end["event"] == "end"
    assert [(e["data"]["attempt"], e["data"]["seq"]) for e in chunks] == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 2),
        (2, 3),
    ]
    assert end["data"]["status"] == "succeeded"
    ids = [int(e["id"]) for e in chunks]
    assert ids == sorted(ids)
    # a client that reconnects with Last-Event-ID gets what came after
    again = sse((await http.get(f"/api/tasks/{handle.task_id}/stream", headers={"Last-Event-ID": str(ids[3])})).text)
    assert [e["data"]["seq"] for e in again[:-1]] == [2, 3] and again[-1]["event"] == "end"


async def test_sse_of_an_unknown_task_is_404_and_of_a_silent_one_just_ends(cogo_env, http):
    missing = await http.get("/api/tasks/nobody-knows/stream")
    assert missing.status_code == 404 and missing.json()["code"] == "task.not_found"
    handle = await cogo_env.client.submit("rt.steps.0", {})
    await handle.result(timeout=30)
    (end,) = sse((await http.get(f"/api/tasks/{handle.task_id}/stream")).text)
    assert end["event"] == "end" and end["data"]["status"] == "succeeded"


async def test_cogo_submit_follow_prints_the_output_then_the_status(cogo_env):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cogo",
        "submit",
        "--nats-url",
        cogo_env.url,
        "--route",
        "rt.speak.0",
        "--payload",
        json.dumps({"lines": 2}),
        "--follow",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert json.loads(lines[0])["task_id"]
    assert [json.loads(line) for line in lines[1:3]] == [
        {"line": 0, "attempt": 1},
        {"line": 1, "attempt": 1},
    ]
    assert json.loads(lines[3])["status"] == "succeeded"
