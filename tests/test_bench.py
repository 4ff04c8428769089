"""``cogo bench --json`` runs a small isolated system end to end and reports every figure.

No timed assertions: the figures depend on the machine. Only their presence and shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RAW_PIPELINE = Path(__file__).resolve().parents[1] / "examples" / "raw_pipeline.py"

KEYS = {
    "tasks_per_s",
    "latency_ms",
    "projector_events_per_s",
    "http_submit_per_s",
    "peak_rss_mb",
    "sync_interval",
    "disk_fsync_per_s",
}


# everything as small as it goes, each optional figure off: a test turns on the part it is
# about by naming its option again (argparse keeps the last value)
SMALL = (
    "--sync default --tasks 200 --rate 100 --duration 0.5 --http-requests 0 "
    "--projector-runs 0 --step-runs 0 --no-scale-out --agent-tasks 0 --tracing-tasks 0 "
    "--durable-tasks 0 --flow-tasks 0 --client-tasks 0 --client-step-runs 0 --kill-repeats 0 "
    "--timeout 60"
).split()


def bench(*args: str, timeout: float = 180) -> dict[str, Any]:
    """``cogo bench --json ARGS``: the one JSON object it prints (a failed run fails)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cogo", "bench", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json must print one object, got: {proc.stdout[:2000]}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


def test_bench_json_reports_every_figure() -> None:
    result = bench(
        "--tasks",
        "500",
        "--rate",
        "200",
        "--rate",
        "400",
        "--duration",
        "1",
        "--http-requests",
        "200",
        "--projector-events",
        "2000",
        "--projector-runs",
        "2",
        "--workflow-runs",
        "20",
        "--orchestrators",
        "1",
        "--orchestrators",
        "2",
        "--workflow-repeats",
        "1",
        "--flow-tasks",
        "300",
        "--flow-repeats",
        "1",
        "--step-runs",
        "2",
        "--step-nodes",
        "3",
        "--scale-workers",
        "1",
        "--scale-workers",
        "2",
        "--scale-tasks",
        "60",
        "--scale-sleep-ms",
        "20",
        "--history",
        "1500",
        "--history",
        "3000",
        "--history-requests",
        "2",
        "--agent-tasks",
        "0",
        "--tracing-tasks",
        "0",
        "--durable-tasks",
        "0",
        "--timeout",
        "60",
        "--client-tasks",
        "200",
        "--client-in-flight",
        "50",
        "--client-step-runs",
        "3",
        "--client-steps",
        "5",
        "--kill-repeats",
        "1",
        timeout=240,
    )

    assert KEYS <= result.keys()
    assert result["sync_interval"] == "always"  # what nats.conf ships with
    assert result["tasks"] == 500
    for key in ("tasks_per_s", "projector_events_per_s", "http_submit_per_s", "disk_fsync_per_s"):
        assert isinstance(result[key], float | int) and result[key] > 0, key

    rates = [row["offered_per_s"] for row in result["latency_ms"]]
    assert rates == [200, 400]
    for row in result["latency_ms"]:
        assert row["completed"] == row["tasks"] == row["offered_per_s"]
        assert row["achieved_per_s"] > 0
        assert 0 < row["p50"] <= row["p90"] <= row["p99"] <= row["max"]

    runs = result["projector_runs"]
    assert len(runs) == 2 and all(rate > 0 for rate in runs)
    median = (runs[0] + runs[1]) / 2  # both rounded to 0.1 as reported
    assert abs(result["projector_events_per_s"] - median) <= 0.1

    flow = result["workflow_steps"]
    assert (flow["runs"], flow["nodes"]) == (2, 3)
    assert 0 < flow["step_ms_median"] * 3 == pytest.approx(flow["run_ms_median"], rel=0.01)
    assert 0 < flow["step_gap_ms"]["p50"] <= flow["step_gap_ms"]["p90"] <= flow["step_gap_ms"]["max"]

    scale = result["scale_out"]
    assert [row["workers"] for row in scale] == [1, 2]
    for row in scale:
        # sleep-bound: 8 at once per worker, 20 ms each; never above what sleeping allows
        assert row["ideal_per_s"] == row["workers"] * 8 * 1000 / 20
        assert row["tasks"] == row["workers"] * 60
        assert 0 < row["tasks_per_s"] <= row["ideal_per_s"] * 1.05
        assert row["efficiency"] == pytest.approx(row["tasks_per_s"] / row["ideal_per_s"], abs=1e-3)

    history = result["history"]
    assert set(history["sizes"]) == {"1500", "3000"}
    for size, figures in history["sizes"].items():
        assert figures["events"] == int(size) and figures["duckdb_mb"] > 0
        assert set(figures["endpoints_ms"]) == {
            "dashboard",
            "bus_latency",
            "bus_latency_series",
            "prometheus",
            "workflow_metrics",
        }
        for ms in figures["endpoints_ms"].values():
            assert 0 < ms["min"] <= ms["median"] <= ms["max"]
    assert history["ratio_to_smallest"]["1500"]["dashboard"] == 1.0

    rss = result["peak_rss_mb"]
    processes = (
        "nats-server",
        "dispatcher-1",
        "echo-1",
        "projector",
        "facade",
        "bench",
        "projector-ingest-1",
        "projector-ingest-2",
        "orchestrator",
        "scale-1-echo-1",
        "scale-2-echo-2",
    )
    for process in processes:
        assert rss.get(process, 0) > 0, process
    assert result["cpu_us_per_task"]["total"] > 0
    # a task stores its submission and its attempt on TASKS, its report on RESULTS
    stored = result["stored_per_task"]
    assert stored["TASKS"]["stored"] == 2.0 and stored["RESULTS"]["stored"] == 1.0
    assert stored["EVENTS"]["stored"] >= 2.0 and stored["EVENTS"]["removed"] == 0.0
    assert "agent" not in result  # --agent-tasks 0 skips that part

    workflows = result["workflows"]  # the opt-in phase: runs/s with 1 and 2 orchestrators
    assert workflows["runs"] == 20 and set(workflows["by_orchestrators"]) == {"1", "2"}
    for row in workflows["by_orchestrators"].values():
        assert len(row["rounds"]) == 1 and row["runs_per_s"] == row["rounds"][0] > 0
    assert rss.get("orchestrator-2x-0-1", 0) > 0

    client = result["client"]  # what a user feels: through cogo.Client, and a worker killed
    awaited = client["awaited"]
    assert (awaited["tasks"], awaited["in_flight"]) == (200, 50)
    assert awaited["client_awaited_per_s"] > 0 and awaited["event_observed_per_s"] > 0
    assert all(len(rounds) == 3 for rounds in awaited["rounds"].values())
    steps = client["steps"]
    assert (steps["runs"], steps["steps"]) == (3, 5)
    for figures in (steps["client_ms"], steps["event_ms"]):
        assert 0 < figures["p50"] <= figures["p99"]
    kill = client["kill"]
    assert kill["repeats"] == 1 and len(kill["kill_to_done_s"]) == 1
    assert kill["kill_to_done_s"][0] > 0 and kill["ack_wait_s"] == 2.0  # the shipped setting
    assert rss.get("steps", 0) > 0  # the steps agent ran as a `cogo run` of the bench app

    flow = result["flow"]  # the dispatcher with flow control off and on
    assert [r["mode"] for r in flow["rounds"]] == ["off", "on"]
    for mode in ("off", "on"):
        assert flow[mode]["tasks_per_s"] > 0 and flow[mode]["total_cpu_us_per_task"] > 0
        assert flow[mode]["dispatcher_cpu_us_per_task"] >= 0


