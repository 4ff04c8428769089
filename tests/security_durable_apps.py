"""Two apps for the durable agents' trust-boundary tests: ``victim`` (durable agents that
wait for signals and call children) and ``mallory`` (whose NATS user the attacker uses).
Loaded with ``--app tests.security_durable_apps:victim --app
tests.security_durable_apps:mallory``."""

from __future__ import annotations

from typing import Any

import cogo

victim = cogo.App("victim")
mallory = cogo.App("mallory")
POLICY = {
    "max_attempts": 2,
    "timeout_ms": 60000,
    "ttl_ms": 300000,
    "max_tokens": 10000,
    "backoff": {"initial_ms": 50, "multiplier": 1.0, "max_ms": 50},
}


@victim.agent("victim.wait.0", policy=POLICY)
async def wait(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """Wait for signal ``go`` and return what it said."""
    return {"got": await ctx.wait_signal("go")}


@victim.agent("victim.parent.0", policy=POLICY)
async def parent(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    """Call one child (``victim.wait.0``, key ``c``) and return its result."""
    return {"child": await ctx.call("victim.wait.0", {}, key="c")}


@mallory.agent("mallory.x.0", policy=POLICY)
async def x(ctx: cogo.TaskContext, p: dict[str, Any]) -> Any:
    return {"by": "mallory"}
