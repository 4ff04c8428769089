"""The durable research agent (``lexicon.research``) against cogo.testing's chat endpoint and
a real nats-server: readers in parallel, a person's approval, a timer, a writer; and the
same with each agent process SIGKILLed during each phase: every child runs exactly once
(counted by its ledger line) and the planner's budget bounds the whole tree."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from lexicon import research

import cogo
from cogo.testing import CogoEnv


@pytest.fixture
def cogo_apps():
    return [research.app]


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("RESEARCH_LEDGER", str(path))
    return path


def counted(ledger: Path) -> Counter[tuple[str, str]]:
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    return Counter((d["kind"], d["task"]) for d in map(json.loads, lines))


async def until(env: CogoEnv, task_id: str, check, what: str, timeout: float = 60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            status = await env.client.status(task_id)
            if check(status):
                return status
        except cogo.errors.TaskNotFound:
            pass
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.1)


async def calls_reach(chat_server, n: int, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while chat_server.calls < n:
        assert asyncio.get_running_loop().time() < deadline, f"{chat_server.calls} LLM calls"
        await asyncio.sleep(0.05)


def waits_for(kind: str):
    return lambda s: s.status == "suspended" and any(w["kind"] == kind for w in (s.waiting_for or []))


async def tree_tokens(env: CogoEnv, root: str) -> int:
    assert env.projector is not None
    await env.projector.wait_caught_up(30)
    rows = await env.projector.store.read(
        lambda con: con.execute(
            "SELECT subtree_tokens, subtree_tasks FROM task_tree WHERE task_id = ?", [root]
        ).fetchall()
    )
    assert rows and rows[0][1] == 5, rows  # the planner, three readers, the writer
    return int(rows[0][0])


async def test_plan_read_approve_sleep_write(cogo_env, chat_server, ledger):
    chat_server.reply("alpha\nbeta\ngamma")
    handle = await cogo_env.client.submit("research.plan.0", {"question": "JetStream?"})
    tid = handle.task_id
    await until(cogo_env, tid, waits_for("signal"), "the planner never waited for approval")
    await cogo_env.client.signal(tid, "approve", {"by": "ana"})
    out = await handle.result(timeout=60)
    assert out["topics"] == ["alpha", "beta", "gamma"] and out["approved_by"] == "ana"
    assert out["report"]["sections"] == 3
    status = await handle.status()
    assert sorted(status.children) == sorted([f"{tid}/read:0", f"{tid}/read:1", f"{tid}/read:2", f"{tid}/write"])
    assert set(counted(ledger).values()) == {1} and len(counted(ledger)) == 4
    assert await tree_tokens(cogo_env, tid) <= 6000


async def test_sigkill_in_every_phase_runs_every_child_once(tmp_path, chat_server):
    ledger = tmp_path / "ledger.jsonl"
    env_vars = {"COGO_LLM_BASE_URL": chat_server.url, "COGO_LLM_API_KEY": "k", "RESEARCH_LEDGER": str(ledger)}
    chat_server.reply("alpha\nbeta\ngamma")
    for _ in range(3):  # the readers' first calls: slow, and cut off by the SIGKILL
        chat_server.reply("never seen", delay_s=30)
    async with CogoEnv("lexicon.research:app", processes=True, data_dir=tmp_path / "env", env=env_vars) as env:
        handle = await env.client.submit("research.plan.0", {"question": "JetStream?", "pause_s": 3.0})
        tid = handle.task_id
        # 1. the readers are in their LLM calls (the planner waits for them): kill them
        await until(env, tid, waits_for("call"), "the planner never waited for its readers")
        await calls_reach(chat_server, 4)
        env.kill("research.read-0")
        env.spawn("lexicon.research:app", "read", "research.read-1")
        # 2. the planner waits for approval: kill it, then approve
        await until(env, tid, waits_for("signal"), "the planner never waited for approval")
        env.kill("research.plan-0")
        env.spawn("lexicon.research:app", "plan", "research.plan-1")
        chat_server.reply("never seen", delay_s=30)  # the writer's first call: cut off
        await env.client.signal(tid, "approve", {"by": "ana"})
        # 3. the planner sleeps (a durable timer): kill it again
        await until(env, tid, waits_for("timer"), "the planner never slept")
        env.kill("research.plan-1")
        env.spawn("lexicon.research:app", "plan", "research.plan-2")
        # 4. the writer is in its LLM call: kill it
        await until(env, f"{tid}/write", lambda s: s.status in ("queued", "running"), "the writer never started")
        # the topics, three readers cut off, the three again: the writer's is the 8th call
        await calls_reach(chat_server, 8)
        env.kill("research.write-0")
        env.spawn("lexicon.research:app", "write", "research.write-1")
        out = await handle.result(timeout=120)
        assert out["approved_by"] == "ana" and out["report"]["sections"] == 3
        # every child ran exactly once; the budget bounds the tree
        ran = counted(ledger)
        assert sorted(task for _, task in ran) == sorted(
            [f"{tid}/read:0", f"{tid}/read:1", f"{tid}/read:2", f"{tid}/write"]
        )
        assert set(ran.values()) == {1}
        assert await tree_tokens(env, tid) <= 6000
        events = await env.events(tid)
        kinds = [e["type"] for e in events]
        assert kinds.count("execute_done") == 1 and kinds.count("call_started") == 4
