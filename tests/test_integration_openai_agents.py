"""An OpenAI Agents SDK triage agent handing off to a billing agent, on Cogo
(examples/agents/openai_agents_helpdesk.py), against cogo.testing's OpenAI-compatible endpoint
(real HTTP, counting requests) and a real nats-server: requests metered and journaled, a
SIGKILL after the second tool call that re-sends no finished request and re-runs no finished
tool, the budget, a disallowed model, a raising tool, streaming with a handoff."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("agents")

import openai_agents_helpdesk as helpdesk  # noqa: E402
from agents import Agent  # noqa: E402

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

ROUTE = "helpdesk.triage.0"
MCP_SERVER = Path(__file__).with_name("mcp_stamps.py")
ANSWER = "Refunded $39 for order 7."

# every test: the tool log, and an endpoint for agents started outside cogo_env
pytestmark = pytest.mark.usefixtures("tool_log")


@pytest.fixture
def cogo_apps():
    return [helpdesk.app]


def script_refund(chat_server) -> None:
    """triage looks the order up and hands off to billing, which refunds it."""
    chat_server.reply(None, tool_calls=[tool_call("lookup_order", "c1", order_id=7)])
    chat_server.reply(None, tool_calls=[tool_call("transfer_to_billing", "h1")])
    chat_server.reply(None, tool_calls=[tool_call("refund", "c2", order_id=7, amount_usd=39.0)])


STEPS = ["agent:model:0", "agent:tool:1:c1", "agent:model:1", "agent:model:2", "agent:tool:3:c2", "agent:model:3"]


async def test_requests_go_through_ctx_llm_and_tools_are_steps(cogo_env, chat_server, tool_log):
    script_refund(chat_server)
    chat_server.reply(ANSWER)
    handle = await cogo_env.client.submit(ROUTE, {"question": "Refund order 7"})
    assert await handle.result(timeout=60) == {"answer": ANSWER, "agent": "billing"}
    assert runs(tool_log) == ["lookup_order", "refund"]
    first, _, third, fourth = chat_server.requests
    assert first["model"] == "gpt-4o-mini"
    assert "helpdesk" in first["messages"][0]["content"]
    assert {t["function"]["name"] for t in first["tools"]} == {"lookup_order", "transfer_to_billing"}
    assert {t["function"]["name"] for t in third["tools"]} == {"refund"}  # billing's turn
    # the SDK gives the model str() of a tool's result
    assert "'status': 'refunded'" in fourth["messages"][-1]["content"]
    events = await cogo_env.events(handle.task_id)
    calls = [e for e in events if e["type"] == "llm_call"]
    assert [c["data"]["step"] for c in calls] == [s for s in STEPS if ":model:" in s]
    assert [e["data"]["step"] for e in events if e["type"] == "step_completed"] == STEPS
    (done,) = [e for e in events if e["type"] == "execute_done"]
    # at least what the endpoint reported (4 x 15): a tool call's arguments can weigh more
    # than its reported completion tokens, and then the characters received are charged
    assert done["usage"]["tokens"] == sum(c["usage"]["tokens"] for c in calls) >= 60


async def test_sigkill_after_the_second_tool_resends_and_reruns_nothing(tmp_path, chat_server, tool_log):
    """The worker is SIGKILLed while the fourth request (after the lookup, the handoff and the
    refund) is in flight: the redelivered task replays three requests and two tool calls from
    the journal, hands off again, and sends only the request that was cut off."""
    script_refund(chat_server)
    chat_server.reply("never seen", delay_s=60)  # the request the SIGKILL cuts off
    chat_server.reply(ANSWER)
    env_vars = {"COGO_LLM_BASE_URL": chat_server.url, "COGO_LLM_API_KEY": "k", "HELPDESK_TOOL_LOG": str(tool_log)}
    async with CogoEnv("openai_agents_helpdesk:app", processes=True, data_dir=tmp_path / "env", env=env_vars) as env:
        handle = await env.client.submit(ROUTE, {"question": "Refund order 7"})
        deadline = time.monotonic() + 60
        while chat_server.calls < 4:
            assert time.monotonic() < deadline, f"only {chat_server.calls} requests"
            await asyncio.sleep(0.05)
        assert runs(tool_log) == ["lookup_order", "refund"]
        env.kill("helpdesk-sdk.answer-0")
        env.spawn("openai_agents_helpdesk:app", "answer", "helpdesk-sdk.answer-1")
        answer = await handle.result(timeout=90)
        events = await env.events(handle.task_id)
    assert answer == {"answer": ANSWER, "agent": "billing"}
    assert chat_server.calls == 5  # 4 before the kill (one cut off) + that one again
    assert runs(tool_log) == ["lookup_order", "refund"]  # no tool ran twice
    steps = [e["data"]["step"] for e in events if e["type"] == "step_completed"]
    assert sorted(steps) == sorted(STEPS)
    (done,) = [e for e in events if e["type"] == "execute_done"]
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
    # the SDK runs a call id once per run: the scripted model repeats id "c"
    assert runs(tool_log) == ["lookup_order"]


async def test_a_model_the_route_does_not_allow_is_refused_before_any_request(cogo_env, chat_server):
    await a_model_the_route_does_not_allow_sends_nothing(cogo_env, chat_server, ROUTE)


async def test_a_raising_tool_follows_the_routes_retry_policy(cogo_env, chat_server, tool_log, monkeypatch):
    monkeypatch.setenv("HELPDESK_REFUNDS_DOWN", "1")
    script_refund(chat_server)
    handle = await cogo_env.client.submit(ROUTE, {"question": "Refund order 7"})
    failed = await failure_of(handle)
    assert failed.code == "attempts.exhausted" and failed.attempts == 3
    assert "payment service" in str(failed)
    assert runs(tool_log) == ["lookup_order"] + ["refund"] * 3
    assert chat_server.calls == 3


async def test_a_permanent_tool_error_is_not_retried(cogo_env, chat_server):
    await a_permanent_tool_error_is_not_retried(cogo_env, chat_server, ROUTE)


async def test_streaming_puts_tools_handoffs_and_text_on_the_output(cogo_env, chat_server):
    script_refund(chat_server)
    chat_server.reply(ANSWER)
    handle = await cogo_env.client.submit(ROUTE, {"question": "Refund 7", "stream": True})
    chunks = [c.data async for c in handle.stream()]
    marks = [c.get("tool") or f"->{c['handoff']}" for c in chunks if isinstance(c, dict)]
    assert marks == ["lookup_order", "->billing", "refund"]
    assert "".join(c for c in chunks if isinstance(c, str)) == ANSWER
    assert (await handle.result(timeout=30))["answer"] == ANSWER


async def test_runner_run_streamed_on_the_cogo_provider(tmp_path, chat_server, tool_log):
    """The SDK's own streaming run (Runner.run_streamed) over CogoModelProvider: each
    model request is still one journaled step, surfaced as a completed response."""
    from agents import RunConfig, Runner

    from cogo.integrations import openai_agents as cogo_agents

    app = cogo.App("streamed")

    @app.agent("streamed.run.0")
    async def streamed(ctx: cogo.TaskContext, payload: dict) -> dict:
        provider = cogo_agents.CogoModelProvider(ctx)
        agent = cogo_agents.journaled_agent(helpdesk.triage, provider)
        run = Runner.run_streamed(
            agent, payload["question"], run_config=RunConfig(model_provider=provider, tracing_disabled=True)
        )
        kinds = [event.type async for event in run.stream_events()]
        return {
            "answer": run.final_output,
            "agent": run.last_agent.name,
            "tool_events": kinds.count("run_item_stream_event"),
        }

    script_refund(chat_server)
    chat_server.reply(ANSWER)
    async with CogoEnv(app, data_dir=tmp_path / "env") as env:
        handle = await env.client.submit("streamed.run.0", {"question": "Refund order 7"})
        result = await handle.result(timeout=60)
        events = await env.events(handle.task_id)
    assert result["answer"] == ANSWER and result["agent"] == "billing"
    assert result["tool_events"] > 0
    assert runs(tool_log) == ["lookup_order", "refund"] and chat_server.calls == 4
    assert [e["data"]["step"] for e in events if e["type"] == "step_completed"] == STEPS


async def test_mcp_tools_are_steps_and_a_retry_reruns_none(tmp_path, chat_server):
    """An MCP server's tool (tests/mcp_stamps.py, over stdio), then a function tool that
    fails the first attempt: the retry reruns neither the MCP tool nor a finished request."""
    from agents import Agent, function_tool
    from agents.mcp import MCPServerStdio

    from cogo.integrations import openai_agents as cogo_agents

    log = tmp_path / "mcp-tools.jsonl"
    warm = tmp_path / "warm"

    @function_tool(failure_error_function=None)
    def flaky() -> str:
        """Fails on the first try."""
        with open(log, "a") as f:
            f.write(json.dumps({"tool": "flaky"}) + "\n")
        if not warm.exists():
            warm.touch()
            raise cogo.WorkerError("not warm yet")
        return "warm"

    app = cogo.App("mcp-sdk")

    @app.agent("mcpsdk.ask.0", policy={"max_attempts": 3, "backoff": {"initial_ms": 100}})
    async def ask(ctx: cogo.TaskContext, payload: dict) -> str:
        stamps = MCPServerStdio({"command": sys.executable, "args": [str(MCP_SERVER), str(log)]}, name="stamps")
        async with stamps:
            agent = Agent(name="stamper", model="gpt-4o-mini", tools=[flaky], mcp_servers=[stamps])
            return str((await cogo_agents.run(ctx, agent, payload["question"])).final_output)

    chat_server.reply(None, tool_calls=[tool_call("stamp", "m1", text="hello")])
    chat_server.reply(None, tool_calls=[tool_call("flaky", "f1")])
    chat_server.reply("stamped and warm")
    async with CogoEnv(app, data_dir=tmp_path / "env") as env:
        handle = await env.client.submit("mcpsdk.ask.0", {"question": "stamp hello"})
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


# an Agents SDK agent whose tool is another Cogo agent (``agent_tool``: a child task)
callers = cogo.App("oaicall")


# the shared child agent, on this app's own route
callers.agent("oaicall.research.0", policy={"max_tokens": 500, "max_attempts": 2})(research)


@callers.agent("oaicall.ask.0", policy={"max_tokens": 8000, "max_attempts": 2})
async def ask(ctx: cogo.TaskContext, p: dict) -> dict:
    tool = helpdesk.cogo_agents.agent_tool(
        ctx,
        "oaicall.research.0",
        name="research",
        description="Facts about a topic.",
        parameters=RESEARCH_PARAMETERS,
    )
    researcher = Agent(name="researcher", model="gpt-4o-mini", tools=[tool], instructions="Research, then answer.")
    result = await helpdesk.cogo_agents.run(ctx, researcher, p["question"])
    return {"answer": result.final_output}


async def test_a_tool_that_is_another_cogo_agent_runs_as_a_child_task(tmp_path, chat_server):
    """The model calls ``research`` twice in one response: two child tasks on their own
    route, which wait for a signal while the parent suspends; resumed, the parent replays its
    first request from the journal and gets the children's results from ``ctx.call``: two
    requests, each child's work done once."""
    await a_tool_that_is_a_cogo_agent_runs_as_a_child_task(callers, "oaicall.ask.0", chat_server, tmp_path)
