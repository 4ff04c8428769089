"""OpenTelemetry traces (cogo/tracing.py) received by a real OTLP/HTTP receiver
(tests/otlp_receiver.py, decoding with opentelemetry-proto): one trace across three processes
(`cogo submit` -> `cogo up`'s dispatcher -> the agent's worker -> its step and LLM call),
a traceparent given to POST /api/tasks, trace ids in SQL, an unreachable endpoint, and
a child task called with `ctx.call` in its parent's trace, nothing imported when tracing is
off."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")

from tests.helpers import wait_until  # noqa: E402
from tests.otlp_receiver import OtlpReceiver  # noqa: E402
from tests.upsystem import cogo_up, stop  # noqa: E402

FLOW = {
    "id": "tracedFlow",
    "nodes": [{"id": "ask", "type": "publish", "route": "traced.ask.0", "payload": {"question": "wf"}}],
}
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


def otel_env(endpoint: str, chat_url: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
        "COGO_LLM_BASE_URL": chat_url,
        "COGO_LLM_API_KEY": "k",
    }


def submit(
    data_dir,
    env: dict[str, str],
    task_id: str,
    route: str = "traced.ask.0",
    payload: dict | None = None,
) -> dict:
    """`cogo submit --wait` in a process of its own (the client of the trace)."""
    payload = payload if payload is not None else {"question": " why? "}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cogo",
            "submit",
            "--data-dir",
            str(data_dir),
            "--route",
            route,
            "--payload",
            json.dumps(payload),
            "--task-id",
            task_id,
            "--wait",
            "--timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


async def test_one_trace_from_the_client_through_dispatcher_and_worker_to_the_llm_call(
    tmp_path, config_path, chat_server, receiver
):
    chat_server.reply("because", prompt_tokens=12, completion_tokens=3)
    env = otel_env(receiver.url, chat_server.url)
    data_dir = tmp_path / "up"
    up, info = await cogo_up(data_dir, config_path, "--app", "tests.traced_app:app", env=env)
    try:
        status = await asyncio.to_thread(submit, data_dir, env, "traced-1")
        assert status["status"] == "succeeded" and status["result"] == {"answer": "because"}

        # everything of the task: its submission, task span, attempt(s), the step and the call
        # (on a loaded machine a redelivery may add an attempt: the step replays, no span)
        def complete() -> bool:
            steps, chats = receiver.named("step "), receiver.named("chat ")
            ran = {s.span_id for s in receiver.named("attempt ")}
            return bool(
                receiver.named("task ")
                and receiver.named("submit ")
                and steps
                and chats
                and steps[0].parent_span_id in ran
                and chats[-1].parent_span_id in ran
            )

        await wait_until(complete, 30, "the task's spans never reached the receiver")
        spans = {
            s.name.split(" ")[0]: s for s in receiver.spans if s.name.startswith(("submit", "task", "step", "chat"))
        }
        attempts = {s.span_id: s for s in receiver.named("attempt ")}
        headers = {"Authorization": f"Bearer {info['api_token']}", "traceparent": CALLER}
        chat_server.reply("via http")
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers) as http:
            r = await http.post(
                "/api/tasks", json={"route": "traced.ask.0", "task_id": "traced-2", "payload": {"question": "http?"}}
            )
            assert r.status_code == 202, r.text
            rows = await wait_until(lambda: _sql(http, "traced-2"), 30, "no trace id in bus_events")
            # a workflow run: its run span, a node span, the node's task under it
            planned = await http.post("/api/orchestrator/plan", json={"definition": FLOW})
            assert planned.status_code == 200, planned.text
            run = await http.post("/api/orchestrator/execute", json={"plan": planned.json()["plan"], "runId": "run-t"})
            assert run.status_code == 202, run.text
            flow = await wait_until(
                lambda: (
                    receiver.named("workflow tracedFlow")
                    and receiver.named("node ask")
                    and [s for s in receiver.named("task ") if s.attributes["cogo.task_id"] == "run-t:ask:1"]
                ),
                30,
                "the workflow's spans never reached the receiver",
            )
    finally:
        log = stop(up)
    submit_, task, step, chat = spans["submit"], spans["task"], spans["step"], spans["chat"]
    attempt = attempts[step.parent_span_id]  # the attempt that ran the step
    # one trace, each span the child of the one before it
    assert len({s.trace_id for s in (submit_, task, attempt, step, chat)}) == 1, log
    assert submit_.parent_span_id == ""  # the client's submission starts the trace
    assert task.parent_span_id == submit_.span_id
    assert attempt.parent_span_id == task.span_id
    assert step.parent_span_id == attempt.span_id and step.attributes["cogo.step"] == "prepare"
    assert chat.parent_span_id in attempts  # the attempt that ran the step, or a redelivery
    assert all(a.parent_span_id == task.span_id for a in attempts.values())
    # three processes: the client, cogo up (the dispatcher), the agent's worker
    pid = {name: s.resource["process.pid"] for name, s in {**spans, "attempt": attempt}.items()}
    assert len({pid["submit"], pid["task"], pid["attempt"]}) == 3
    assert pid["chat"] == pid["step"] == pid["attempt"]
    # the LLM call in GenAI semantic conventions
    assert chat.name == "chat gpt-4o-mini" and chat.kind == 3  # SPAN_KIND_CLIENT
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 12
    assert chat.attributes["gen_ai.usage.output_tokens"] == 3
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    # the task span covers the task: from its submission to its terminal event
    assert task.start_ns <= attempt.start_ns and task.end_ns >= attempt.end_ns
    # POST /api/tasks continued the caller's trace, and SQL finds the trace of each task
    http_task = [s for s in receiver.named("task ") if s.attributes["cogo.task_id"] == "traced-2"]
    assert http_task and http_task[0].trace_id == CALLER[3:35]
    assert rows == {CALLER[3:35]}
    (wf,) = receiver.named("workflow tracedFlow")
    (node,) = receiver.named("node ask")
    (wf_task,) = flow
    wf_attempt = [s for s in receiver.named("attempt ") if s.attributes["cogo.task_id"] == "run-t:ask:1"]
    assert wf.parent_span_id == "" and node.parent_span_id == wf.span_id
    assert wf_task.parent_span_id == node.span_id
    assert wf_attempt and wf_attempt[0].parent_span_id == wf_task.span_id
    assert len({wf.trace_id, node.trace_id, wf_task.trace_id, wf_attempt[0].trace_id}) == 1


async def test_a_child_called_with_ctx_call_is_in_its_parents_trace(tmp_path, config_path, chat_server, receiver):
    env = otel_env(receiver.url, chat_server.url)
    data_dir = tmp_path / "up"
    up, _ = await cogo_up(data_dir, config_path, "--app", "tests.traced_app:app", env=env)
    try:
        status = await asyncio.to_thread(submit, data_dir, env, "fam-1", "traced.parent.0", {"topic": " tides "})
        assert status["status"] == "succeeded", status
        assert status["result"] == {"note": {"topic": "tides"}}

        def of(prefix: str, task_id: str) -> list:
            return [s for s in receiver.named(prefix) if s.attributes["cogo.task_id"] == task_id]

        # both tasks ended (their task spans), the call under its attempt, the child's step
        # under the child's attempt (each process exports on its own schedule)
        def complete() -> bool:
            ran = {s.span_id for s in of("attempt ", "fam-1")}
            child_ran = {s.span_id for s in of("attempt ", "fam-1/note")}
            calls = of("call ", "fam-1/note")
            return bool(
                of("task ", "fam-1")
                and of("task ", "fam-1/note")
                and calls
                and calls[0].parent_span_id in ran
                and any(s.parent_span_id in child_ran for s in receiver.named("step "))
            )

        await wait_until(complete, 30, "the parent's and child's spans never reached the receiver")
    finally:
        log = stop(up)
    by_id = {s.span_id: s for s in receiver.spans}

    def ancestors(span) -> list:
        chain = []
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            chain.append(span)
        return chain

    (submit_,) = receiver.named("submit traced.parent.0")
    (parent_task,) = of("task ", "fam-1")
    (child_task,) = of("task ", "fam-1/note")
    (call,) = of("call ", "fam-1/note")
    parent_attempts = {s.span_id: s for s in of("attempt ", "fam-1")}
    child_attempts = of("attempt ", "fam-1/note")
    (child_step,) = [s for s in receiver.named("step ") if by_id.get(s.parent_span_id) in child_attempts]
    # the submission of the child is a span of the parent's attempt that called it, and the
    # child's task span (reported by the dispatcher) hangs under it: one trace, one tree
    assert call.name == "call traced.child.0" and call.kind == 4  # SPAN_KIND_PRODUCER
    assert call.parent_span_id in parent_attempts, log
    assert child_task.parent_span_id == call.span_id
    assert all(a.parent_span_id == child_task.span_id for a in child_attempts)
    chain = ancestors(child_step)
    assert chain[:3] == [by_id[child_step.parent_span_id], child_task, call]
    assert parent_attempts[call.parent_span_id] in chain
    assert chain[-2:] == [parent_task, submit_] and submit_.parent_span_id == ""
    family = (submit_, parent_task, *parent_attempts.values(), call, child_task, *child_attempts, child_step)
    assert len({s.trace_id for s in family}) == 1
    # across processes: the client, the dispatcher (task spans), the worker (attempts, call)
    pid = {s.resource["process.pid"] for s in (submit_, parent_task, call)}
    assert len(pid) == 3 and child_task.resource["process.pid"] == parent_task.resource["process.pid"]
    assert call.resource["process.pid"] == by_id[call.parent_span_id].resource["process.pid"]


async def _sql(http: httpx.AsyncClient, task_id: str) -> set[str] | None:
    r = await http.post(
        "/api/sql", json={"sql": f"SELECT DISTINCT trace_id FROM task_traces WHERE task_id = '{task_id}'"}
    )
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    return {row[0] for row in rows} if rows else None


UNREACHABLE = """
import asyncio, json, sys, time
from cogo import tracing
from cogo.testing import ChatServer, CogoEnv

