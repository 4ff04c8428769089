"""Using Cogo from a project of one's own (docs/design.md §18): where files are found, the
bus-free harness, the typed client, and each newcomer item of issue 25 with a test or a
docs check (the item's number is in the test's docstring)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

import cogo
from cogo.config import load_config, resolve_data_dir
from cogo.devllm import ChatServer
from cogo.errors import CogoError, InvalidPayload, ModelNotAllowed, StepNameReused
from cogo.sdk.app import App
from cogo.sdk.client import Client
from cogo.sdk.handle import decode_as, payload_dict
from cogo.sdk.harness import AgentEnvironment

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

app = App("proj")


class Text(msgspec.Struct, forbid_unknown_fields=True):
    text: str


class Counted(msgspec.Struct):
    words: int


@app.agent("proj.count.0")
async def count(ctx: cogo.TaskContext, doc: Text) -> dict[str, int]:
    words = doc.text.split()
    ctx.report_usage(tokens=len(words))
    await ctx.emit({"seen": len(words)})
    return {"words": len(words)}


@app.agent("proj.counted.0")
async def counted(ctx: cogo.TaskContext, doc: Text) -> Counted:
    return Counted(words=len(doc.text.split()))


@app.agent("proj.think.0")
async def think(ctx: cogo.TaskContext, doc: Text) -> dict[str, Any]:
    upper = await ctx.step("upper", str.upper, doc.text)
    reply = await ctx.llm.chat([{"role": "user", "content": upper}])
    child = await ctx.call("proj.count.0", {"text": upper})  # type: ignore[attr-defined]
    ok = await ctx.wait_signal("approve")  # type: ignore[attr-defined]
    await ctx.sleep(5)  # type: ignore[attr-defined]
    return {"upper": upper, "reply": reply.content, "child": child, "ok": ok}


# -- where a project's files are -----------------------------------------------------


def test_data_dir_and_config_are_found_upward_from_the_working_directory(tmp_path, monkeypatch):
    """Item 3: COGO_DATA_DIR, else cogo.toml's data_dir (relative to it), else ./.cogo."""
    monkeypatch.delenv("COGO_DATA_DIR", raising=False)
    (tmp_path / "cogo.toml").write_text('data_dir = "state"\n[bus]\nmax_deliver = 7\n')
    deep = tmp_path / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert resolve_data_dir() == tmp_path / "state"
    assert load_config().bus.max_deliver == 7  # the project's file, from a subdirectory
    assert resolve_data_dir("given") == Path("given")
    monkeypatch.setenv("COGO_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("COGO_DATA_DIR")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-none"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_data_dir() == Path(".cogo")


async def test_client_without_a_running_system_says_how_to_point_at_one(tmp_path, monkeypatch):
    """Item 3: the error of Client() names data_dir and COGO_DATA_DIR."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COGO_DATA_DIR", raising=False)
    with pytest.raises(CogoError) as error:
        await Client().connect()
    assert "data_dir" in str(error.value) and "COGO_DATA_DIR" in str(error.value)


def test_cogo_init_writes_a_project_and_keeps_what_exists(tmp_path):
    """Items 2, 3: the starter, its tests and the pytest settings they need."""
    project = tmp_path / "my-proj"
    out = _cogo("init", str(project))
    assert out.returncode == 0, out.stderr
    assert (project / "my_proj" / "agents.py").exists()
    assert "data_dir" in (project / "cogo.toml").read_text()
    settings = (project / "pyproject.toml").read_text()
    for line in ('addopts = "-p cogo.testing"', 'asyncio_mode = "auto"', 'pythonpath = ["."]'):
        assert line in settings
    again = _cogo("init", str(project))
    assert "kept     my_proj/agents.py (exists)" in again.stdout


# -- the bus-free harness --------------------------------------------------------------


async def test_harness_runs_a_handler_with_validation_usage_and_output():
    env = AgentEnvironment()
    assert await env.run(count, {"text": "a b c"}) == {"words": 3}
    assert env.tokens == 3 and env.emitted == [{"seen": 3}]
    with pytest.raises(InvalidPayload, match=r"\$\.payload"):
        await env.run(count, {"txt": "typo"})


async def test_harness_steps_llm_calls_and_signals():
    calls: list[Any] = []
    env = AgentEnvironment(
        llm=["hello"],
        signals={"approve": True},
        calls={"proj.count.0": lambda payload: calls.append(payload) or {"words": 1}},
    )
    result = await env.run(think, Text(text="hi"))
    assert result == {"upper": "HI", "reply": "hello", "child": {"words": 1}, "ok": True}
    assert env.step_runs == ["upper"] and env.slept == [5.0] and calls == [{"text": "HI"}]
    # a retried attempt replays the journal: the step's function does not run again
    replay = AgentEnvironment(
        llm=["again"], steps=env.steps, signals={"approve": False}, calls={"proj.count.0": {"words": 9}}
    )
    assert (await replay.run(think, Text(text="ignored")))["upper"] == "HI"
    assert replay.step_runs == []


async def test_harness_llm_against_the_chat_server_and_a_reused_step_name():
    server = ChatServer().start()
    try:
        server.reply("from the server", prompt_tokens=7, completion_tokens=3)
        env = AgentEnvironment(llm=server.url, signals={"approve": 1}, calls={"proj.count.0": 0})
        assert (await env.run(think, Text(text="x")))["reply"] == "from the server"
        assert env.tokens == 10 and server.requests[0]["messages"][0]["content"] == "X"
    finally:
        server.stop()

    @App("twice").agent("twice.run.0")
    async def twice(ctx: cogo.TaskContext, doc: dict[str, Any]) -> int:
        await ctx.step("s", int, 1)
        return int(await ctx.step("s", int, 2))

    with pytest.raises(StepNameReused):
        await AgentEnvironment().run(twice, {})

    @App("models").agent("models.ask.0")
    async def ask(ctx: cogo.TaskContext, doc: dict[str, Any]) -> str | None:
        return (await ctx.llm.chat([{"role": "user", "content": "x"}], model=doc["model"])).content

    strict = AgentEnvironment(llm=["fine"], policy={"model": "small", "ceilings": {"allowed_models": ["small"]}})
    with pytest.raises(ModelNotAllowed):  # refused before anything is sent, as ctx.llm does
        await strict.run(ask, {"model": "big"})
    assert strict.llm_requests == []
    assert await strict.run(ask, {"model": "small"}) == "fine"


# -- the typed client and the fixtures -------------------------------------------------


def test_payloads_and_results_convert_from_and_to_declared_types():
    """Typed client: declared payload types in, result(type=) out."""
    assert payload_dict(Text(text="a")) == {"text": "a"}
    assert payload_dict({"text": "a"}) == {"text": "a"}
    assert decode_as({"words": 2}, Counted) == Counted(words=2)
    with pytest.raises(CogoError, match="JSON object"):
        payload_dict([1, 2])


@pytest.fixture
def cogo_apps() -> list[App]:
    return [app]


async def test_typed_submit_and_the_llm_endpoint_set_by_the_fixture(cogo_env, chat_server):
    """Items 1, 4: ctx.llm reaches chat_server with no setenv; --wait's document is whole."""
    handle = await cogo_env.client.submit(count, Text(text="one two"))
    assert handle.route == "proj.count.0"
    assert await handle.result(timeout=30, type=Counted) == Counted(words=2)
    same = await cogo_env.client.submit("proj.count.0", {"text": "x"})
    assert await same.result(timeout=30) == {"words": 1}
    # through its handler, the result comes back as the type the handler returns
    typed = await cogo_env.client.submit(counted, Text(text="a b c"))
    assert await typed.result(timeout=30) == Counted(words=3)
    by_name = await cogo_env.client.submit("proj.counted.0", Text(text="a b c"))
    assert await by_name.result(timeout=30) == {"words": 3}  # JSON data, as sent
    with pytest.raises(CogoError, match="not an @app.agent handler"):
        await cogo_env.client.submit(print, {})  # type: ignore[call-overload]
    status = await cogo_env.client.status(handle.task_id)  # what `submit --wait` prints now
    assert status.events and status.usage.get("tokens") == 2


# -- CLI details ---------------------------------------------------------------------


def test_a_module_with_a_bad_route_fails_with_its_own_code(tmp_path):
    """Item 9: `route.invalid`, not `app.not_found`."""
    (tmp_path / "badroutes.py").write_text(
        "import cogo\napp = cogo.App('bad')\n\n@app.agent('badroute')\n"
        "async def f(ctx, p: dict) -> dict:\n    return p\n"
    )
    out = _cogo("run", "badroutes:app", "--app-dir", str(tmp_path), "--nats-url", "nats://x")
    assert out.returncode == 2
    assert "[route.invalid]" in out.stderr and "badroute" in out.stderr


def test_errors_relayed_from_http_keep_the_api_code():
    """Item 9: the CLI's facade client raises with the answer's own code."""
    from cogo.cli.workflows import _code

    body = {"detail": "no workflow 'x'", "code": "workflow.not_found"}
    assert _code(httpx.Response(404, json=body)) == "workflow.not_found"
    assert _code(httpx.Response(502, text="bad gateway")) == "http.502"


def test_workflow_defs_reports_what_planning_refuses():
    """Item 10: an expression outside the language is reported by `defs`."""
    from cogo.workflows.planner import expression_problems

    nodes = [
        {"id": "g", "type": "gate", "condition": "__import__('os')"},
        {"id": "p", "type": "publish", "route": "a.b.0", "payload": {"t": "${params.x}"}},
    ]
    (problem,) = expression_problems(nodes, ["nodes"])
    assert problem["loc"] == ["nodes", 0, "condition"]


def test_help_texts_describe_every_submit_argument_and_no_rest_markup():
    """Item 11: `cogo --help` without reST backticks; submit's arguments described."""
    from cogo.cli.main import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found += subcommands(sub)
        return found

    parser = build_parser()
    for command in subcommands(parser):
        assert "``" not in command.format_help(), command.prog
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    submit = commands.choices["submit"]
    for action in submit._actions:
        if action.dest in ("route", "task_id", "timeout"):
            assert action.help, action.dest


def test_the_http_port_is_remembered_when_it_is_free(tmp_path):
    """Item 11: the HTTP port stays across restarts."""
    from cogo.runtime.system import HTTP_PORT_FILE, remembered_http_port
    from cogo.streams.server import free_port

    port = free_port()
    (tmp_path / HTTP_PORT_FILE).write_text(f"{port}\n")
    assert remembered_http_port(tmp_path) == port
    (tmp_path / HTTP_PORT_FILE).write_text("junk")
    assert remembered_http_port(tmp_path) is None


def test_runtime_policy_warning_prints_json_not_python():
    """Item 11: `null`, never `None`."""
    from cogo.config import RoutePolicy
    from cogo.streams.policies import _masked

    (line,) = _masked("a.b.0", RoutePolicy(), {"flow": {"burst": 3}, "max_tokens": 4000})
    assert "flow.burst=3 over the configured null" in line and "None" not in line


# -- docs checks ---------------------------------------------------------------------


def test_docs_say_what_the_code_does():
    """Items 8, 11, 12: the statements a newcomer tripped on, checked in the docs."""
    agents = (DOCS / "guide" / "agents.md").read_text()
    assert "attempts.exhausted" in agents  # not worker.error after the last attempt
    assert "a `set`, `frozenset` or `tuple` becomes a list" in agents
    assert "`Output` records" in (DOCS / "guide" / "llm-and-steps.md").read_text()
    start = (DOCS / "getting-started.md").read_text()
    assert "import nats" in start and '["nats_url"]' in start  # the snippet runs as it is
    assert "answers 202" in start and "payload.invalid" in start
    assert '{"sql": "SELECT ...",' in (DOCS / "guide" / "sql.md").read_text()
    testing = (DOCS / "guide" / "testing.md").read_text()
    assert 'asyncio_mode = "auto"' in testing and 'pythonpath = ["."]' in testing
    assert "cogo dev-llm" in testing  # item 7


def test_the_workflow_file_in_the_docs_plans():
    """Item 8: the complete example (map, signal) is the file the docs include, and plans."""
    from cogo.workflows.planner import plan_workflow

    path = ROOT / "examples" / "workflows" / "countReviewed.json"
    definition = json.loads(path.read_text())
    plan = plan_workflow(definition, {"texts": ["a b", "c"]}, load_config().route_policy)
    assert {"map", "signal"} <= {node.type for node in plan.nodes}
    assert path.read_text().strip() in (DOCS / "guide" / "workflows.md").read_text()


def test_readme_is_short_and_every_code_reference_resolves_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    assert "make up" in readme and "make test" in readme
    design = (DOCS / "design.md").read_text()
    cited: set[str] = set()
    for folder in ("cogo", "tests", "examples", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            old = "DESIGN"  # the shared document's name, never cited by the code
            assert f"{old} §" not in text and f"{old}.md" not in text, path
            cited |= set(re.findall(r"docs/design\.md §(\d+)", text))
    assert cited, "the code cites the design document"
    for number in cited:
        assert f"{{#section-{number}}}" in design, number


def _cogo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cogo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_dashboard_first_visit_and_whole_count_axis():
    """Item 5 (a static check of the page's script; tests/test_dashboard.py drives the page):
    no token yet is not "refused", the status line leaves "connecting", and a gridline at a
    fraction of a count gets no rounded label."""
    script = (ROOT / "cogo" / "http" / "static" / "dashboard.js").read_text()
    first_visit = script.index("a first visit has no token at all")
    handler = script[first_visit : first_visit + 600]
    assert 'given\n        ? "The API refused this token' in handler
    assert "waiting for a token" in handler
    assert "Number.isInteger(max * f)" in script and "Math.round(max * f)" not in script
