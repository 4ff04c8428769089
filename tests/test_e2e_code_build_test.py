"""Acceptance of "Codegen -> build/test pipeline": the README's sample on a fresh `cogo up`.

`examples/fix.json` runs through `POST /api/workflows/execute` to a `pass` verdict with
`edits.json` and `report.json` served over HTTP; `examples/bad-fix.json` ends in `fail`
with a report naming the failing test; the workflow's metrics count both runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.upsystem import cogo_up, stop

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT_S = 60.0


def sample_params(name: str) -> dict[str, Any]:
    """An example's workflow parameters with ``repo`` made absolute."""
    params = json.loads((EXAMPLES / name).read_text())
    params["repo"] = str((ROOT / params["repo"]).resolve())
    return params


async def run_to_end(http: httpx.AsyncClient, params: dict[str, Any]) -> dict[str, Any]:
    """Start a codeBuildTest run over HTTP and poll its state until it has ended."""
    started = await http.post("/api/workflows/execute", json={"workflowId": "codeBuildTest", "parameters": params})
    assert started.status_code == 202, started.text
    run_id = started.json()["runId"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        response = await http.get("/api/orchestrator/state", params={"runId": run_id})
        if response.status_code == 200 and response.json()["status"] in ("succeeded", "failed", "cancelled"):
            return response.json()
        assert response.status_code in (200, 404), response.text  # 404: start still queued
        await asyncio.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end within {RUN_TIMEOUT_S}s: {response.text}")


def artifact_of(state: dict[str, Any], node: str) -> str:
    """The one artifact key a node of the run produced."""
    keys = [a["key"] for a in state["artifacts"] if a["node"] == node]
    assert len(keys) == 1, state["artifacts"]
    return keys[0]


async def test_sample_fix_passes_and_bad_fix_fails(tmp_path, config_path):
    proc, info = await cogo_up(tmp_path / "up", config_path)
    try:
        headers = {"Authorization": f"Bearer {info['api_token']}"}
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers, timeout=10) as http:
            good = await run_to_end(http, sample_params("fix.json"))

            assert good["status"] == "succeeded", good
            nodes = {n["id"]: n for n in good["nodes"]}
            assert nodes["codegen"]["status"] == nodes["build_test"]["status"] == "succeeded"
            assert nodes["notify"]["status"] == "skipped"  # no webhook_url
            # the gate node says passed/failed; the build/test report says pass/fail
            assert good["gates"]["verdict"]["verdict"] == "passed"
            edits_key = artifact_of(good, "codegen")
            report_key = artifact_of(good, "build_test")
            assert edits_key == f"{nodes['codegen']['taskId']}/edits.json"
            assert report_key.endswith("/build-test/report.json")

            edits = (await http.get(f"/api/artifacts/{edits_key}")).json()
            assert isinstance(edits, list) and len(edits) == 1
            assert edits[0]["op"] == "search_replace" and edits[0]["path"] == "calc/ops.py"
            assert edits[0]["replace"] == "    return a + b\n"
            response = await http.get(f"/api/artifacts/{report_key}")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/json")
            report = response.json()
            assert report["verdict"] == "pass" and report["failures"] == []
            assert report["counts"]["failed"] == 0 and report["counts"]["passed"] > 0

            bad = await run_to_end(http, sample_params("bad-fix.json"))
            assert bad["status"] == "failed", bad
            assert bad["gates"]["verdict"]["verdict"] == "failed"
            bad_nodes = {n["id"]: n for n in bad["nodes"]}
            assert bad_nodes["build_test"]["status"] == "succeeded"  # a fail verdict is data
            assert bad_nodes["verdict"]["status"] == "failed"
            bad_report = (await http.get(f"/api/artifacts/{artifact_of(bad, 'build_test')}")).json()
            assert bad_report["verdict"] == "fail"
            failing = [f["name"] for f in bad_report["failures"]]
            assert "tests.test_ops::test_add" in failing, failing
            assert bad_report["counts"]["failed"] >= 1

            metrics = (await http.get("/api/metrics/workflows/codeBuildTest")).json()
            assert metrics["runs"] == 2
            assert metrics["succeeded"] == 1 and metrics["failed"] == 1
            assert metrics["gates"] == {"evaluated": 2, "passed": 1, "failed": 1, "passRate": 0.5}
            assert {r["runId"] for r in metrics["recentRuns"]} == {good["runId"], bad["runId"]}
    finally:
        out = await asyncio.to_thread(stop, proc)
    assert proc.returncode == 0, out
