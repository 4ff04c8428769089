"""``ctx.llm`` against ``cogo.testing``'s OpenAI-compatible endpoint (real HTTP on 127.0.0.1),
through the real dispatcher: the assignment enforced before each call, one ``llm_call``
event after it, usage charged, tool calls and streaming, and every bad answer a clear code."""

from __future__ import annotations

import json

import pytest

import cogo
from tests import runtime_apps

PRICED = """
[pricing]
"pricey" = { input = 1.0, output = 2.0 }
[policy.routes."rt.talk.0"]
ceilings = { allowed_models = ["gpt-4o-mini", "pricey"] }
"""


@pytest.fixture
def cogo_apps():
    return [runtime_apps.app]


@pytest.fixture
def cogo_config():
    return PRICED


@pytest.fixture(autouse=True)
def endpoint(chat_server, monkeypatch):
    monkeypatch.setenv("COGO_LLM_BASE_URL", chat_server.url)
    monkeypatch.setenv("COGO_LLM_API_KEY", "sk-test")
    return chat_server


def llm_calls(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "llm_call"]


async def fails(handle: cogo.TaskHandle) -> cogo.TaskFailed:
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=30)
    return failed.value


async def test_a_call_within_the_budget_is_recorded_and_charged(cogo_env, chat_server):
    chat_server.reply("Hello there.", prompt_tokens=12, completion_tokens=3)
    prompt = "word " * 400  # ~2,000 characters: ~500 tokens by the estimate
    handle = await cogo_env.client.submit("rt.talk.0", {"prompt": prompt}, assignment={"max_tokens": 1500})
    reply = await handle.result(timeout=30)
    assert reply["content"] == "Hello there." and reply["finish_reason"] == "stop"
    assert reply["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
        "cost_usd": pytest.approx((12 * 0.00015 + 3 * 0.0006) / 1000),
        "estimated": False,
    }
    (request,) = chat_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["model"] == "gpt-4o-mini"  # the assignment's model
    # never more than the budget leaves after the prompt (1,500 - ~505 estimated)
    assert 900 < request["max_tokens"] <= 1500 - 500
    (call,) = llm_calls(await cogo_env.events(handle.task_id))
    data = call["data"]
    assert call["attempt"] == 1 and call["duration_ms"] > 0 and call.get("error_code") is None
    assert (data["model"], data["prompt_tokens"], data["completion_tokens"]) == (
        "gpt-4o-mini",
        12,
        3,
    )
    assert data["finish_reason"] == "stop" and data["usage_estimated"] is False
    assert data["max_tokens"] == request["max_tokens"] and data["step"] is None
    assert call["usage"]["tokens"] == 15
    assert (await handle.status()).usage["tokens"] == 15


async def test_a_model_outside_the_allowance_sends_nothing(cogo_env, chat_server):
    handle = await cogo_env.client.submit("rt.talk.0", {"model": "gpt-4.1"})
    failed = await fails(handle)
    assert failed.code == "policy.model_not_allowed" and "nothing was sent" in failed.message
    assert chat_server.calls == 0
    assert llm_calls(await cogo_env.events(handle.task_id)) == []


async def test_below_the_floor_no_call_is_made(cogo_env, chat_server):
    tokens = await cogo_env.client.submit("rt.talk.0", {"prompt": "x" * 4000}, assignment={"max_tokens": 1000})
    assert (await fails(tokens)).code == "budget.tokens_exceeded"
    # "pricey" costs $2 per 1,000 completion tokens: $0.01 pays for 5 of them
    cost = await cogo_env.client.submit(
        "rt.talk.0", {"model": "pricey", "prompt": "hi"}, assignment={"max_cost_usd": 0.01}
    )
    failed = await fails(cost)
    assert failed.code == "budget.cost_exceeded" and "the call was not made" in failed.message
    assert chat_server.calls == 0


async def test_the_cost_budget_caps_max_tokens(cogo_env, chat_server):
    chat_server.reply("ok", prompt_tokens=3, completion_tokens=1000)
    handle = await cogo_env.client.submit(
        "rt.talk.0", {"model": "pricey", "prompt": "hi"}, assignment={"max_cost_usd": 0.5}
    )
    reply = await handle.result(timeout=30)
    (request,) = chat_server.requests
    # $0.5 - the prompt (~5 tokens at $1/1k) leaves ~247 completion tokens at $2/1k
    assert 200 < request["max_tokens"] < 250
    assert reply["finish_reason"] == "length"
    assert reply["usage"]["cost_usd"] <= 0.5 and (await handle.status()).usage["cost_usd"] <= 0.5


