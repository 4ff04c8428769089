"""The HTTP API against its own OpenAPI document, by schemathesis with every check, on a
real ``cogo up`` (subprocess, real NATS and DuckDB). Nothing may be reported.

The same run by hand (README, "API contract"):

    schemathesis --config-file schemathesis.toml run <http_url>/openapi.json --checks all \\
        -H "Authorization: Bearer <api_token>"
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SUITE_CONFIG
from tests.upsystem import cogo_up, stop

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def schemathesis_command() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("schemathesis is not installed: it is in the [test] extra (make install)")
    return [found]


@pytest.mark.timeout(300)
async def test_schemathesis_all_checks_report_nothing(tmp_path):
    data_dir = tmp_path / "up"
    data_dir.mkdir()
    (data_dir / "cogo.toml").write_text(SUITE_CONFIG)
    up, info = await cogo_up(data_dir)
    try:
        run = await asyncio.to_thread(
            subprocess.run,
            [
                *schemathesis_command(),
                "--config-file",
                str(ROOT / "schemathesis.toml"),
                "--no-color",
                "run",
                f"{info['http_url']}/openapi.json",
                "--checks",
                "all",
                "-H",
                f"Authorization: Bearer {info['api_token']}",
                "--max-examples",
                "30",
                "--seed",
                "1",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
        )
    finally:
        await asyncio.to_thread(stop, up, timeout=60)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.txt").write_text(run.stdout + run.stderr)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "failure" not in summary and "error" not in summary, summary
    assert "Tested: " in run.stdout  # it really ran the operations
