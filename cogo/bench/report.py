"""What ``cogo bench`` prints: the human table, and the optional latency plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogo.errors import CogoError


def render(result: dict[str, Any]) -> None:
    """The human summary."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"\n[bold]cogo bench[/bold]  sync_interval={result['sync_interval']}  "
        f"{result['processes']['dispatchers']} dispatcher(s), "
        f"{result['processes']['echoes']} echo worker(s), {result['cpus']} CPUs"
    )
    table = Table(show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(
        f"end to end ({result['tasks']:,} tasks, until projected)",
        f"{result['tasks_per_s']:,.0f} tasks/s",
    )
    for row in result["latency_ms"]:
        table.add_row(
            f"latency @ {row['offered_per_s']}/s offered ({row['achieved_per_s']:,.0f} achieved)",
            f"p50 {row['p50']:.1f}  p90 {row['p90']:.1f}  p99 {row['p99']:.1f} ms",
        )
    cpu = result["cpu_us_per_task"]
    table.add_row(
        "CPU per task, saturated run",
        f"{cpu['total']:,.0f} µs: " + ", ".join(f"{k} {v:,.0f}" for k, v in cpu.items() if k != "total"),
    )
    table.add_row(
        "messages stored / removed per task, saturated run",
        ", ".join(
            f"{name} {row['stored']:.2f} / {row['removed']:.2f}" for name, row in result["stored_per_task"].items()
        ),
    )
    runs = ", ".join(f"{rate:,.0f}" for rate in result["projector_runs"])
    table.add_row(
        "projector ingest (DuckDB), median",
        f"{result['projector_events_per_s']:,.0f} events/s ({runs})",
    )
    table.add_row("POST /api/tasks", f"{result['http_submit_per_s']:,.0f} req/s")
    _optional_rows(table, result)
    table.add_row("disk: write + fdatasync", f"{result['disk_fsync_per_s']:,} /s")
    for name, mb in result["peak_rss_mb"].items():
        table.add_row(f"peak RSS {name}", f"{mb:,.0f} MB")
    console.print(table)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CogoError("--plot needs matplotlib: pip install 'cogo[bench]' (or pip install matplotlib)") from None


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency percentiles against offered load, as a PNG."""
    _require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["latency_ms"], key=lambda r: r["offered_per_s"])
    x = [r["offered_per_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ("p50", "p90", "p99"):
        ax.plot(x, [r[key] for r in rows], marker="o", label=key)
    ax.set_xlabel("offered load (tasks/s)")
    ax.set_ylabel("submit -> execute_done (ms)")
    values = [r[k] for r in rows for k in ("p50", "p99") if r[k] > 0]
    if values and max(values) / min(values) > 50:  # an overloaded rate dwarfs the others
        ax.set_yscale("log")
    ax.set_title(f"cogo bench, sync_interval={result['sync_interval']}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _optional_rows(table: Any, result: dict[str, Any]) -> None:
    """The parts that run only when asked for (or could be turned off)."""
    workflows = result.get("workflows") or {}
    for count, row in (workflows.get("by_orchestrators") or {}).items():
        rounds = ", ".join(f"{r:,.1f}" for r in row["rounds"])
        table.add_row(
            f"workflow runs ({workflows['runs']} at once, {workflows['nodes_per_run']} nodes), "
            f"{count} orchestrator(s), median",
            f"{row['runs_per_s']:,.1f} runs/s = {row['nodes_per_s']:,.0f} nodes/s ({rounds})",
        )
    flow_control = result.get("flow") or {}
    for mode in ("off", "on") if flow_control else ():
        row = flow_control[mode]
        table.add_row(
            f"flow control {mode} ({flow_control['tasks']:,} tasks, {flow_control['keys']} keys), median",
            f"dispatcher {row['dispatcher_cpu_us_per_task']:,.0f} µs/task, "
            f"total {row['total_cpu_us_per_task']:,.0f} µs/task, {row['tasks_per_s']:,.0f} tasks/s",
        )
    _client_rows(table, result.get("client") or {})
    seal = result.get("seal") or {}
    for mode in ("off", "on") if seal else ():
        row = seal[mode]
        table.add_row(
            f"--auth seal checks {mode} ({seal['tasks']:,} tasks), median",
            f"dispatcher {row['dispatcher_cpu_us_per_task']:,.0f} µs/task, "
            f"total {row['total_cpu_us_per_task']:,.0f} µs/task, {row['tasks_per_s']:,.0f} tasks/s",
        )
    flow = result.get("workflow_steps")
    if flow:
        gap = flow["step_gap_ms"]
        table.add_row(
            f"workflow: {flow['runs']} runs of {flow['nodes']} publish steps, median",
            f"{flow['run_ms_median']:,.0f} ms a run = {flow['step_ms_median']:.1f} ms a step "
            f"(gap p50 {gap['p50']:.1f}, p90 {gap['p90']:.1f})",
        )
    agent = result.get("agent")
    if agent:
        for name in ("echo", "agent"):
            row = agent[name]
            table.add_row(
                f"{'@app.agent' if name == 'agent' else 'echo actor'} ({agent['tasks']:,} tasks, {row['route']})",
                f"{row['tasks_per_s']:,.0f} tasks/s, worker {row['worker_cpu_us_per_task']:,.0f} "
                f"µs/task, dispatcher {row['dispatcher_cpu_us_per_task']:,.0f} µs/task",
            )
        table.add_row(
            "@app.agent / echo",
            f"x{agent['tasks_per_s_ratio']:.2f} tasks/s, x{agent['worker_cpu_ratio']:.2f} worker CPU",
        )
    traced = result.get("tracing")
    if traced:
        for mode in ("off", "on"):
            row = traced[mode]
            table.add_row(
                f"tracing {mode} ({traced['tasks']:,} agent tasks)",
                f"{row['tasks_per_s']:,.0f} tasks/s, worker {row['worker_cpu_us_per_task']:,.0f} "
                f"µs/task, dispatcher {row['dispatcher_cpu_us_per_task']:,.0f} µs/task",
            )
        table.add_row(
            "tracing on - off",
            f"{traced['overhead_cpu_us_per_task']:+,.0f} µs CPU/task, "
            f"x{traced['tasks_per_s_ratio']:.2f} tasks/s, "
            f"{traced['export_bytes_per_task']:,.0f} B exported/task",
        )
        table.add_row("tracing off: its checks, per task", f"{traced['off_path_ns_per_task']:,.0f} ns")
    durable = result.get("durable")
    if durable:
        resumed, done = durable["suspend_to_resumed"], durable["suspend_to_done"]
        call, plain = durable["call_round_trip"], durable["plain_submit_round_trip"]
        table.add_row(
            f"durable: signal -> resumed ({durable['suspended_tasks']:,} suspended)",
            f"p50 {resumed['p50_ms']:,.1f} ms, p99 {resumed['p99_ms']:,.1f} ms; to done p50 "
            f"{done['p50_ms']:,.1f} ms, p99 {done['p99_ms']:,.1f} ms",
        )
        table.add_row(
            "durable: ctx.call round trip vs plain submit",
            f"p50 {call['p50_ms']:,.1f} / {plain['p50_ms']:,.1f} ms, p99 {call['p99_ms']:,.1f} / "
            f"{plain['p99_ms']:,.1f} ms",
        )
        table.add_row(
            "durable: per suspended task",
            f"{durable['store_bytes_per_suspended_task']:,.0f} bytes stored, worker RSS "
            f"{durable['worker_rss_kb_per_suspended_task']:,.2f} KB",
        )
    for row in result.get("scale_out") or []:
        table.add_row(
            f"scale-out: {row['workers']} worker process(es), sleep-bound",
            f"{row['tasks_per_s']:,.0f} tasks/s ({row['efficiency']:.0%} of {row['ideal_per_s']:,.0f})",
        )
    history = result.get("history")
    if history:
        ratios = history.get("ratio_to_smallest", {})
        for size, figures in history["sizes"].items():
            ratio = ratios.get(size, {})
            for name, ms in figures["endpoints_ms"].items():
                note = f"  (x{ratio[name]:.2f})" if name in ratio and len(ratios) > 1 else ""
                table.add_row(
                    f"{name} at {int(size):,} events in 1 h",
                    f"{ms['median']:,.1f} ms ({ms['min']:,.1f}-{ms['max']:,.1f}){note}",
                )


def _client_rows(table: Any, client: dict[str, Any]) -> None:
    """What a user feels: awaiting through ``cogo.Client``, a worker killed."""
    awaited = client.get("awaited")
    if awaited:
        table.add_row(
            f"client: {awaited['tasks']:,} tasks, {awaited['in_flight']} in flight",
            f"awaited {awaited['client_awaited_per_s']:,.0f} tasks/s, seen on the event "
            f"{awaited['event_observed_per_s']:,.0f} tasks/s (x{awaited['ratio']:.2f})",
        )
    steps = client.get("steps")
    if steps:
        table.add_row(
            f"client: a {steps['steps']}-step task, {steps['runs']} runs",
            f"awaited p50 {steps['client_ms']['p50']:.1f} p99 {steps['client_ms']['p99']:.1f} ms, "
            f"event p50 {steps['event_ms']['p50']:.1f} p99 {steps['event_ms']['p99']:.1f} ms",
        )
    kill = client.get("kill")
    if kill:
        runs = ", ".join(f"{s:.2f}" for s in kill["kill_to_done_s"])
        table.add_row(
            f"worker SIGKILLed mid-task: kill -> done (ack_wait {kill['ack_wait_s']:g} s)",
            f"median {kill['median_s']:.2f} s ({runs})",
        )
