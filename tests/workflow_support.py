"""Helpers shared by the workflow tests: start runs, wait for them, the definitions several
tests plan, and a real webhook receiver on 127.0.0.1 (the ``webhook`` fixture of conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from nats.js.client import JetStreamContext

from cogo.config import Config
from cogo.devllm import send_body, serve_local, stop_local
from cogo.runtime.workflow_engine import StartRun, send_command
from cogo.streams.envelope import new_id
from cogo.workflows import history
from cogo.workflows.definition import Catalog
from cogo.workflows.planner import Plan, plan_workflow
from cogo.workflows.run import RunState

APPROVAL: dict[str, Any] = {
    "id": "approval",
    "parameters": {"sleep_ms": {"type": "integer", "default": 0}, "timeout_ms": {"type": "integer", "default": 60000}},
    "nodes": [
        {
            "id": "work",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"sleep_ms": "${params.sleep_ms}", "result": {"built": True}},
        },
        {"id": "approve", "type": "signal", "name": "approve", "timeout_ms": "${params.timeout_ms}"},
        {"id": "approved", "type": "gate", "condition": "nodes.approve.result.approved == true"},
        {
            "id": "merge",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"result": {"merged_by": "${nodes.approve.result.by}"}},
        },
    ],
}

CHILD: dict[str, Any] = {
    "id": "child",
    "parameters": {"name": {"type": "string", "required": True}, "hold": {"type": "boolean", "default": False}},
    "nodes": [
        {"id": "hold", "type": "signal", "when": "params.hold", "timeout_ms": 60000},
        {"id": "greet", "type": "publish", "route": "echo.run.0", "payload": {"result": {"hello": "${params.name}"}}},
    ],
}

PARENT: dict[str, Any] = {
    "id": "parent",
    "parameters": {
        "names": {"type": "array", "default": ["a", "b", "c"]},
        "hold": {"type": "boolean", "default": False},
    },
    "nodes": [
        {
            "id": "one",
            "type": "workflow",
            "workflowId": "child",
            "parameters": {"name": "solo", "hold": "${params.hold}"},
        },
        {
            "id": "many",
            "type": "map",
            "items": "${params.names}",
            "max_parallel": 2,
            "node": {"type": "workflow", "workflowId": "child", "parameters": {"name": "${item}"}},
        },
    ],
}


def plan_of(config: Config, definition: dict[str, Any], **params: Any) -> Plan:
    return plan_workflow(definition, params, config.route_policy)


def catalog_plan(config: Config, workflow_id: str, **params: Any) -> Plan:
    """The plan of a catalog workflow (the ``workflows_dir`` fixture adds child and parent)."""
    definitions = Catalog.for_data_dir(None).load()
    return plan_workflow(definitions[workflow_id], params, config.route_policy, definitions)


async def start_run(
    js: JetStreamContext,
    config: Config,
    definition: dict[str, Any],
    run_id: str | None = None,
    **params: Any,
) -> str:
    run_id = run_id or new_id()
    plan = plan_of(config, definition, **params)
    await send_command(js, StartRun(run_id=run_id, plan=plan.to_json()))
    return run_id


async def wait_run(js: JetStreamContext, run_id: str, timeout: float = 20.0, until: Any = None) -> RunState:
    """Poll the run's events until it ended (or ``until(state)`` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        state = await history.read_run(js, run_id)
        if (until(state) if until else state.finished) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.1)


@dataclass
class Webhook:
    """A local HTTP receiver; answers with ``statuses`` in order, then 200."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def serving_webhook() -> Iterator[Webhook]:
    """A ``Webhook`` listening on 127.0.0.1 while the block runs."""
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with hook.lock:
                status = hook.statuses.pop(0) if hook.statuses else 200
                hook.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "raw": raw, "status": status, "at": time.time()}
                )
            send_body(self, status, json.dumps({"ok": status < 300}).encode())

        def log_message(self, *args: Any) -> None:
            pass

    server, url = serve_local(Handler)
    hook.url = f"{url}/hook"
    try:
        yield hook
    finally:
        stop_local(server)
