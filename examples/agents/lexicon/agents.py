"""The ``lexicon`` app: a word counter, a summariser on an OpenAI-compatible endpoint, and a
class-based keyword extractor.

Run it with ``cogo up --app lexicon.agents:app`` (from ``examples/agents``) or on its own
against a running system with ``cogo run lexicon.agents:app``.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from typing import Any

import httpx
import msgspec

import cogo

app = cogo.App("lexicon")


class Text(msgspec.Struct, forbid_unknown_fields=True):
    text: str


@app.agent("lexicon.count.0", replicas=2, policy={"max_attempts": 3, "timeout_ms": 20000})
async def count(ctx: cogo.TaskContext, doc: Text) -> dict[str, int]:
    """Count the words of a text (no LLM: usage is the word count, as a stand-in)."""
    words = doc.text.split()
    ctx.report_usage(tokens=len(words))
    return {"words": len(words), "distinct": len({w.lower() for w in words})}


class Document(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    max_words: int = 60


class Summary(msgspec.Struct):
    summary: str
    model: str
    prompt_tokens: int
    completion_tokens: int


# retried 429/5xx answers back off like every Cogo retry (the route's policy)
SUMMARISE_POLICY = {
    "model": "gpt-4o-mini",
    "max_tokens": 2000,
    "max_attempts": 4,
    "timeout_ms": 60000,
    "backoff": {"initial_ms": 200, "multiplier": 2.0, "max_ms": 5000},
}


@app.agent("lexicon.summarise.0", concurrency=8, policy=SUMMARISE_POLICY)
async def summarise(ctx: cogo.TaskContext, doc: Document) -> Summary:
    """Summarise a text with an OpenAI-compatible chat endpoint (``COGO_LLM_BASE_URL``)."""
    base_url = os.environ.get("COGO_LLM_BASE_URL", "").rstrip("/")
    if not base_url:
        raise cogo.PermanentWorkerError("COGO_LLM_BASE_URL is not set")
    prompt = [
        {"role": "system", "content": "You summarise texts faithfully and briefly."},
        {"role": "user", "content": f"Summarise in at most {doc.max_words} words:\n\n{doc.text}"},
    ]
    # a rough count of the prompt (4 characters a token): the answer may use what is left
    prompt_estimate = sum(len(m["content"]) for m in prompt) // 4 + 8
    max_tokens = min(4 * doc.max_words, ctx.remaining_tokens - prompt_estimate)
    if max_tokens < 16:
        raise cogo.PermanentWorkerError(
            f"the task's token budget has {ctx.remaining_tokens} tokens left: too few"
        )
    headers = {"Authorization": f"Bearer {os.environ.get('COGO_LLM_API_KEY', '')}"}
    body = {"model": ctx.assignment.model, "messages": prompt, "max_tokens": max_tokens}
    timeout = max(1.0, ctx.deadline - time.time())
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.post(f"{base_url}/v1/chat/completions", json=body,
                                       headers=headers)  # fmt: skip
    except httpx.HTTPError as exc:  # connection refused, reset, timed out: try again
        raise cogo.WorkerError(f"LLM endpoint unreachable: {exc}") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise cogo.WorkerError(f"LLM endpoint answered {response.status_code}")
    if response.status_code != 200:
        raise cogo.PermanentWorkerError(f"LLM endpoint refused: {response.status_code}")
    reply: dict[str, Any] = response.json()
    usage = reply.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens", prompt_estimate))
    completion_tokens = int(usage.get("completion_tokens", 0))
    ctx.report_usage(tokens=prompt_tokens + completion_tokens)
    try:
        summary = reply["choices"][0]["message"]["content"].strip()
    except (KeyError, IndexError, TypeError, AttributeError):
        raise cogo.WorkerError("the LLM reply has no message content") from None
    return Summary(summary, reply.get("model") or ctx.assignment.model, prompt_tokens,
                   completion_tokens)  # fmt: skip


class Keywords(cogo.Worker):
    """The most frequent words of a text, longest first on ties (a class-based agent)."""

    kind = "keywords"
    route = "lexicon.keywords.0"

    async def run(self, order: Any, ctx: cogo.TaskContext) -> cogo.Outcome:
        text = ctx.payload.get("text")
        if not isinstance(text, str):
            raise cogo.PermanentWorkerError("payload needs `text`, a string")
        top = int(ctx.payload.get("top", 5))
        words = Counter(w for w in re.findall(r"[a-z']{4,}", text.lower()))
        best = sorted(words.items(), key=lambda kv: (-kv[1], -len(kv[0]), kv[0]))[:top]
        return cogo.Outcome(result=[w for w, _ in best], usage=cogo.Usage(tokens=len(words)))


app.add(Keywords)
