"""Acceptance of "WorkflowEngine workflow engine": the indexing workflow on a real `cogo up`.

`POST /api/workflows/execute {"workflowId": "indexing", "parameters": {"path": <this repo>}}`
completes, `GET /api/orchestrator/state` shows every node and the gate verdict, and
`cogo sql` over `code_symbols` (through the running instance) finds a class of this repo.
"""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.upsystem import cogo_up, stop

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 45.0
QUERY = "SELECT path, line FROM code_symbols WHERE name = 'ExecutorDispatcher'"


def class_line(path: Path, name: str) -> int:
    """The line of ``class <name>`` in a Python file."""
    tree = ast.parse(path.read_text())
    return next(n.lineno for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def cogo_sql(data_dir: Path, query: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "cogo", "sql", query, "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_indexing_workflow_and_sql_over_code_symbols(tmp_path, config_path):
    data_dir = tmp_path / "up"
    proc, info = await cogo_up(data_dir, config_path)
    try:
        headers = {"Authorization": f"Bearer {info['api_token']}"}
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers, timeout=10) as http:
            started = await http.post(
                "/api/workflows/execute",
                json={"workflowId": "indexing", "parameters": {"path": str(ROOT)}},
            )
            assert started.status_code == 202, started.text
            run_id = started.json()["runId"]
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                response = await http.get("/api/orchestrator/state", params={"runId": run_id})
                state = response.json()
                if response.status_code == 200 and state["status"] not in ("pending", "running"):
                    break
                assert time.monotonic() < deadline, f"run did not end in time: {state}"
                await asyncio.sleep(0.2)

        assert state["status"] == "succeeded", state
        nodes = {n["id"]: n for n in state["nodes"]}
        assert list(nodes) == ["index", "indexed", "has_files", "notify"]
        assert nodes["index"]["status"] == nodes["indexed"]["status"] == "succeeded"
        assert nodes["indexed"]["result"]["data"]["result"]["files"] > 50
        assert nodes["notify"]["status"] == "skipped"  # no webhook_url
        assert nodes["has_files"]["verdict"] == "passed"
        assert state["gates"]["has_files"]["verdict"] == "passed"

        # the projector applies the indexer's events asynchronously: allow it to catch up
        deadline = time.monotonic() + 20
        while not (result := await asyncio.to_thread(cogo_sql, data_dir, QUERY))["rows"]:
            assert time.monotonic() < deadline, result
            await asyncio.sleep(0.3)
        expected = class_line(ROOT / "cogo/runtime/dispatcher.py", "ExecutorDispatcher")
        assert result["columns"] == ["path", "line"]
        assert [list(row) for row in result["rows"]] == [["cogo/runtime/dispatcher.py", expected]]
    finally:
        out = await asyncio.to_thread(stop, proc)
    assert proc.returncode == 0, out
