"""Suspension at scale and under faults, with the agent in its own process: 1,000 tasks wait
for signals at once on one agent process of concurrency 2 (they hold no worker slot), a
SIGKILL of that process while they wait loses nothing, and each finishes exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from cogo.testing import CogoEnv
from tests.helpers import wait_until

N = 1000
CONFIG = """
[runtime]
suspend_after_ms = 0

[actors]
concurrency = 2
batch = 2
"""


@pytest.fixture
async def env(tmp_path: Path):
    ledger = tmp_path / "ledger.txt"
    env = CogoEnv("tests.durable_apps:waiting", config=CONFIG, data_dir=tmp_path / "cogo",
                  processes=True, env={"DUR_LEDGER": str(ledger)})  # fmt: skip
    await env.start()
    env.ledger = ledger  # type: ignore[attr-defined]
    try:
        yield env
    finally:
        await env.stop()


async def suspended_count(env: CogoEnv, ids: list[str]) -> int:
    assert env.projector is not None
    await env.projector.wait_caught_up(30)
    rows = await env.projector.store.read(
        lambda con: con.execute(
            "SELECT count(*) FROM task_tree WHERE status = 'suspended' AND route = ?",
            ["durwait.signal.0"],
        ).fetchall()
    )
    return int(rows[0][0])


async def test_a_thousand_tasks_wait_on_two_slots_and_all_finish_once(env):
    client = env.client
    handles = await asyncio.gather(
        *(client.submit("durwait.signal.0", {}, task_id=f"wait-{i}") for i in range(N))
    )
    ids = [h.task_id for h in handles]

    async def all_suspended() -> bool:
        return await suspended_count(env, ids) == N

    await wait_until(all_suspended, 170, "not every task suspended")
    # the one agent process (concurrency 2) holds none of them: SIGKILL it and start another
    (label,) = env.children
    env.kill(label)
    env.spawn("tests.durable_apps:waiting", "wait_for_go", label + "-again")
    sem = asyncio.Semaphore(64)

    async def signal(tid: str) -> None:
        async with sem:
            await client.signal(tid, "go", {"tid": tid})

    await asyncio.gather(*(signal(t) for t in ids))
    results = await asyncio.gather(*(h.result(timeout=170) for h in handles))
    assert [r["data"]["tid"] for r in results] == ids
    counted = Counter(env.ledger.read_text().split())  # type: ignore[attr-defined]
    assert len(counted) == N and set(counted.values()) == {1}
