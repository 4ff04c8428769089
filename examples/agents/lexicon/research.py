"""A durable research agent: a planner that calls readers in parallel, waits for a person's
approval, sleeps, then calls a writer; all of it Python, all of it surviving crashes.

    cogo up --app lexicon.research:app --app-dir examples/agents
    cogo submit --route research.plan.0 --payload '{"question": "What is JetStream?"}'
    cogo signal <task_id> approve --data '{"by": "ana"}'

Every child (``ctx.call``) has a stable id (``<task>/read:<topic>``, ``<task>/write``) and
its result is journaled for the planner; while the planner waits (for its readers, the
approval, the timer, the writer) it holds no worker. Each reader and the writer record what
they produced in a ledger (``RESEARCH_LEDGER``, a file) inside a step, so a test can count
that every child ran exactly once, whatever was killed in the middle.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import msgspec

import cogo

app = cogo.App("research")
POLICY = {
    "max_attempts": 3,
    "timeout_ms": 30000,
    "ttl_ms": 600000,
    "backoff": {"initial_ms": 100, "multiplier": 2.0, "max_ms": 1000},
}


class Question(msgspec.Struct):
    question: str
    topics: int = 3
    pause_s: float = 1.0  # the planner's durable timer between approval and writing


class Topic(msgspec.Struct):
    topic: str


class Notes(msgspec.Struct):
    question: str
    notes: list[dict[str, Any]]
    approved_by: str | None = None


def record(kind: str, task_id: str, text: str) -> dict[str, Any]:
    """The side effect every child has: one line in the ledger (a plain function: a thread)."""
    path = os.environ.get("RESEARCH_LEDGER")
    if path:
        with open(path, "a") as ledger:
            ledger.write(json.dumps({"kind": kind, "task": task_id}) + "\n")
    return {"kind": kind, "text": text}


# the planner's ttl_ms bounds the whole task, waiting included: a day for the approval
@app.agent("research.plan.0", policy={**POLICY, "max_tokens": 6000, "ttl_ms": 86_400_000})
async def plan(ctx: cogo.TaskContext, q: Question) -> dict[str, Any]:
    """Pick topics, read them in parallel, wait for approval and a timer, then write."""

    async def pick() -> list[str]:
        reply = await ctx.llm.chat(
            [
                {
                    "role": "user",
                    "content": f"Give {q.topics} topics, one per line, for: {q.question}",
                }
            ]
        )
        lines = [t.strip("-* ") for t in (reply.content or "").splitlines() if t.strip()]
        return (lines + [f"topic {i}" for i in range(q.topics)])[: q.topics]

    topics = await ctx.step("topics", pick)  # journaled: a replay never asks the model again
    notes = await asyncio.gather(
        *(
            ctx.call("research.read.0", {"topic": t}, key=f"read:{i}", assignment={"max_tokens": 1000})
            for i, t in enumerate(topics)
        )
    )
    approval = await ctx.wait_signal("approve", timeout_s=3600)
    await ctx.sleep(q.pause_s)
    by = approval.get("by") if isinstance(approval, dict) else None
    report = await ctx.call(
        "research.write.0",
        {"question": q.question, "notes": notes, "approved_by": by},
        key="write",
        assignment={"max_tokens": 1000},
    )
    return {"topics": topics, "report": report, "approved_by": by}


@app.agent("research.read.0", policy={**POLICY, "max_tokens": 1000})
async def read(ctx: cogo.TaskContext, t: Topic) -> dict[str, Any]:
    """Summarise one topic (an LLM call), then record it (once)."""

    async def summarise() -> str:
        reply = await ctx.llm.chat([{"role": "user", "content": f"Summarise: {t.topic}"}])
        return reply.content or ""

    text = await ctx.step("summary", summarise)
    await ctx.step("record", record, "read", ctx.task_id, text)
    return {"topic": t.topic, "summary": text}


@app.agent("research.write.0", policy={**POLICY, "max_tokens": 1000})
async def write(ctx: cogo.TaskContext, n: Notes) -> dict[str, Any]:
    """Write the report from the notes (an LLM call), then record it (once)."""

    async def draft() -> str:
        joined = "\n".join(f"- {x.get('topic')}: {x.get('summary')}" for x in n.notes)
        reply = await ctx.llm.chat([{"role": "user", "content": f"Write a report on {n.question} from:\n{joined}"}])
        return reply.content or ""

    text = await ctx.step("draft", draft)
    await ctx.step("record", record, "write", ctx.task_id, text)
    return {"report": text, "sections": len(n.notes)}
