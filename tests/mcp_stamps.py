"""An MCP server over stdio (the ``mcp`` SDK's ``MCPServer``) with one tool with a side
effect, for tests/mcp_app.py; every call is appended to the file named by argv[1]."""

from __future__ import annotations

import json
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("stamps")


@server.tool()
def stamp(text: str) -> str:
    """Stamp a text (a side effect: it must happen once)."""
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({"tool": "stamp"}) + "\n")
    return f"[stamped] {text}"


if __name__ == "__main__":
    server.run()