async def main():
    chat = ChatServer().start()
    import os
    os.environ["COGO_LLM_BASE_URL"] = chat.url
    async with CogoEnv("tests.traced_app:app") as env:
        began = time.monotonic()
        handles = [await env.client.submit("traced.ask.0", {"question": f"q{i}"})
                   for i in range(20)]
        results = [await h.result(timeout=60) for h in handles]
        took = time.monotonic() - began
    deadline = time.monotonic() + 30
    while tracing.stats()["dropped"] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    chat.stop()
    print(json.dumps({"ok": sum(r == {"answer": "ok"} for r in results), "seconds": took,
                      **tracing.stats()}))

asyncio.run(main())
"""


def test_an_unreachable_endpoint_fails_no_task_and_its_spans_are_dropped_and_counted():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "COGO_LLM_API_KEY": "k",
    }
    done = subprocess.run([sys.executable, "-c", UNREACHABLE], capture_output=True, text=True, timeout=150, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["ok"] == 20 and figures["exported"] == 0 and figures["dropped"] > 0


def test_off_nothing_is_imported_and_nothing_is_added():
    code = (
        "import sys, cogo, cogo.sdk.client, cogo.runtime.worker, cogo.runtime.dispatcher, "
        "cogo.http.app\n"
        "from cogo import tracing\n"
        "from cogo.streams.events import make_event\n"
        "assert not tracing.enabled()\n"
        "with tracing.span('x') as s: assert s is None\n"
        "assert tracing.submitted({'a': 'b'}, task_id='t', route='r') == {'a': 'b'}\n"
        "assert tracing.inject({}) == {} and tracing.current_trace_id() is None\n"
        "assert make_event('step_completed', task_id='t', route='a.b.0', attempt=1, data={'step': 's'})"
        ".trace_id is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_traceparents_are_checked_and_task_ids_derive_stable_spans():
    from cogo import tracing

    assert tracing.task_traceparent("t-1", CALLER)[3:35] == CALLER[3:35]
    assert tracing.task_traceparent("t-1", CALLER) == tracing.task_traceparent("t-1", CALLER)
    assert tracing.task_traceparent("t-1", None) != tracing.task_traceparent("t-2", None)
    for bad in ("", "garbage", "01" + CALLER[2:], "00-" + "0" * 32 + CALLER[35:], CALLER + "x"):
        own = tracing.task_traceparent("t-1", bad)  # a bad parent: a trace of its own
        assert own == tracing.task_traceparent("t-1", None)