def test_bench_reports_a_decorated_agent_against_echo() -> None:
    # everything else as small as it goes: the part under test is the @app.agent figure
    result = bench(*SMALL, "--agent-tasks", "1000")
    agent = result["agent"]
    assert agent["tasks"] == 1000
    assert (agent["echo"]["route"], agent["agent"]["route"]) == ("echo.run.0", "bench.agent.0")
    for name in ("echo", "agent"):
        row = agent[name]
        assert row["tasks_per_s"] > 0, name
        # the worker process did the work (CPU clock ticks are 10 ms: 1,000 tasks show several)
        assert row["worker_cpu_us_per_task"] > 0, name
        assert row["dispatcher_cpu_us_per_task"] > 0, name
    assert agent["tasks_per_s_ratio"] == pytest.approx(
        agent["agent"]["tasks_per_s"] / agent["echo"]["tasks_per_s"], abs=1e-3
    )
    assert agent["worker_cpu_ratio"] == pytest.approx(
        agent["agent"]["worker_cpu_us_per_task"] / agent["echo"]["worker_cpu_us_per_task"],
        abs=1e-3,
    )
    # the agent's process really was a `cogo run` of the bench app, and it was stopped
    assert result["peak_rss_mb"]["agent"] > 0


def test_bench_reports_tracing_off_and_on() -> None:
    pytest.importorskip("opentelemetry.sdk")
    traced = bench(*SMALL, "--tracing-tasks", "500")["tracing"]
    assert traced["tasks"] == 500
    for mode in ("off", "on"):
        row = traced[mode]
        assert row["tasks_per_s"] > 0 and row["worker_cpu_us_per_task"] > 0, mode
    # spans really went out over OTLP/HTTP when on (the sink counts what it got)
    assert traced["exports"] > 0 and traced["export_bytes_per_task"] > 0
    assert traced["off_path_ns_per_task"] > 0
    assert traced["overhead_cpu_us_per_task"] == pytest.approx(
        traced["on"]["worker_cpu_us_per_task"]
        + traced["on"]["dispatcher_cpu_us_per_task"]
        - traced["off"]["worker_cpu_us_per_task"]
        - traced["off"]["dispatcher_cpu_us_per_task"],
        abs=0.2,
    )


def test_raw_pipeline_yardstick_runs() -> None:
    # the hand-written nats-py pipeline the README compares `cogo bench` with
    proc = subprocess.run(
        [sys.executable, str(RAW_PIPELINE), "--tasks", "300", "--sync", "default"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "300 tasks in" in proc.stdout and "tasks/s" in proc.stdout


def test_step_benchmark_runs_and_reports_each_figure(capsys) -> None:
    """``python -m cogo.bench.journal`` on a few steps: every figure printed (no timing
    is asserted: the numbers are the benchmark's to report)."""
    from cogo.bench import journal as stepbench

    assert stepbench.main(["--steps", "20", "--sync", "default"]) == 0
    out = capsys.readouterr().out
    for line in ("bare await", "first run (journaled)", "journal scan", "each after"):
        assert line in out and "p50" in out and "p99" in out, out


def test_bench_reports_durable_agent_figures() -> None:
    # everything else as small as it goes: the part under test is the durable figures
    durable = bench(*SMALL, "--durable-tasks", "50")["durable"]
    assert durable["suspended_tasks"] == 50
    for key in ("suspend_to_resumed", "suspend_to_done"):
        assert durable[key]["n"] == 50 and 0 < durable[key]["p50_ms"] <= durable[key]["p99_ms"]
    assert durable["call_round_trip"]["n"] == durable["plain_submit_round_trip"]["n"] == 100
    # a suspended task is a record and a schedule in the store
    assert durable["store_bytes_per_suspended_task"] > 0
