"""Fault tests: a real ``cogo run orchestrator`` process is SIGKILLed mid-run; a new one
resumes every run from the event log without repeating a side effect, and Wait deadlines
survive the restart."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cogo.agents.echo import EchoActor
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.envelope import new_id
from cogo.workflows import history
from cogo.workflows.engine import Append, Submit, decide, started_event
from cogo.workflows.run import RunState, timestamp
from tests.helpers import EventReader, running
from tests.upsystem import CogoProcess
from tests.workflow_support import plan_of, start_run, wait_run


@pytest.fixture
def orchestrator(nats_server, config_path, data_dir) -> Iterator[CogoProcess]:
    """``cogo run orchestrator`` as a child process (started by the test)."""
    args = ["--nats-url", nats_server.url, "--config", str(config_path)]
    args += ["--data-dir", str(data_dir)]
    process = CogoProcess("run", "orchestrator", *args, log=data_dir / "orchestrator.log")
    try:
        yield process
    finally:
        process.stop()


THREE_STEPS: dict[str, Any] = {
    "id": "threeSteps",
    "nodes": [
        {"id": "a", "type": "publish", "route": "echo.run.0", "payload": {"sleep_ms": 1500, "result": {"step": "a"}}},
        {
            "id": "b",
            "type": "publish",
            "route": "echo.run.0",
            "payload": {"sleep_ms": 1500, "result": {"step": "b", "after": "${nodes.a.result.step}"}},
        },
        {"id": "c", "type": "publish", "route": "echo.run.0", "payload": {"result": "c"}},
    ],
}


async def _enqueued(reader: EventReader, task_id: str, timeout: float = 10.0) -> None:
    """Until the dispatcher accepted ``task_id`` (so it runs without the orchestrator)."""
    deadline = time.monotonic() + timeout
    while not any(e.type == "execute_enqueued" for e in reader.of(task_id)):
        assert time.monotonic() < deadline, f"{task_id} never enqueued"
        await reader.poll(wait=0.1)


def _running(node: str) -> Any:
    return lambda s: node in s.nodes and s.nodes[node].status == "running"


async def test_sigkill_mid_run_resumes_without_duplicates(nats_server, js, config, orchestrator):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor) as actors:
        echo = actors[1]
        orchestrator.start()
        run_id = await start_run(js, config, THREE_STEPS)
        # killed while `a` runs; `a` finishes while no orchestrator is alive
        reader = EventReader(js)
        await _enqueued(reader, f"{run_id}:a:1")
        orchestrator.kill()
        await reader.wait_terminal([f"{run_id}:a:1"], timeout=10)
        orchestrator.start()
        # killed again while `b` runs, restarted at once
        await wait_run(js, run_id, until=_running("b"))
        orchestrator.kill()
        orchestrator.start()
        state = await wait_run(js, run_id, timeout=20)
        await reader.poll()
    assert state.status == "succeeded", state.view()
    assert state.nodes["b"].result == {"step": "b", "after": "a"}
    enqueued = Counter(e.task_id for e in reader.events if e.type == "execute_enqueued" and e.correlation_id == run_id)
    assert enqueued == {f"{run_id}:a:1": 1, f"{run_id}:b:1": 1, f"{run_id}:c:1": 1}
    assert echo.counters["succeeded"] == 3  # each Publish ran exactly once
    outcomes = Counter(
        (e.data or {}).get("node_id")
        for e in reader.events
        if e.correlation_id == run_id and e.type == "node_succeeded"
    )
    assert outcomes == {"a": 1, "b": 1, "c": 1}
    assert len(orchestrator.pids) == 3
    actors_seen = {
        e.actor for e in reader.events if e.correlation_id == run_id and e.type.startswith(("node_", "workflow_"))
    }
    assert len(actors_seen) >= 2  # the run was carried on by another process


WAIT_THEN_WORK: dict[str, Any] = {
    "id": "waitThenWork",
    "parameters": {"timeout_ms": {"type": "integer", "required": True}},
    "nodes": [
        {
            "id": "hold",
            "type": "wait",
            "timeout_ms": "${params.timeout_ms}",
            "event": {"type": "never_happens"},
        },
        {"id": "work", "type": "publish", "route": "echo.run.0", "payload": {}},
    ],
}


async def test_wait_timeout_fires_after_restart(nats_server, js, config, orchestrator):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        orchestrator.start()
        # one deadline passes while no orchestrator runs, the other after the restart
        early = await start_run(js, config, WAIT_THEN_WORK, timeout_ms=1500)
        late = await start_run(js, config, WAIT_THEN_WORK, timeout_ms=5000)
        await wait_run(js, early, until=_running("hold"))
        await wait_run(js, late, until=_running("hold"))
        orchestrator.kill()
        killed_at = time.time()
        await asyncio.sleep(2.0)
        orchestrator.start()
        early_state = await wait_run(js, early, timeout=15)
        late_state = await wait_run(js, late, timeout=15)
    for state in (early_state, late_state):
        hold = state.nodes["hold"]
        assert state.status == "failed"
        assert hold.status == "failed" and hold.error_code == "workflow.wait_timeout"
        assert state.nodes["work"].status == "skipped"
        # the deadline came from the node_started event, not from the restart
        assert hold.deadline is not None
        assert hold.deadline - (timestamp(hold.started_at) or 0) == pytest.approx(
            int(state.parameters["timeout_ms"]) / 1000, abs=0.05
        )
        assert (timestamp(hold.ended_at) or 0) >= hold.deadline
    # the late deadline was still ahead at the restart: only a timer the new process re-armed
    # from the stored deadline can have fired it (when, on a loaded machine, is not asserted)
    late_hold = late_state.nodes["hold"]
    assert late_hold.deadline is not None and late_hold.deadline > killed_at + 2.0


async def test_resubmits_a_task_a_dead_process_never_sent(nats_server, js, config, orchestrator):
    # the crash window between appending node_started and publishing the task, made exact:
    # a "previous process" appends the events of starting node `a`, then dies
    plan = plan_of(config, THREE_STEPS)
    run_id, dead = new_id(), "orchestrator@gone:1"
    state = RunState(run_id=run_id)
    first = started_event(plan, run_id, dead)
    state.apply(first, (await history.append(js, first))[0])
    append, submit = decide(plan, state, time.time(), dead)
    assert isinstance(append, Append) and append.event.type == "node_started"
    assert isinstance(submit, Submit)
    await history.append(js, append.event)  # ...and the Submit never happens
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        orchestrator.start()
        final = await wait_run(js, run_id, timeout=20)
        reader = EventReader(js)
        await reader.poll()
    assert final.status == "succeeded", final.view()
    enqueued = Counter(e.task_id for e in reader.events if e.type == "execute_enqueued" and e.correlation_id == run_id)
    assert enqueued == {f"{run_id}:a:1": 1, f"{run_id}:b:1": 1, f"{run_id}:c:1": 1}
