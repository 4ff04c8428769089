"""The LLM budget is bounded by what was received, not by what a lying endpoint reports:
a floor from the characters that came back, the ``max_tokens`` sent as a cap, a reply past
that cap not read further, and every such call's ``llm_call`` saying it was not believed."""

from __future__ import annotations

import pytest

import cogo
from tests import runtime_apps


@pytest.fixture
def cogo_apps():
    return [runtime_apps.app]


@pytest.fixture(autouse=True)
def endpoint(chat_server, monkeypatch):
    monkeypatch.setenv("COGO_LLM_BASE_URL", chat_server.url)
    return chat_server


def llm_calls(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "llm_call"]


async def test_characters_received_are_charged_whatever_is_reported(cogo_env, chat_server):
    # 10,000 characters reported as 1 + 1 tokens: charged at least 10,000 / 8
    chat_server.reply("y" * 10_000, prompt_tokens=1, completion_tokens=1, honest=False)
    handle = await cogo_env.client.submit("rt.talk.0", {"prompt": "hi"})
    reply = await handle.result(timeout=30)
    assert len(reply["content"]) == 10_000
    assert reply["usage"]["completion_tokens"] == 1250
    (call,) = llm_calls(await cogo_env.events(handle.task_id))
    assert call["usage"]["tokens"] == 1251
    assert "reported 2 tokens" in call["data"]["usage_disputed"]
    assert "10000 characters received" in call["data"]["usage_disputed"]
    assert (await handle.status()).usage["tokens"] == 1251


async def test_a_reply_past_max_tokens_is_not_read_and_charged_the_cap(cogo_env, chat_server):
    # 100k characters, 1 + 1 tokens reported, on a 2,000-token budget: as the audit's
    # endpoint did 40 times for 4,000,000 characters and 80 tokens
    lie = {"prompt_tokens": 1, "completion_tokens": 1, "honest": False}
    for _ in range(3):  # every attempt meets the same endpoint
        chat_server.reply("z" * 400_000, **lie)  # past what is read at all
    handle = await cogo_env.client.submit("rt.talk.0", {"prompt": "hi"})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=30)
    calls = llm_calls(await cogo_env.events(handle.task_id))
    assert calls and all(c["error_code"] == "llm.bad_reply" for c in calls)
    first = calls[0]
    cap = first["data"]["max_tokens"]
    assert first["data"]["completion_tokens"] == cap
    assert "not read further" in first["data"]["usage_disputed"]
    # the budget ran out on the cap charged, not on what was reported
    assert failed.value.code in ("budget.tokens_exceeded", "llm.bad_reply")
    assert (await handle.status()).usage["tokens"] >= cap


async def test_a_reply_read_whole_but_past_max_tokens_is_refused(cogo_env, chat_server):
    chat_server.reply("q" * 10_000, prompt_tokens=1, completion_tokens=1, honest=False)
    handle = await cogo_env.client.submit(
        "rt.talk.0", {"prompt": "hi", "max_tokens": 500}, assignment={"max_attempts": 1}
    )
    with pytest.raises(cogo.TaskFailed):
        await handle.result(timeout=30)
    (call,) = llm_calls(await cogo_env.events(handle.task_id))
    assert call["error_code"] == "llm.bad_reply" and call["data"]["max_tokens"] == 500
    assert call["data"]["completion_tokens"] == 500
    assert "ran past 4000 characters" in call["data"]["usage_disputed"]


async def test_usage_over_the_max_tokens_sent_is_charged_the_cap(cogo_env, chat_server):
    # 50,010 tokens reported on a 2,000-token budget: 25x over, in one call, before
    chat_server.reply("short", prompt_tokens=10, completion_tokens=50_000, honest=False)
    handle = await cogo_env.client.submit("rt.talk.0", {"prompt": "hi"})
    try:
        await handle.result(timeout=30)
    except cogo.TaskFailed as failed:  # over by the prompt estimate's error at most
        assert failed.code == "budget.tokens_exceeded"
    (call,) = llm_calls(await cogo_env.events(handle.task_id))
    cap = call["data"]["max_tokens"]
    assert cap <= 2000 and call["data"]["completion_tokens"] == cap
    assert call["usage"]["tokens"] == 10 + cap
    assert (await handle.status()).usage["tokens"] == 10 + cap  # not 50,010
    assert "completion_tokens 50000 over the max_tokens" in call["data"]["usage_disputed"]


async def test_a_streamed_reply_is_cut_at_the_cap(cogo_env, chat_server):
    chat_server.reply(" ".join(["w"] * 40_000), prompt_tokens=1, completion_tokens=1, honest=False)
    handle = await cogo_env.client.submit("rt.talk.0", {"prompt": "hi", "stream": True}, assignment={"max_attempts": 1})
    with pytest.raises(cogo.TaskFailed):
        await handle.result(timeout=30)
    (call,) = llm_calls(await cogo_env.events(handle.task_id))
    assert call["error_code"] == "llm.bad_reply"
    cap = call["data"]["max_tokens"]
    assert call["data"]["completion_tokens"] == cap
    assert "not read further" in call["data"]["usage_disputed"]
    emitted = 0
    async for chunk in handle.stream():
        emitted += len(chunk) if isinstance(chunk, str) else 0
    assert emitted <= cap * 8  # what was emitted stopped at the cap


async def test_an_honest_reply_is_not_disputed(cogo_env, chat_server):
    chat_server.reply("a fair answer of some words", prompt_tokens=9, completion_tokens=6)
    handle = await cogo_env.client.submit("rt.talk.0", {"prompt": "hi"})
    await handle.result(timeout=30)
    (call,) = llm_calls(await cogo_env.events(handle.task_id))
    assert "usage_disputed" not in call["data"] and call["usage"]["tokens"] == 15
