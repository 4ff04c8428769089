"""A Pydantic AI agent whose tools come from an MCP server (tests/mcp_stamps.py, a real
process spoken to over stdio) plus a flaky function tool: ``tests.mcp_app:app``; tool runs
are appended to ``$MCP_TOOL_LOG``, read when this module is imported."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from fastmcp.client import Client
from fastmcp.client.transports import PythonStdioTransport
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset

import cogo
from cogo.integrations import pydantic_ai as cogo_ai

app = cogo.App("mcp")
LOG = os.environ["MCP_TOOL_LOG"]


def _log(tool: str) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps({"tool": tool}) + "\n")


stamps = PythonStdioTransport(Path(__file__).with_name("mcp_stamps.py"), args=[LOG], python_cmd=sys.executable)
agent = Agent("openai:gpt-4o-mini", defer_model_check=True, toolsets=[MCPToolset(Client(stamps))])


@agent.tool_plain
def flaky() -> str:
    """Fails on the first try (the payment service is warming up)."""
    _log("flaky")
    marker = LOG + ".warm"
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise cogo.WorkerError("not warm yet")
    return "warm"


@app.agent("mcp.ask.0", policy={"max_attempts": 3, "backoff": {"initial_ms": 100}})
async def ask(ctx: cogo.TaskContext, payload: dict[str, Any]) -> str:
    return str((await cogo_ai.run(ctx, agent, payload["question"])).output)
