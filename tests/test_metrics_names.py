"""``/metrics`` in the exposition format with names promtool accepts (base units).

``tests.promlint`` parses with ``prometheus_client`` and applies promtool's naming rules;
promtool itself (``make promtool``: Debian's binary, unpacked into .tools/) runs as well, and
in CI its absence is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from cogo.bench.projections import fill, synthetic_events
from cogo.http.metrics import routes as metric_routes
from cogo.projections.projector import Projector
from tests.helpers import facade
from tests.promlint import lint


def test_the_linter_catches_what_promtool_rejects():
    bad = (
        "# HELP cogo_attempt_duration_ms d\n# TYPE cogo_attempt_duration_ms summary\n"
        'cogo_attempt_duration_ms{quantile="0.5"} 1\ncogo_attempt_duration_ms_count 1\n'
        "# HELP cogo_things t\n# TYPE cogo_things counter\ncogo_things_total 1\n"
        "# TYPE cogo_lag_minutes gauge\ncogo_lag_minutes 1\n"
    )
    problems = "\n".join(lint(bad))
    assert "abbreviated units" in problems
    assert '"_total" suffix' in problems
    assert 'base unit "seconds"' in problems and "no help text" in problems


@pytest.fixture
async def metrics_text(nc, js, config, data_dir) -> str:
    """``/metrics`` of a facade whose projector has folded 200 synthetic events."""
    await fill(js, synthetic_events(200))
    projector = Projector(nc, config, data_dir=data_dir)
    await projector.start()
    try:
        await projector.wait_caught_up()
        async with facade(nc, config, data_dir, extra_routes=metric_routes, projector=projector) as client:
            response = await client.get("/metrics")
    finally:
        await projector.stop()
    assert response.status_code == 200
    return response.text


async def test_metrics_are_in_base_units_and_lint_clean(metrics_text):
    text = metrics_text
    assert "# TYPE cogo_attempt_duration_seconds summary" in text
    assert "# TYPE cogo_attempt_queue_wait_seconds summary" in text
    assert "_ms" not in text
    assert lint(text) == []
    count = next(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("cogo_attempt_duration_seconds_count")
    )
    assert count > 0


async def test_promtool_accepts_the_metrics(metrics_text):
    promtool = shutil.which("promtool")  # `make test` unpacks it into .tools/ and PATH
    if not promtool:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("promtool is missing in CI: `make promtool` should have fetched it")
        pytest.skip("promtool is not on PATH (`make promtool` fetches it; CI requires it)")
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=metrics_text,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
