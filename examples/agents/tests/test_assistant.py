"""The tool-calling assistant against cogo.testing's OpenAI-compatible endpoint (real HTTP on
127.0.0.1, counting calls) and a real nats-server: answers, a SIGKILL mid-loop that redoes
no finished step, the budget, a disallowed model, streaming."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from lexicon import assistant

import cogo
from cogo.testing import CogoEnv, tool_call


@pytest.fixture
def cogo_apps():
    return [assistant.app]


@pytest.fixture(autouse=True)
def tool_log(tmp_path, monkeypatch):
    """Where every tool run is recorded (the agent's audit log), and its notes folder."""
    path = tmp_path / "tool-runs.jsonl"
    monkeypatch.setenv("ASSISTANT_TOOL_LOG", str(path))
    monkeypatch.setenv("ASSISTANT_NOTES_DIR", str(tmp_path / "notes"))
    return path


def runs(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_the_model_calls_a_tool_then_answers(cogo_env, chat_server, tool_log):
    chat_server.reply(None, tool_calls=[tool_call("calculate", "c1", expression="17 * 23")])
    chat_server.reply("17 * 23 = 391.")
    handle = await cogo_env.client.submit("assistant.ask.0", {"question": "17 * 23?"})
    answer = await handle.result(timeout=30)
    assert answer == {"answer": "17 * 23 = 391.", "stopped": "answer", "turns": 2, "tools": ["calculate"], "note": None}
    second = chat_server.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "calculate"
    assert second[-1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": json.dumps({"expression": "17 * 23", "value": 391}),
    }
    assert [r["tool"] for r in runs(tool_log)] == ["calculate"]
    events = await cogo_env.events(handle.task_id)
    # each llm_call names the step it ran in; the journal holds both turns and the tool
    assert [e["data"]["step"] for e in events if e["type"] == "llm_call"] == ["llm:0", "llm:1"]
    assert [e["data"]["step"] for e in events if e["type"] == "step_completed"] == [
        "llm:0",
        "tool:0.0:calculate",
        "llm:1",
    ]


async def test_sigkill_between_steps_redoes_no_finished_step(tmp_path, chat_server, tool_log):
    """Three turns of tools, then the agent process is SIGKILLed while its fourth LLM call is
    in flight. The redelivered task replays the six finished steps from the journal (no LLM
    call, no tool run) and only redoes the call that was cut off."""
    chat_server.reply(None, tool_calls=[tool_call("calculate", "c1", expression="6 * 7")])
    chat_server.reply(None, tool_calls=[tool_call("define", "c2", term="budget")])
    chat_server.reply(None, tool_calls=[tool_call("save_note", "c3", title="answer", text="42")])
    chat_server.reply("never seen", delay_s=60)  # the call the SIGKILL cuts off
    chat_server.reply("6 * 7 = 42; a budget is what a task may spend. Noted.")
    env_vars = {
        "COGO_LLM_BASE_URL": chat_server.url,
        "COGO_LLM_API_KEY": "k",
        "ASSISTANT_TOOL_LOG": str(tool_log),
        "ASSISTANT_NOTES_DIR": str(tmp_path / "notes"),
    }
    async with CogoEnv("lexicon.assistant:app", processes=True, data_dir=tmp_path / "env", env=env_vars) as env:
        handle = await env.client.submit("assistant.ask.0", {"question": "6 * 7? budget?"})
        deadline = time.monotonic() + 60
        while chat_server.calls < 4:  # the fourth call is in flight: three turns are done
            assert time.monotonic() < deadline, f"only {chat_server.calls} LLM calls"
            await asyncio.sleep(0.05)
        env.kill("assistant.ask-0")
        journaled = [e for e in await env.events(handle.task_id) if e["type"] == "step_completed"]
        env.spawn("lexicon.assistant:app", "ask", "assistant.ask-1")
        answer = await handle.result(timeout=60)
        events = await env.events(handle.task_id)
    assert answer["stopped"] == "answer" and answer["turns"] == 4
    assert answer["tools"] == ["calculate", "define", "save_note"]
    # before the kill: llm:0..2 and their three tools were journaled
    assert sorted(e["data"]["step"] for e in journaled) == [
        "llm:0",
        "llm:1",
        "llm:2",
        "tool:0.0:calculate",
        "tool:1.0:define",
        "tool:2.0:save_note",
    ]
    # after: each step journaled once; the killed call was made again, nothing else
    steps = [e["data"]["step"] for e in events if e["type"] == "step_completed"]
    assert sorted(steps) == sorted(set(steps)) and "llm:3" in steps and len(steps) == 7
    assert chat_server.calls == 5  # 4 before the kill (one cut off) + llm:3 again
    assert [r["tool"] for r in runs(tool_log)] == ["calculate", "define", "save_note"]
    assert (tmp_path / "notes" / "answer.txt").read_text() == "42\n"  # written once
    saved_calls = sum(1 for e in journaled if e["data"]["step"].startswith("llm:"))
    saved_tools = len(journaled) - saved_calls
    # what journaling saved in this run (the report quotes it)
    print(
        f"\nSIGKILL mid-loop: {saved_calls} LLM calls and {saved_tools} tool runs replayed "
        f"from the journal instead of redone; {chat_server.calls} LLM calls in all"
    )
    (done,) = [e for e in events if e["type"] == "execute_done"]
    # the replayed steps were charged once: by the delivery that died, reported by the next
    tokens = sum(e["usage"]["tokens"] for e in events if e["type"] == "llm_call")
    assert done["usage"]["tokens"] == tokens


async def test_the_budget_ends_the_loop_and_is_never_overspent(cogo_env, chat_server, tool_log):
    # a model that keeps asking for tools: only the budget can end this loop
    chat_server.default = cogo.testing.Reply(
        None,
        tool_calls=[tool_call("calculate", "c", expression="1 + 1")],
        prompt_tokens=150,
        completion_tokens=40,
    )
    handle = await cogo_env.client.submit(
        "assistant.ask.0",
        {"question": "loop", "max_turns": 50},
        assignment={"max_tokens": 2000},
    )
    answer = await handle.result(timeout=60)
    assert answer["stopped"] == "budget" and "budget.tokens_exceeded" not in answer["note"]
    assert "the call was not made" in answer["note"]
    spent = (await handle.status()).usage["tokens"]
    assert spent <= 2000, spent
    assert 2 <= chat_server.calls == answer["turns"] < 50
    remaining = 2000
    for request in chat_server.requests:  # each call asked for no more than was left
        assert request["max_tokens"] <= remaining
        remaining -= 190


async def test_a_model_the_route_does_not_allow_sends_nothing(cogo_env, chat_server):
    asked = await cogo_env.client.submit("assistant.ask.0", {"question": "hi", "model": "gpt-9"})
    with pytest.raises(cogo.TaskFailed) as failed:
        await asked.result(timeout=30)
    assert failed.value.code == "policy.model_not_allowed"
    assigned = await cogo_env.client.submit("assistant.ask.0", {"question": "hi"}, assignment={"model": "gpt-9"})
    with pytest.raises(cogo.TaskFailed) as failed:
        await assigned.result(timeout=30)
    assert failed.value.code == "policy.model_not_allowed"
    assert chat_server.calls == 0


async def test_streaming_shows_tools_and_tokens_as_they_come(cogo_env, chat_server):
    chat_server.reply(None, tool_calls=[tool_call("define", "d1", term="step")])
    chat_server.reply("A step is journaled work.")
    handle = await cogo_env.client.submit("assistant.ask.0", {"question": "What is a step?", "stream": True})
    chunks = [c.data async for c in handle.stream()]
    assert chunks[0] == {"tool": "define", "arguments": json.dumps({"term": "step"})}
    assert "".join(c for c in chunks[1:] if isinstance(c, str)) == "A step is journaled work."
    assert (await handle.result(timeout=30))["answer"] == "A step is journaled work."
