"""A newcomer's path, outside the clone (docs/design.md §18): build Cogo's wheel, install it
into a fresh venv in a temporary directory (dependencies from pip's cache or PyPI), then
`cogo init`, `cogo up`, a task for the starter agent and the generated tests, all from the
project's directory and without any --data-dir."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.upsystem import spawn, wait_endpoints

ROOT = Path(__file__).resolve().parent.parent
STEP_TIMEOUT_S = 600  # an install from an empty cache downloads ~100 MB


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    assert out.returncode == 0, f"{' '.join(args)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.timeout(1500)
def test_a_project_of_ones_own_from_the_built_wheel(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGO_", "PYTHON"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], tmp_path, env)
    (wheel,) = dist.glob("cogo-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    bin_dir = venv / "bin"
    run([str(bin_dir / "pip"), "install", "-q", f"cogo[testing] @ {wheel.as_uri()}"], tmp_path, env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)

    project = tmp_path / "shop"
    project.mkdir()
    init = run(["cogo", "init"], project, env)
    assert "wrote    shop/agents.py" in init.stdout

    log_path = project / "up.log"
    up = spawn(
        ["cogo", "up", "--sync", "default"],
        log=log_path,
        env=env,
        cwd=project,
        new_session=True,
        inherit_env=False,
    )
    try:
        endpoints = project / ".cogo" / "endpoints.json"  # cogo.toml's data_dir
        asyncio.run(wait_endpoints(endpoints, up, 120))
        listed = log_path.read_text()
        assert "app shop (shop.agents:app): count, reply" in listed, listed

        sub = project / "shop"  # any directory of the project finds the same system
        done = run(
            [
                "cogo",
                "submit",
                "--route",
                "shop.count.0",
                "--payload",
                '{"text": "to be or not to be"}',
                "--wait",
                "--timeout",
                "60",
            ],
            sub,
            env,
        )
        final = json.loads(done.stdout.strip().splitlines()[-1])
        assert final["status"] == "succeeded" and final["result"] == {"words": 6, "distinct": 4}
        assert final["events"], final  # the projector's whole document, not the bare event

        tests = run([str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project, env)
        assert "5 passed" in tests.stdout, tests.stdout
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(10)
