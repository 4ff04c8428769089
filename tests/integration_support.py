"""What the tests of the agent-framework integrations share (``test_integration_*.py``): the
helpdesk examples' tool log, and a tool that is another Cogo agent (a child task)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import cogo
from cogo.testing import ChatServer, CogoEnv, tool_call
from tests.helpers import wait_until

# the ``research`` tool's parameters, as ``agent_tool`` declares them to the model
RESEARCH_PARAMETERS = {
    "type": "object",
    "properties": {"topic": {"type": "string"}},
    "required": ["topic"],
}
CHILD_RUNS: list[str] = []


def runs(path: Path) -> list[str]:
    """The tools the helpdesk ran, in order (``$HELPDESK_TOOL_LOG``)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["tool"] for line in lines]


async def failure_of(handle: cogo.TaskHandle, timeout: float = 60) -> cogo.TaskFailed:
    """The ``TaskFailed`` that waiting for ``handle``'s result raises (the test fails if the
    task succeeds)."""
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=timeout)
    return failed.value


async def a_model_the_route_does_not_allow_sends_nothing(env: CogoEnv, chat_server: ChatServer, route: str) -> None:
    handle = await env.client.submit(route, {"question": "hi", "model": "gpt-9"})
    failed = await failure_of(handle, timeout=30)
    assert failed.code == "policy.model_not_allowed"
    assert chat_server.calls == 0


async def a_permanent_tool_error_is_not_retried(env: CogoEnv, chat_server: ChatServer, route: str) -> None:
    chat_server.reply(None, tool_calls=[tool_call("lookup_order", "c1", order_id=99)])
    handle = await env.client.submit(route, {"question": "Refund order 99"})
    failed = await failure_of(handle)
    assert failed.code == "worker.permanent" and failed.attempts == 1


async def research(ctx: cogo.TaskContext, p: dict[str, Any]) -> dict[str, Any]:
    """The child agent: waits for a signal ``go`` (the parent suspends meanwhile)."""
    await ctx.wait_signal("go")
    CHILD_RUNS.append(ctx.task_id)  # past the wait: once per child task
    return {"topic": p["topic"], "fact": "the moon pulls the sea"}


async def a_tool_that_is_a_cogo_agent_runs_as_a_child_task(
    callers: cogo.App, route: str, chat_server: ChatServer, tmp_path: Path
) -> None:
    """The model calls ``research`` twice in one response: two child tasks on their own
    route, which wait for a signal while the parent suspends; resumed, the parent replays its
    first request from the journal and gets the children's results from ``ctx.call``: two
    requests, each child's work done once."""
    chat_server.reply(
        None, tool_calls=[tool_call("research", "r1", topic="tides"), tool_call("research", "r2", topic="waves")]
    )
    chat_server.reply("Tides: the moon pulls the sea.")
    async with CogoEnv(callers, config="[runtime]\nsuspend_after_ms = 50\n", data_dir=tmp_path / "env") as env:
        handle = await env.client.submit(route, {"question": "Why tides?"})
        tid = handle.task_id
        children = [f"{tid}/research:r1", f"{tid}/research:r2"]

        async def suspended() -> bool:
            try:
                s = await env.client.status(tid)
            except cogo.errors.TaskNotFound:
                return False
            names = sorted(w["name"] for w in s.waiting_for or [])
            return s.status == "suspended" and names == children

        await wait_until(suspended, 30, "the parent never waited for its tool's child task")
        for child in children:
            await env.client.signal(child, "go", True)
        assert await handle.result(timeout=60) == {"answer": "Tides: the moon pulls the sea."}
        statuses = [await env.client.status(child) for child in children]
        events = await env.events(tid)
    assert [(s.parent_id, s.result["topic"]) for s in statuses] == [(tid, "tides"), (tid, "waves")]
    assert [CHILD_RUNS.count(child) for child in children] == [1, 1]
    assert chat_server.calls == 2  # the resumed run replayed the first request
    sent = chat_server.requests[1]["messages"]  # both children's results, as tool messages
    assert [m["role"] for m in sent].count("tool") == 2
    assert "the moon pulls the sea" in json.dumps(sent) and "waves" in json.dumps(sent)
    assert [e["data"]["step"] for e in events if e["type"] == "step_completed"] == [
        "agent:model:0",
        "agent:model:1",
    ]  # the tool is the child task, not a step
    started = sorted(e["data"]["child_id"] for e in events if e["type"] == "call_started")
    assert started == children
    assert any(e["type"] == "execute_suspended" for e in events)