async def test_a_reply_without_usage_is_estimated_and_says_so(cogo_env, chat_server):
    chat_server.reply("four words of reply", usage=False)
    handle = await cogo_env.client.submit("rt.talk.0", {"prompt": "a" * 400})
    reply = await handle.result(timeout=30)
    assert reply["usage"]["estimated"] is True
    assert reply["usage"]["prompt_tokens"] == 100 + 4  # 400 characters / 4, one message
    assert reply["usage"]["completion_tokens"] == 5  # ceil(19 / 4)
    (call,) = llm_calls(await cogo_env.events(handle.task_id))
    assert call["data"]["usage_estimated"] is True and call["usage"]["tokens"] == 109
    assert (await handle.status()).usage["tokens"] == 109


async def test_429_and_5xx_are_retried_inside_the_attempt(cogo_env, chat_server):
    chat_server.reply(status=429, retry_after=0.1).reply(status=503).reply("at last")
    handle = await cogo_env.client.submit("rt.talk.0", {})
    assert (await handle.result(timeout=30))["content"] == "at last"
    status = await handle.status()
    assert status.attempt == 1 and chat_server.calls == 3  # one attempt, three requests
    calls = llm_calls(await cogo_env.events(handle.task_id))
    assert [(c.get("error_code"), c["data"]["retry"]) for c in calls] == [
        ("llm.error", 0),
        ("llm.error", 1),
        (None, 2),
    ]


async def test_when_retries_run_out_the_attempt_fails_with_a_retryable_llm_error(cogo_env, chat_server):
    for _ in range(4):  # [llm] max_retries = 3: four requests in the first attempt
        chat_server.reply(status=500)
    chat_server.reply("second attempt")
    handle = await cogo_env.client.submit("rt.talk.0", {})
    assert (await handle.result(timeout=30))["content"] == "second attempt"
    events = await cogo_env.events(handle.task_id)
    (retry,) = [e for e in events if e["type"] == "execute_retry"]
    assert retry["error_code"] == "llm.error" and "answered 500" in retry["error"]
    assert chat_server.calls == 5


async def test_a_refusal_is_not_retried(cogo_env, chat_server):
    chat_server.reply(status=400)
    failed = await fails(await cogo_env.client.submit("rt.talk.0", {}))
    assert failed.code == "llm.rejected" and failed.attempts == 1 and chat_server.calls == 1


@pytest.mark.parametrize("raw", ["this is not json", '{"choices": []}', '{"choices": [{"message": 7}]}', "[1, 2]"])
async def test_a_malformed_reply_is_llm_bad_reply(cogo_env, chat_server, raw):
    for _ in range(3):
        chat_server.reply(raw=raw)
    failed = await fails(await cogo_env.client.submit("rt.talk.0", {}))
    assert failed.code == "attempts.exhausted" and "[llm.bad_reply]" in failed.message


async def test_tool_calls_come_back_parsed(cogo_env, chat_server):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": json.dumps({"term": "budget"})},
    }
    chat_server.reply(None, tool_calls=[call])
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    handle = await cogo_env.client.submit("rt.talk.0", {"tools": tools})
    reply = cogo.LlmReply.from_dict(await handle.result(timeout=30))
    assert reply.finish_reason == "tool_calls" and reply.content is None
    (parsed,) = reply.tool_calls
    assert (parsed.id, parsed.name, parsed.args()) == ("call_1", "lookup", {"term": "budget"})
    assert reply.message()["tool_calls"][0]["function"]["name"] == "lookup"
    assert chat_server.requests[0]["tools"] == tools


async def test_stream_true_emits_tokens_as_they_arrive(cogo_env, chat_server):
    chat_server.reply("one two three four", prompt_tokens=9, completion_tokens=4)
    handle = await cogo_env.client.submit("rt.talk.0", {"stream": True})
    chunks = [c async for c in handle.stream()]
    assert [c.data for c in chunks] == ["one", " two", " three", " four"]
    assert [c.seq for c in chunks] == [1, 2, 3, 4] and {c.attempt for c in chunks} == {1}
    reply = await handle.result(timeout=30)
    assert reply["content"] == "one two three four" and reply["usage"]["total_tokens"] == 13
    assert chat_server.requests[0]["stream"] is True
    assert chat_server.requests[0]["stream_options"] == {"include_usage": True}
    (call,) = llm_calls(await cogo_env.events(handle.task_id))
    assert call["data"]["stream"] is True and call["data"]["completion_tokens"] == 4
