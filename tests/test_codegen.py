"""The ``llm`` generator against cogo.testing's chat server (real HTTP, the chat-completions
protocol): prompt and budget in the request, edits and usage out of the reply, budgets and
bad replies enforced through the dispatcher."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cogo.agents.codegen import parse_reply
from cogo.errors import LlmBadReply
from cogo.streams.artifacts import ArtifactStore
from cogo.testing import ChatServer
from tests.code_pipeline import BUILD_TEST, CODEGEN, pipeline
from tests.helpers import EventReader, run_task, submit

FIX_REPLY = """Here is the fix:

```json
{"edits": [{"op": "search_replace", "path": "calc/ops.py",
            "search": "return a - b", "replace": "return a + b"}]}
```
"""


@pytest.fixture
def llm(chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> ChatServer:
    """cogo.testing's chat-completions endpoint, as the codegen actor's (read when it starts)."""
    monkeypatch.setenv("COGO_LLM_BASE_URL", chat_server.url)
    monkeypatch.setenv("COGO_LLM_API_KEY", "sk-test")
    return chat_server


def llm_change(**extra: Any) -> dict[str, Any]:
    return {
        "generator": "llm",
        "instruction": "add() subtracts; make it add.",
        "files": ["calc/ops.py"],
        **extra,
    }


async def test_llm_fix_builds_green_and_reports_usage(nats_server, js, config, data_dir, repo, llm):
    llm.reply(FIX_REPLY, prompt_tokens=300, completion_tokens=50)
    async with pipeline(nats_server.url, config, data_dir):
        gen = await run_task(js, CODEGEN, {"repo": str(repo), "change": llm_change()})
        assert gen.type == "execute_done", gen
        build = await run_task(js, BUILD_TEST, {"repo": str(repo), "edits_task_id": gen.task_id})
    assert build.data["result"]["verdict"] == "pass"
    # the request: the assignment's model, the file's content, a max_tokens within budget
    (request,) = llm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["model"] == "gpt-4o-mini"
    assert 0 < request["max_tokens"] < 4000  # route default max_tokens minus the prompt
    prompt = request["messages"][-1]["content"]
    assert "add() subtracts" in prompt and "return a - b" in prompt
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    # usage: tokens from the reply, cost from [pricing] (gpt-4o-mini: 0.00015 / 0.0006 per 1k)
    assert gen.usage is not None and gen.usage.tokens == 350
    assert gen.usage.cost_usd == pytest.approx((300 * 0.00015 + 50 * 0.0006) / 1000)
    edits = json.loads(await ArtifactStore(js).get(f"{gen.task_id}/edits.json"))
    assert edits == [
        {
            "op": "search_replace",
            "path": "calc/ops.py",
            "search": "return a - b",
            "replace": "return a + b",
            "replace_all": False,
        }
    ]


async def test_reply_over_the_token_budget_fails_once(nats_server, js, config, data_dir, repo, llm):
    # a lying endpoint: it claims 5,000 tokens whatever max_tokens said
    llm.reply(FIX_REPLY, prompt_tokens=3000, completion_tokens=2000, honest=False)
    payload = {"repo": str(repo), "change": llm_change(), "__assignment": {"max_tokens": 1000}}
    async with pipeline(nats_server.url, config, data_dir):
        task_id = await submit(js, CODEGEN, payload)
        reader = EventReader(js)
        event = (await reader.wait_terminal([task_id], timeout=25))[task_id]
    assert event.type == "execute_failed"
    assert event.error_code == "budget.tokens_exceeded"
    # charged over the budget, though not the 5,000 claimed: the completion is charged at
    # most the max_tokens sent and the prompt at most a token per byte sent
    assert event.attempt == 1 and event.usage is not None and 1000 < event.usage.tokens < 5000
    types = [e.type for e in reader.of(task_id)]
    assert types == ["execute_enqueued", "llm_call", "execute_failed"]  # no retry
    (request,) = llm.requests  # exactly one call, and it asked for no more than the budget
    assert request["max_tokens"] <= 1000


async def test_prompt_larger_than_budget_is_not_sent(nats_server, js, config, data_dir, repo, llm):
    llm.reply(FIX_REPLY, prompt_tokens=300, completion_tokens=50)
    payload = {"repo": str(repo), "change": llm_change(), "__assignment": {"max_tokens": 50}}
    async with pipeline(nats_server.url, config, data_dir):
        event = await run_task(js, CODEGEN, payload)
    assert event.type == "execute_failed" and event.error_code == "budget.tokens_exceeded"
    assert llm.requests == []


async def test_bad_reply_is_retried_and_usage_adds_up(nats_server, js, config, data_dir, repo, llm):
    llm.reply("Sorry, I would rather talk about the weather.", prompt_tokens=100, completion_tokens=10)
    llm.reply(
        json.dumps(
            {
                "edits": [
                    {
                        "op": "patch",
                        "path": "calc/ops.py",
                        "diff": "@@ -5 +5 @@\n-    return a - b\n+    return a + b\n",
                    }
                ]
            }
        ),
        prompt_tokens=100,
        completion_tokens=40,
    )
    payload = {
        "repo": str(repo),
        "change": llm_change(),
        "__assignment": {"backoff": {"initial_ms": 100}},
    }
    async with pipeline(nats_server.url, config, data_dir):
        task_id = await submit(js, CODEGEN, payload)
        reader = EventReader(js)
        event = (await reader.wait_terminal([task_id], timeout=25))[task_id]
    assert event.type == "execute_done", event
    retry = next(e for e in reader.of(task_id) if e.type == "execute_retry")
    assert retry.error_code == "llm.bad_reply"
    assert event.attempt == 2 and event.usage is not None and event.usage.tokens == 250
    assert len(llm.requests) == 2


async def test_rejected_request_is_not_retried(nats_server, js, config, data_dir, repo, llm):
    llm.reply("invalid model", status=400)
    async with pipeline(nats_server.url, config, data_dir):
        event = await run_task(js, CODEGEN, {"repo": str(repo), "change": llm_change()})
    assert event.type == "execute_failed" and event.error_code == "llm.rejected"
    assert event.attempt == 1 and len(llm.requests) == 1


def test_parse_reply_accepts_bare_fenced_and_embedded_json() -> None:
    edit = {"op": "delete", "path": "a.py"}
    assert parse_reply(json.dumps({"edits": [edit]})) == [edit]
    assert parse_reply(f"```json\n{json.dumps({'edits': [edit]})}\n```") == [edit]
    assert parse_reply(f"Sure! {json.dumps({'edits': [edit]})} Done.") == [edit]
    assert parse_reply(json.dumps([edit])) == [edit]
    with pytest.raises(LlmBadReply):
        parse_reply("no json here")
