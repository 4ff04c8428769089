"""``cogo bench --seal-tasks N``: what the trust-boundary checks cost the dispatcher, per task.

Under ``cogo up --auth`` the dispatcher holds a seal key (``cogo.streams.seal``): it seals
every order it sends (two per-task tokens and an HMAC of the order), checks the seal of
every result and retry, guards the message ids of its events and MACs the end marker of an
output. Without a key it does none of it. On the bench's system, rounds alternate between
dispatchers started without and with ``COGO_SEAL_KEY`` (the same code, the same N echo
tasks), ``--seal-repeats`` of each; per round the dispatchers' CPU per task (``/proc``)
and tasks/s until every ``execute_done`` is projected. Reported: the medians per mode, and
what sealing adds.
"""

from __future__ import annotations

import secrets
import statistics
from typing import Any

from cogo.streams.seal import SEAL_KEY_ENV

WARM_UP = 200


async def _restart_dispatchers(bench: Any, key: str | None) -> None:
    labels = [label for label in bench.children if label.startswith("dispatcher")]
    for label in labels:
        await bench.stop_child(label)
    for label in labels:
        bench.spawn("dispatcher", label, env={SEAL_KEY_ENV: key} if key else None)


async def measure(bench: Any, tasks: int, repeats: int) -> dict[str, Any]:
    """Dispatcher CPU per task and tasks/s without and with the seal key, alternating."""
    key = secrets.token_urlsafe(32)
    rounds: list[dict[str, Any]] = []
    try:
        for repeat in range(repeats):
            for mode in ("off", "on"):
                await _restart_dispatchers(bench, key if mode == "on" else None)
                await bench.run_tasks(WARM_UP, f"warm-up, seal {mode}")
                before = bench.cpu_snapshot()
                elapsed = await bench.run_tasks(tasks, f"{tasks:,} tasks, seal {mode} ({repeat + 1}/{repeats})")
                used = {k: v - before.get(k, 0.0) for k, v in bench.cpu_snapshot().items()}
                dispatchers = sum(v for k, v in used.items() if k.startswith("dispatcher"))
                rounds.append(
                    {
                        "mode": mode,
                        "tasks_per_s": round(tasks / elapsed, 1),
                        "dispatcher_cpu_us_per_task": round(dispatchers / tasks * 1e6, 1),
                        "total_cpu_us_per_task": round(sum(used.values()) / tasks * 1e6, 1),
                    }
                )
    finally:
        await _restart_dispatchers(bench, None)  # later parts run as they always did
    summary: dict[str, Any] = {"tasks": tasks, "repeats": repeats, "rounds": rounds}
    for mode in ("off", "on"):
        mine = [r for r in rounds if r["mode"] == mode]
        summary[mode] = {name: round(statistics.median(r[name] for r in mine), 1) for name in mine[0] if name != "mode"}
    summary["dispatcher_cpu_us_added_per_task"] = round(
        summary["on"]["dispatcher_cpu_us_per_task"] - summary["off"]["dispatcher_cpu_us_per_task"],
        1,
    )
    return summary
