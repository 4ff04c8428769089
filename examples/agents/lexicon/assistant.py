"""The ``assistant`` app: a tool-calling agent on Cogo's runtime, written to be copied.

The loop is the whole agent: the LLM decides (``ctx.llm.chat`` with the tools' schemas),
each tool it asks for runs, and the loop ends when the model answers without asking for a
tool, when the task's budget cannot pay for another turn, or after ``max_turns``.

Every model turn and every tool call is a durable step (``ctx.step``): a worker that dies
mid-loop, or an attempt that fails, resumes after the last finished step. No LLM call is
paid for twice and no tool runs twice (``save_note`` writes a file: a side effect nobody
wants repeated). The budget is the runtime's: ``ctx.llm`` never asks for more tokens than
the task has left and refuses a call it could not pay for (``budget.*``), which this loop
turns into an answer that says it stopped on the budget.

    cogo up --app lexicon.assistant:app --app-dir examples/agents
    cogo submit --route assistant.ask.0 --follow \\
        --payload '{"question": "What is 17 * 23, and what is a budget?", "stream": true}'

Tool runs are appended to ``$ASSISTANT_TOOL_LOG`` (one JSON line each) when it is set, and
notes go to ``$ASSISTANT_NOTES_DIR`` (default ``./notes``).
"""

from __future__ import annotations

import ast
import asyncio
import json
import operator
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

import cogo

app = cogo.App("assistant")

SYSTEM = (
    "You answer questions. Use the tools when they help: `calculate` for arithmetic, "
    "`define` for the glossary, `save_note` to keep a short note for the user. Answer in "
    "plain text once you know the answer."
)


class Question(msgspec.Struct, forbid_unknown_fields=True):
    question: str
    max_turns: int = 8
    stream: bool = False  # stream the model's text to the task's output as it arrives
    model: str | None = None  # None: the assignment's model


class Answer(msgspec.Struct):
    answer: str | None
    stopped: str  # "answer", "budget" or "turns"
    turns: int
    tools: list[str]
    note: str | None = None


# -- tools: plain functions with a JSON schema each (run in a thread: they may block) -------

_OPS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}
GLOSSARY = {
    "budget": "the tokens and dollars a task may spend, across all its attempts",
    "step": "a unit of an agent's work whose result is journaled and never redone",
    "attempt": "one run of a task by a worker; a failed attempt may be retried",
}


def calculate(expression: str) -> dict[str, Any]:
    """Evaluate arithmetic (+ - * / // % **, parentheses), nothing else."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            if isinstance(node.op, ast.Pow) and abs(ev(node.right)) > 100:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")

    return {"expression": expression, "value": ev(ast.parse(expression, mode="eval").body)}


def define(term: str) -> dict[str, Any]:
    """Look a term up in the glossary."""
    meaning = GLOSSARY.get(term.strip().lower())
    return {"term": term, "definition": meaning} if meaning else {"term": term, "unknown": True}


def save_note(title: str, text: str) -> dict[str, Any]:
    """Save a note for the user (a file: the kind of side effect a resumed agent must not
    repeat)."""
    folder = Path(os.environ.get("ASSISTANT_NOTES_DIR", "notes"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^A-Za-z0-9_-]+", "-", title).strip("-")[:60] or "note")
    path = path.with_suffix(".txt")
    with path.open("a") as fh:
        fh.write(text.rstrip() + "\n")
    return {"saved": path.name}


TOOLS: dict[str, tuple[Callable[..., dict[str, Any]], dict[str, Any]]] = {
    "calculate": (calculate, {"expression": {"type": "string"}}),
    "define": (define, {"term": {"type": "string"}}),
    "save_note": (save_note, {"title": {"type": "string"}, "text": {"type": "string"}}),
}
SCHEMAS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": (fn.__doc__ or "").split("\n")[0],
            "parameters": {"type": "object", "properties": props, "required": list(props)},
        },
    }
    for name, (fn, props) in TOOLS.items()
]


def run_tool(name: str, arguments: str) -> dict[str, Any]:
    """One tool call; a bad call is an answer for the model to read, not a crash."""
    log = os.environ.get("ASSISTANT_TOOL_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"tool": name, "arguments": arguments, "pid": os.getpid()}) + "\n")
    if name not in TOOLS:
        return {"error": f"no tool named {name!r}"}
    try:
        args = json.loads(arguments or "{}")
        return TOOLS[name][0](**args)
    except Exception as exc:  # wrong arguments, bad arithmetic: the model may retry
        return {"error": f"{type(exc).__name__}: {exc}"}


# -- the agent -----------------------------------------------------------------------------

POLICY = {
    "max_tokens": 8000,
    "max_attempts": 3,
    "timeout_ms": 120000,
    "backoff": {"initial_ms": 500, "multiplier": 2.0, "max_ms": 5000},
}


@app.agent("assistant.ask.0", concurrency=8, policy=POLICY)
async def ask(ctx: cogo.TaskContext, q: Question) -> Answer:
    """Answer a question, calling tools as the model decides, within the task's budget."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": q.question},
    ]
    used: list[str] = []
    for turn in range(q.max_turns):
        try:
            # a step: after a crash or a retry the journaled reply comes back, unpaid
            reply = cogo.LlmReply.from_dict(
                await ctx.step(
                    f"llm:{turn}",
                    ctx.llm.chat,
                    messages,
                    tools=SCHEMAS,
                    stream=q.stream,
                    model=q.model,
                )
            )
        except cogo.BudgetExhausted as exc:  # refused before sending: nothing was overspent
            return Answer(None, "budget", turn, used, note=str(exc))
        messages.append(reply.message())
        if not reply.tool_calls:
            return Answer(reply.content, "answer", turn + 1, used)
        for i, call in enumerate(reply.tool_calls):

            async def use(call: cogo.ToolCall = call) -> dict[str, Any]:
                await ctx.emit({"tool": call.name, "arguments": call.arguments})
                return await asyncio.to_thread(run_tool, call.name, call.arguments)

            result = await ctx.step(f"tool:{turn}.{i}:{call.name}", use)
            used.append(call.name)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    return Answer(None, "turns", q.max_turns, used)
