"""A Pydantic AI agent with two tools, run as a Cogo agent (``cogo.integrations.pydantic_ai``).

The agent is plain Pydantic AI: a model, instructions, two tools. ``cogo_ai.run`` runs it in
the task: each model request goes through ``ctx.llm`` (the route's allowed models and the
task's budget checked before it is sent, an ``llm_call`` event after) and is journaled, each
tool call is journaled, so a worker killed mid-run resumes after the last finished request
or tool: no request is paid for twice, no refund is made twice.

    pip install 'cogo[pydantic-ai]'
    cogo up --app pydantic_ai_helpdesk:app --app-dir examples/agents
    cogo submit --route helpdesk.answer.0 --follow \\
        --payload '{"question": "Refund order 7, it arrived broken", "stream": true}'

Tool runs are appended to ``$HELPDESK_TOOL_LOG`` (one JSON line each) when it is set.
"""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
from pydantic_ai import Agent

import cogo
from cogo.integrations import pydantic_ai as cogo_ai

app = cogo.App("helpdesk")

ORDERS = {7: {"item": "kettle", "paid_usd": 39.0}, 8: {"item": "toaster", "paid_usd": 25.0}}

# the model is only named here: Cogo's LLM endpoint serves it (defer_model_check: no
# OpenAI key is looked for at import)
agent = Agent(
    "openai:gpt-4o-mini",
    defer_model_check=True,
    instructions="You are a helpdesk. Look orders up before you refund them; answer briefly.",
)


def _log(tool: str, **args: Any) -> None:
    path = os.environ.get("HELPDESK_TOOL_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"tool": tool, **args}) + "\n")


@agent.tool_plain
def lookup_order(order_id: int) -> dict[str, Any]:
    """The order's item and the amount paid."""
    _log("lookup_order", order_id=order_id)
    order = ORDERS.get(order_id)
    if order is None:
        raise cogo.PermanentWorkerError(f"no order {order_id}")
    return {"order_id": order_id, **order}


@agent.tool_plain
def refund(order_id: int, amount_usd: float) -> dict[str, Any]:
    """Refund an order (a side effect: it must happen once)."""
    _log("refund", order_id=order_id, amount_usd=amount_usd)
    if os.environ.get("HELPDESK_REFUNDS_DOWN"):  # the payment service is down: try again later
        raise cogo.WorkerError("the payment service did not answer")
    return {"order_id": order_id, "refunded_usd": amount_usd, "status": "refunded"}


class Question(msgspec.Struct, forbid_unknown_fields=True):
    question: str
    stream: bool = False
    model: str | None = None  # None: the agent's own model


POLICY = {
    "max_tokens": 8000,
    "max_attempts": 3,
    "timeout_ms": 120000,
    "backoff": {"initial_ms": 200, "multiplier": 2.0, "max_ms": 2000},
}


@app.agent("helpdesk.answer.0", concurrency=8, policy=POLICY)
async def answer(ctx: cogo.TaskContext, q: Question) -> dict[str, Any]:
    result = await cogo_ai.run(ctx, agent, q.question, model=q.model, stream=q.stream)
    return {"answer": result.output, "requests": result.usage.requests}
