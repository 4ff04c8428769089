"""An agent for the trace tests (``tests.traced_app:app``): a journaled step, then an LLM call."""

from __future__ import annotations

from typing import Any

import cogo

app = cogo.App("traced")


def prepare(question: str) -> str:
    return question.strip()


@app.agent("traced.ask.0", policy={"max_attempts": 2, "timeout_ms": 20000})
async def ask(ctx: cogo.TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    question = await ctx.step("prepare", prepare, payload["question"])
    reply = await ctx.llm.chat([{"role": "user", "content": question}])
    return {"answer": reply.content}


@app.agent("traced.child.0", policy={"max_attempts": 2, "timeout_ms": 20000})
async def child(ctx: cogo.TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"topic": await ctx.step("prepare", prepare, payload["topic"])}


@app.agent("traced.parent.0", policy={"max_attempts": 2, "timeout_ms": 20000, "max_tokens": 1000})
async def parent(ctx: cogo.TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Calls a child agent: the child's task is in this task's trace."""
    note = await ctx.call("traced.child.0", {"topic": payload["topic"]}, key="note")
    return {"note": note}
