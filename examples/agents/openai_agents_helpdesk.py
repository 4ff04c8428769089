"""An OpenAI Agents SDK triage agent, a billing agent it hands off to, and two tools, run as a
Cogo agent (``cogo.integrations.openai_agents``).

The agents are plain Agents SDK agents. ``cogo_agents.run`` runs them in the task: each
model request goes through ``ctx.llm`` (the route's allowed models and the task's budget
checked before it is sent, an ``llm_call`` event after) and is journaled, each tool call is
journaled, handoffs follow the journaled responses; a worker killed mid-run resumes after the
last finished request or tool: no request is paid for twice, no refund is made twice.

    pip install 'cogo[openai-agents]'
    cogo up --app openai_agents_helpdesk:app --app-dir examples/agents
    cogo submit --route helpdesk.triage.0 --follow \\
        --payload '{"question": "Refund order 7, it arrived broken", "stream": true}'

Tool runs are appended to ``$HELPDESK_TOOL_LOG`` (one JSON line each) when it is set.
"""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
from agents import Agent, function_tool

import cogo
from cogo.integrations import openai_agents as cogo_agents

app = cogo.App("helpdesk-sdk")

ORDERS = {7: {"item": "kettle", "paid_usd": 39.0}, 8: {"item": "toaster", "paid_usd": 25.0}}


def _log(tool: str, **args: Any) -> None:
    path = os.environ.get("HELPDESK_TOOL_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"tool": tool, **args}) + "\n")


# failure_error_function=None: a raise reaches Cogo, and the route's policy decides
@function_tool(failure_error_function=None)
def lookup_order(order_id: int) -> dict[str, Any]:
    """The order's item and the amount paid."""
    _log("lookup_order", order_id=order_id)
    order = ORDERS.get(order_id)
    if order is None:
        raise cogo.PermanentWorkerError(f"no order {order_id}")
    return {"order_id": order_id, **order}


@function_tool(failure_error_function=None)
def refund(order_id: int, amount_usd: float) -> dict[str, Any]:
    """Refund an order (a side effect: it must happen once)."""
    _log("refund", order_id=order_id, amount_usd=amount_usd)
    if os.environ.get("HELPDESK_REFUNDS_DOWN"):  # the payment service is down: try again later
        raise cogo.WorkerError("the payment service did not answer")
    return {"order_id": order_id, "refunded_usd": amount_usd, "status": "refunded"}


billing = Agent(
    name="billing",
    model="gpt-4o-mini",
    tools=[refund],
    instructions="You make refunds for orders the triage agent looked up.",
)
triage = Agent(
    name="triage",
    model="gpt-4o-mini",
    tools=[lookup_order],
    handoffs=[billing],
    instructions="You are a helpdesk. Look the order up, then hand refunds to billing.",
)


class Question(msgspec.Struct, forbid_unknown_fields=True):
    question: str
    stream: bool = False
    model: str | None = None  # None: the agents' own model
    max_turns: int = 50  # the SDK's own guard; the task's budget is Cogo's


POLICY = {
    "max_tokens": 8000,
    "max_attempts": 3,
    "timeout_ms": 120000,
    "backoff": {"initial_ms": 200, "multiplier": 2.0, "max_ms": 2000},
}


@app.agent("helpdesk.triage.0", concurrency=8, policy=POLICY)
async def answer(ctx: cogo.TaskContext, q: Question) -> dict[str, Any]:
    start = triage if q.model is None else triage.clone(model=q.model)
    result = await cogo_agents.run(ctx, start, q.question, stream=q.stream, max_turns=q.max_turns)
    return {"answer": result.final_output, "agent": result.last_agent.name}
