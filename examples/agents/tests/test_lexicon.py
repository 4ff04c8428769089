"""The lexicon app's agents, each through the real dispatcher: results, retries, budgets."""

import pytest

import cogo


async def test_count_words(cogo_env):
    handle = await cogo_env.client.submit("lexicon.count.0", {"text": "the cat and the hat"})
    assert await handle.result(timeout=20) == {"words": 5, "distinct": 4}
    status = await handle.status()
    assert status.usage["tokens"] == 5  # reported by the handler, summed by the dispatcher


async def test_a_payload_that_does_not_fit_is_refused_with_its_field(cogo_env):
    handle = await cogo_env.client.submit("lexicon.count.0", {"txt": "typo"})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=20)
    assert failed.value.code == "payload.invalid"
    assert "$.payload" in failed.value.message


async def test_summarise_calls_the_endpoint_within_the_budget(cogo_env, chat_server):
    chat_server.reply("Cats wear hats.", prompt_tokens=40, completion_tokens=6)
    handle = await cogo_env.client.submit(
        "lexicon.summarise.0",
        {"text": "The cat sat on the mat wearing a hat.", "max_words": 10},
        assignment={"max_tokens": 300},
    )
    result = await handle.result(timeout=20)
    assert result == {
        "summary": "Cats wear hats.",
        "model": "gpt-4o-mini",
        "prompt_tokens": 40,
        "completion_tokens": 6,
    }
    (request,) = chat_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["model"] == "gpt-4o-mini"  # the assignment's model (the route's default)
    assert request["max_tokens"] <= 300 - 10  # never more than the budget leaves
    assert request["headers"]["Authorization"] == "Bearer test-key"
    assert (await handle.status()).usage["tokens"] == 46


async def test_summarise_retries_a_rate_limit_inside_the_attempt(cogo_env, chat_server):
    chat_server.reply(status=429).reply(status=503).reply("Short.")
    handle = await cogo_env.client.submit("lexicon.summarise.0", {"text": "Long text."})
    assert (await handle.result(timeout=30))["summary"] == "Short."
    assert chat_server.calls == 3
    status = await handle.status()
    # ctx.llm sent the same request again (nothing was billed): one attempt, three calls
    assert [e["type"] for e in status.events].count("execute_retry") == 0


async def test_summarise_gives_up_on_a_refusal(cogo_env, chat_server):
    chat_server.reply(status=400)
    handle = await cogo_env.client.submit("lexicon.summarise.0", {"text": "x"})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=20)
    assert failed.value.code == "llm.rejected" and chat_server.calls == 1


async def test_summarise_sends_nothing_without_budget_for_a_reply(cogo_env, chat_server):
    handle = await cogo_env.client.submit(
        "lexicon.summarise.0", {"text": "word " * 200}, assignment={"max_tokens": 100}
    )
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=20)
    assert failed.value.code == "budget.tokens_exceeded" and chat_server.calls == 0


async def test_keywords_is_a_class_based_agent(cogo_env):
    text = "Budgets hold, retries never re-pay, budgets are data: budgets."
    handle = await cogo_env.client.submit("lexicon.keywords.0", {"text": text, "top": 2})
    assert await handle.result(timeout=20) == ["budgets", "retries"]
