"""Suspension at scale and under faults, with the agent in its own process: 1,000 tasks wait
for signals at once on one agent process of concurrency 2 (they hold no worker slot), a
SIGKILL of that process, or of the whole system (``cogo up``: nats-server, dispatcher,
projector, agent), while they wait loses nothing, and each finishes exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from cogo.testing import CogoEnv
from tests.helpers import wait_until

N = 1000
ROOT = str(Path(__file__).resolve().parent.parent)  # where tests.durable_apps imports from
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
    env = CogoEnv(
        "tests.durable_apps:waiting",
        config=CONFIG,
        data_dir=tmp_path / "cogo",
        processes=True,
        env={"DUR_LEDGER": str(ledger)},
    )
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
    handles = await asyncio.gather(*(client.submit("durwait.signal.0", {}, task_id=f"wait-{i}") for i in range(N)))
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


@pytest.mark.timeout(600)
async def test_a_sigkill_of_the_whole_system_while_a_thousand_wait(tmp_path: Path):
    """``cogo up`` (nats-server, dispatcher, projector, the agent) SIGKILLed while 1,000 tasks
    are suspended; after a restart on the same data dir each is signalled and finishes once."""
    import httpx

    from cogo.sdk.client import Client
    from tests.upsystem import cogo_up, kill_system, stop

    data = tmp_path / "data"
    ledger = tmp_path / "ledger.txt"
    config = tmp_path / "cogo.toml"
    config.write_text(CONFIG + "\n[bus]\nack_wait_s = 5.0\n")
    args = ("--app", "tests.durable_apps:waiting", "--app-dir", ROOT)
    env = {"DUR_LEDGER": str(ledger)}
    proc, info = await cogo_up(data, config, *args, env=env)
    ids = [f"all-{i}" for i in range(N)]
    try:
        async with Client(info["nats_url"]) as client:
            await asyncio.gather(*(client.submit("durwait.signal.0", {}, task_id=t) for t in ids))
        headers = {"Authorization": f"Bearer {info['api_token']}"}
        query = "SELECT count(*) AS n FROM task_tree WHERE status = 'suspended' AND route = 'durwait.signal.0'"
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers) as http:

            async def all_suspended() -> bool:
                r = await http.post("/api/sql", json={"sql": query})
                return r.status_code == 200 and r.json()["rows"][0][0] == N

            await wait_until(all_suspended, 300, "not every task suspended")
    finally:
        kill_system(proc, data)
    proc, info = await cogo_up(data, config, *args, env=env)
    try:
        async with Client(info["nats_url"]) as client:
            sem = asyncio.Semaphore(64)

            async def signal(tid: str) -> None:
                async with sem:
                    await client.signal(tid, "go", {"tid": tid})

            await asyncio.gather(*(signal(t) for t in ids))
            handles = [client.handle(t, "durwait.signal.0") for t in ids]
            results = await asyncio.gather(*(h.result(timeout=300) for h in handles))
        assert [r["data"]["tid"] for r in results] == ids
        counted = Counter(ledger.read_text().split())
        assert len(counted) == N and set(counted.values()) == {1}
    finally:
        stop(proc)
