"""A Pydantic AI agent on Cogo (examples/agents/pydantic_ai_helpdesk.py) against cogo.testing's
OpenAI-compatible endpoint (real HTTP, counting requests) and a real nats-server: requests
metered and journaled, a SIGKILL after the second tool call that re-sends no finished request
and re-runs no finished tool, the budget, a disallowed model, a raising tool, streaming."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytest.importorskip("pydantic_ai")

import pydantic_ai_helpdesk as helpdesk  # noqa: E402
from pydantic_ai import Agent  # noqa: E402

import cogo  # noqa: E402
from cogo.testing import CogoEnv, Reply, tool_call  # noqa: E402
from tests.integration_support import (  # noqa: E402
    RESEARCH_PARAMETERS,
    a_model_the_route_does_not_allow_sends_nothing,
    a_permanent_tool_error_is_not_retried,
    a_tool_that_is_a_cogo_agent_runs_as_a_child_task,
    failure_of,
    research,
    runs,
)

ROUTE = "helpdesk.answer.0"

# every test: the tool log, and an endpoint for agents started outside cogo_env
pytestmark = pytest.mark.usefixtures("tool_log")


@pytest.fixture
def cogo_apps():
    return [helpdesk.app]


def script_refund(chat_server) -> None:
    chat_server.reply(None, tool_calls=[tool_call("lookup_order", "c1", order_id=7)])
    chat_server.reply(None, tool_calls=[tool_call("refund", "c2", order_id=7, amount_usd=39.0)])


async def test_requests_go_through_ctx_llm_and_tools_are_steps(cogo_env, chat_server, tool_log):
    script_refund(chat_server)
    chat_server.reply("Refunded $39 for order 7.")
    handle = await cogo_env.client.submit(ROUTE, {"question": "Refund order 7"})
    assert await handle.result(timeout=60) == {"answer": "Refunded $39 for order 7.", "requests": 3}
    assert runs(tool_log) == ["lookup_order", "refund"]
    # the agent's own OpenAI mapping reached the endpoint: its instructions, tools, results
    first, _, third = chat_server.requests
    assert first["model"] == "gpt-4o-mini"
    assert "helpdesk" in first["messages"][0]["content"]
    assert {t["function"]["name"] for t in first["tools"]} == {"lookup_order", "refund"}
    assert json.loads(third["messages"][-1]["content"])["status"] == "refunded"
    events = await cogo_env.events(handle.task_id)
    calls = [e for e in events if e["type"] == "llm_call"]
    assert [c["data"]["step"] for c in calls] == ["agent:model:0", "agent:model:1", "agent:model:2"]
    assert [e["data"]["step"] for e in events if e["type"] == "step_completed"] == [
        "agent:model:0",
        "agent:tool:1:c1",
        "agent:model:1",
        "agent:tool:2:c2",
        "agent:model:2",
    ]
    (done,) = [e for e in events if e["type"] == "execute_done"]
    # at least what the endpoint reported (3 x 15): a tool call's arguments can weigh more
    # than its reported completion tokens, and then the characters received are charged
    assert done["usage"]["tokens"] == sum(c["usage"]["tokens"] for c in calls) >= 45


async def test_sigkill_after_the_second_tool_resends_and_reruns_nothing(tmp_path, chat_server, tool_log):
    """The worker is SIGKILLed while the third request (after both tools ran) is in flight:
    the redelivered task replays two requests and two tool calls from the journal and sends
    only the request that was cut off."""
    script_refund(chat_server)
    chat_server.reply("never seen", delay_s=60)  # the request the SIGKILL cuts off
    chat_server.reply("Refunded $39 for order 7.")
    env_vars = {"COGO_LLM_BASE_URL": chat_server.url, "COGO_LLM_API_KEY": "k", "HELPDESK_TOOL_LOG": str(tool_log)}
    async with CogoEnv("pydantic_ai_helpdesk:app", processes=True, data_dir=tmp_path / "env", env=env_vars) as env:
        handle = await env.client.submit(ROUTE, {"question": "Refund order 7"})
        deadline = time.monotonic() + 60
        while chat_server.calls < 3:
            assert time.monotonic() < deadline, f"only {chat_server.calls} requests"
            await asyncio.sleep(0.05)
        assert runs(tool_log) == ["lookup_order", "refund"]
        env.kill("helpdesk.answer-0")
        env.spawn("pydantic_ai_helpdesk:app", "answer", "helpdesk.answer-1")
        answer = await handle.result(timeout=90)
        events = await env.events(handle.task_id)
    assert answer == {"answer": "Refunded $39 for order 7.", "requests": 3}
    assert chat_server.calls == 4  # 3 before the kill (one cut off) + that one again
    assert runs(tool_log) == ["lookup_order", "refund"]  # no tool ran twice
    steps = [e["data"]["step"] for e in events if e["type"] == "step_completed"]
    assert sorted(steps) == sorted(
        ["agent:model:0", "agent:tool:1:c1", "agent:model:1", "agent:tool:2:c2", "agent:model:2"]
    )
    (done,) = [e for e in events if e["type"] == "execute_done"]
    # the replayed requests were charged once: by the delivery that died, reported by the next
    assert done["usage"]["tokens"] == sum(e["usage"]["tokens"] for e in events if e["type"] == "llm_call")


async def test_the_budget_stops_a_runaway_loop(cogo_env, chat_server, tool_log):
    chat_server.default = Reply(
        None, tool_calls=[tool_call("lookup_order", "c", order_id=8)], prompt_tokens=150, completion_tokens=40
    )
    handle = await cogo_env.client.submit(ROUTE, {"question": "loop"}, assignment={"max_tokens": 2000})
    failed = await failure_of(handle)
    assert failed.code == "budget.tokens_exceeded"
    assert (await handle.status()).usage["tokens"] <= 2000
    assert 2 <= chat_server.calls < 20
    assert len(runs(tool_log)) == chat_server.calls


async def test_a_model_the_route_does_not_allow_is_refused_before_any_request(cogo_env, chat_server):
    await a_model_the_route_does_not_allow_sends_nothing(cogo_env, chat_server, ROUTE)


async def test_a_raising_tool_follows_the_routes_retry_policy(cogo_env, chat_server, tool_log, monkeypatch):
    # refund raises cogo.WorkerError on every attempt: retried, then failed, and no finished
    # request or lookup ran again on the retries
    monkeypatch.setenv("HELPDESK_REFUNDS_DOWN", "1")
    script_refund(chat_server)
    handle = await cogo_env.client.submit(ROUTE, {"question": "Refund order 7"})
    failed = await failure_of(handle)
    assert failed.code == "attempts.exhausted" and failed.attempts == 3
    assert "payment service" in str(failed)
    assert runs(tool_log) == ["lookup_order"] + ["refund"] * 3
    assert chat_server.calls == 2


async def test_a_permanent_tool_error_is_not_retried(cogo_env, chat_server):
    await a_permanent_tool_error_is_not_retried(cogo_env, chat_server, ROUTE)


async def test_streaming_puts_tool_calls_and_text_on_the_output(cogo_env, chat_server):
    script_refund(chat_server)
    chat_server.reply("Refunded $39 for order 7.")
    handle = await cogo_env.client.submit(ROUTE, {"question": "Refund 7", "stream": True})
    chunks = [c.data async for c in handle.stream()]
    tools = [c["tool"] for c in chunks if isinstance(c, dict)]
    assert tools == ["lookup_order", "refund"]
    assert "".join(c for c in chunks if isinstance(c, str)) == "Refunded $39 for order 7."
    assert (await handle.result(timeout=30))["answer"] == "Refunded $39 for order 7."


def test_a_version_outside_the_supported_range_is_refused_naming_the_range():
    from cogo.integrations import require

    assert require("pydantic-ai-slim", "2.78", "3", "x") == helpdesk.cogo_ai.VERSION
    with pytest.raises(ImportError, match=r"supports pydantic-ai-slim>=3,<4; 2\.\d+"):
        require("pydantic-ai-slim", "3", "4", "cogo.integrations.pydantic_ai")
    with pytest.raises(ImportError, match=r"needs no-such-dist>=1,<2, which is not installed"):
        require("no-such-dist", "1", "2", "cogo.integrations.pydantic_ai")


async def test_mcp_tool_calls_are_steps_and_a_retry_reruns_none(tmp_path, chat_server, monkeypatch):
    """An MCP server's tool, then a function tool that fails the first attempt: the retry
    replays both requests and the MCP call from the journal and reruns only the failed tool."""
    pytest.importorskip("fastmcp")
    log = tmp_path / "mcp-tools.jsonl"
    monkeypatch.setenv("MCP_TOOL_LOG", str(log))
    from tests import mcp_app  # reads MCP_TOOL_LOG

    chat_server.reply(None, tool_calls=[tool_call("stamp", "m1", text="hello")])
    chat_server.reply(None, tool_calls=[tool_call("flaky", "f1")])
    chat_server.reply("stamped and warm")
    async with CogoEnv(mcp_app.app, data_dir=tmp_path / "env") as env:
        handle = await env.client.submit("mcp.ask.0", {"question": "stamp hello"})
        assert await handle.result(timeout=60) == "stamped and warm"
        events = await env.events(handle.task_id)
    assert runs(log) == ["stamp", "flaky", "flaky"]  # the MCP tool ran once
    assert chat_server.calls == 3
    assert "[stamped] hello" in json.dumps(chat_server.requests[1]["messages"])
    steps = [(e["attempt"], e["data"]["step"]) for e in events if e["type"] == "step_completed"]
    assert steps == [
        (1, "agent:model:0"),
        (1, "agent:tool:1:m1"),
        (1, "agent:model:1"),
        (2, "agent:tool:2:f1"),
        (2, "agent:model:2"),
    ]


# a Pydantic AI agent whose tool is another Cogo agent (``agent_tool``: a child task)
callers = cogo.App("pyaicall")
researcher = Agent(
    "openai:gpt-4o-mini",
    defer_model_check=True,
    instructions="Research, then answer.",
    tools=[
        helpdesk.cogo_ai.agent_tool(
            "pyaicall.research.0",
            name="research",
            description="Facts about a topic.",
            parameters=RESEARCH_PARAMETERS,
        )
    ],
)


# the shared child agent, on this app's own route
callers.agent("pyaicall.research.0", policy={"max_tokens": 500, "max_attempts": 2})(research)


@callers.agent("pyaicall.ask.0", policy={"max_tokens": 8000, "max_attempts": 2})
async def ask(ctx: cogo.TaskContext, p: dict) -> dict:
    result = await helpdesk.cogo_ai.run(ctx, researcher, p["question"])
    return {"answer": result.output}


async def test_a_tool_that_is_another_cogo_agent_runs_as_a_child_task(tmp_path, chat_server):
    """The model calls ``research`` twice in one response: two child tasks on their own
    route, which wait for a signal while the parent suspends; resumed, the parent replays its
    first request from the journal and gets the children's results from ``ctx.call``: two
    requests, each child's work done once."""
    await a_tool_that_is_a_cogo_agent_runs_as_a_child_task(callers, "pyaicall.ask.0", chat_server, tmp_path)
