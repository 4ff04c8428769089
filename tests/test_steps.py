"""Durable steps (``ctx.step``) on a real nats-server: journaled before they return, replayed
(not re-run, not re-charged) by a retried attempt, found again after the duplicate window,
and every misuse a clear, permanent error."""

from __future__ import annotations

import pytest

import cogo
from cogo.sdk.steps import JOURNAL_BUCKETS, journal_subject
from cogo.testing import CogoEnv
from tests import runtime_apps
from tests.runtime_apps import RUNS


@pytest.fixture
def cogo_apps():
    return [runtime_apps.app]


def steps_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "step_completed"]


async def test_a_retried_attempt_replays_journaled_steps(cogo_env):
    handle = await cogo_env.client.submit("rt.steps.0", {"fail_until": 2})
    result = await handle.result(timeout=30)
    tid = handle.task_id
    # step a ran once (attempt 1); attempt 2 got its journaled result, then ran b
    assert RUNS[f"{tid}:a"] == 1 and RUNS[f"{tid}:b"] == 1
    assert result == {"a": {"step": f"{tid}:a", "run": 1}, "b": {"step": f"{tid}:b", "run": 1}}
    events = await cogo_env.events(tid)
    journal = steps_of(events)
    assert [(e["event_id"], e["attempt"], e["data"]["step"]) for e in journal] == [
        (f"{tid}:step:a", 1, "a"),
        (f"{tid}:step:b", 2, "b"),
    ]
    assert journal[0]["usage"]["tokens"] == 7 and journal[0]["data"]["result"] == result["a"]
    # charged once each: 7 tokens for a (attempt 1), 7 for b (attempt 2), nothing for the replay
    status = await handle.status()
    assert status.attempt == 2 and status.usage["tokens"] == 14
    # the journal rides on one of the route's 64 subjects, not on a subject per task
    assert journal_subject("rt.steps.0", tid).rsplit(".", 1)[1] in {str(b) for b in range(JOURNAL_BUCKETS)}


async def test_a_step_that_raises_is_not_journaled_and_runs_again(cogo_env):
    handle = await cogo_env.client.submit("rt.misuse.0", {"how": "raises"})
    assert await handle.result(timeout=30) == "second time lucky"
    assert RUNS[f"{handle.task_id}:raises"] == 2
    journal = steps_of(await cogo_env.events(handle.task_id))
    assert [e["attempt"] for e in journal] == [2]


async def test_a_large_result_goes_to_the_object_store_and_replays(cogo_env):
    handle = await cogo_env.client.submit("rt.misuse.0", {"how": "big"})
    assert await handle.result(timeout=30) == {"items": 100, "first": "xxx", "runs": 1}
    (step,) = steps_of(await cogo_env.events(handle.task_id))
    assert "result" not in step["data"]
    ref = step["data"]["artifact"]
    assert ref["name"] == f"{handle.task_id}/steps/big.json" and ref["size"] > 100_000


@pytest.mark.parametrize(
    ("how", "code", "says"),
    [
        ("reuse", "step.name_reused", "'same' already ran"),
        ("not_json", "step.result_invalid", "step 'opaque' returned a object"),
        ("nested", "step.nested", "inside step 'outer'"),
        ("emit", "output.invalid", "ctx.emit takes JSON data"),
    ],
)
async def test_misuse_is_a_permanent_error_that_says_what(cogo_env, how, code, says):
    handle = await cogo_env.client.submit("rt.misuse.0", {"how": how})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=30)
    assert failed.value.code == code and failed.value.attempts == 1, failed.value
    assert says in failed.value.message


async def test_a_journal_older_than_the_duplicate_window_is_still_replayed(tmp_path):
    """Attempt 2 starts after the 1 s duplicate window has dropped the step's msg id: the
    journal is read from the log (not the de-duplication), so step a does not run again."""
    config = """
[bus]
duplicate_window_s = 1.0
[policy.routes."rt.steps.0"]
backoff = { initial_ms = 2500, multiplier = 1.0, max_ms = 2500 }
"""
    async with CogoEnv(runtime_apps.app, config=config, data_dir=tmp_path / "env") as env:
        handle = await env.client.submit("rt.steps.0", {"fail_until": 2})
        await handle.result(timeout=30)
        tid = handle.task_id
        assert RUNS[f"{tid}:a"] == 1
        journal = steps_of(await env.events(tid))
        assert [e["data"]["step"] for e in journal] == ["a", "b"]  # a journaled once
