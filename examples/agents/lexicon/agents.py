"""The ``lexicon`` app: a word counter, a summariser on ``ctx.llm`` (an OpenAI-compatible
endpoint), and a class-based keyword extractor.

Run it with ``cogo up --app lexicon.agents:app`` (from ``examples/agents``) or on its own
against a running system with ``cogo run lexicon.agents:app``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

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


SUMMARISE_POLICY = {
    "model": "gpt-4o-mini",
    "max_tokens": 2000,
    "max_attempts": 4,
    "timeout_ms": 60000,
    "backoff": {"initial_ms": 200, "multiplier": 2.0, "max_ms": 5000},
}


@app.agent("lexicon.summarise.0", concurrency=8, policy=SUMMARISE_POLICY)
async def summarise(ctx: cogo.TaskContext, doc: Document) -> Summary:
    """Summarise a text with ``ctx.llm`` (the endpoint of ``COGO_LLM_BASE_URL``).

    ``ctx.llm`` caps the reply at what the task's budget leaves after the prompt, refuses a
    model the route does not allow, retries a 429/5xx inside the attempt and reports the
    usage; this handler only asks."""
    prompt = [
        {"role": "system", "content": "You summarise texts faithfully and briefly."},
        {"role": "user", "content": f"Summarise in at most {doc.max_words} words:\n\n{doc.text}"},
    ]
    reply = await ctx.llm.chat(prompt, max_tokens=4 * doc.max_words)
    if not reply.content:
        raise cogo.WorkerError("the LLM reply has no text")
    return Summary(
        summary=reply.content.strip(),
        model=reply.model or ctx.assignment.model,
        prompt_tokens=reply.usage.prompt_tokens,
        completion_tokens=reply.usage.completion_tokens,
    )


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
