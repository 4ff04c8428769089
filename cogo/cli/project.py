"""``cogo init`` (a project of one's own: a starter agent, its tests, the settings) and
``cogo dev-llm`` (a fake OpenAI-compatible endpoint to try ``ctx.llm`` against)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cogo.config import CONFIG_FILE
from cogo.errors import CogoError


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser(
        "init",
        help="start a project here: a starter agent, its tests, cogo.toml, pytest settings",
        description="Write a starter agent (<name>/agents.py), its tests (tests/), cogo.toml "
        "(the data dir and the app `cogo up` loads) and the pytest settings the tests need, "
        "into DIR. Existing files are left alone.",
    )
    p.add_argument("dir", nargs="?", default=".", type=Path, help="the project (default: .)")
    p.add_argument("--name", default=None, help="the package, app and route service (default: from the directory)")
    p.set_defaults(func=cmd_init)

    p = subparsers.add_parser(
        "dev-llm",
        help="serve a fake OpenAI-compatible chat endpoint on 127.0.0.1",
        description="A stand-in for a real model, to try ctx.llm: answers every "
        "/v1/chat/completions request (streaming too, with usage) with --reply, or with the "
        "last user message (--echo). Start `cogo up` with COGO_LLM_BASE_URL set to its URL.",
    )
    p.add_argument("--port", type=int, default=8099, help="port on 127.0.0.1 (0: any free one)")
    p.add_argument("--reply", default="ok", help="the answer's text")
    p.add_argument("--echo", action="store_true", help="answer with the last user message")
    p.set_defaults(func=cmd_dev_llm)


def cmd_dev_llm(args: argparse.Namespace) -> int:
    from cogo.devllm import serve

    return serve(args.port, reply=args.reply, echo=args.echo)


def project_name(folder: Path) -> str:
    """A package / app / route-service name from a directory name (``my-app`` -> ``my_app``)."""
    name = re.sub(r"[^a-z0-9_]", "_", folder.resolve().name.lower()).strip("_") or "agents"
    return name if name[0].isalpha() else f"app_{name}"


AGENTS = '''"""{name}'s agents: `cogo up` runs them (cogo.toml loads the app)."""

import msgspec

import cogo

app = cogo.App("{name}")


class Text(msgspec.Struct, forbid_unknown_fields=True):
    text: str


@app.agent("{name}.count.0", policy={{"max_attempts": 3, "timeout_ms": 20000}})
async def count(ctx: cogo.TaskContext, doc: Text) -> dict[str, int]:
    """Count the words of a text."""
    words = doc.text.split()
    ctx.report_usage(tokens=len(words))
    return {{"words": len(words), "distinct": len({{w.lower() for w in words}})}}


@app.agent("{name}.reply.0", policy={{"max_tokens": 2000}})
async def reply(ctx: cogo.TaskContext, doc: Text) -> dict[str, str]:
    """Answer a text with an LLM (COGO_LLM_BASE_URL; try `cogo dev-llm --echo`)."""
    answer = await ctx.llm.chat([{{"role": "user", "content": doc.text}}])
    return {{"reply": answer.content or ""}}
'''

TESTS = '''"""{name}'s agents, twice: bus-free unit tests (milliseconds) and through a real
nats-server with the dispatcher (cogo_env, a second or two)."""

import pytest

import cogo
from cogo.sdk.harness import AgentEnvironment
from {name}.agents import Text, app, count, reply


# -- unit tests: the handler alone, with a fake context -------------------------------


async def test_count_counts_words():
    env = AgentEnvironment()
    assert await env.run(count, {{"text": "a b a"}}) == {{"words": 3, "distinct": 2}}
    assert env.tokens == 3


async def test_reply_answers_with_the_model():
    env = AgentEnvironment(llm=["Hello to you."])
    assert await env.run(reply, Text(text="Hello")) == {{"reply": "Hello to you."}}
    assert env.llm_requests[0]["messages"][-1]["content"] == "Hello"


# -- through the real runtime: retries, validation, budgets, events --------------------


@pytest.fixture
def cogo_apps():
    return [app]


async def test_count_through_the_bus(cogo_env):
    handle = await cogo_env.client.submit(count, Text(text="the cat and the hat"))
    assert await handle.result(timeout=30) == {{"words": 5, "distinct": 4}}


async def test_a_payload_that_does_not_fit_fails_with_its_field(cogo_env):
    handle = await cogo_env.client.submit("{name}.count.0", {{"txt": "typo"}})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=30)
    assert failed.value.code == "payload.invalid"


async def test_reply_through_the_bus(cogo_env, chat_server):
    chat_server.reply("Hi!")  # cogo_env already points ctx.llm at chat_server
    handle = await cogo_env.client.submit(reply, Text(text="Hello"))
    assert await handle.result(timeout=30) == {{"reply": "Hi!"}}
    assert chat_server.calls == 1
'''

PYTEST = """
[tool.pytest.ini_options]
# cogo.testing's fixtures (cogo_env, chat_server) are opt-in
addopts = "-p cogo.testing"
# async tests and fixtures without a marker on each (pytest-asyncio)
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
# the project's root on sys.path, so tests import your agents' package
pythonpath = ["."]
testpaths = ["tests"]
"""

PYPROJECT = """[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["cogo"]

[project.optional-dependencies]
test = ["cogo[testing]"]
"""

CONFIG = """# {name}: every `cogo` command and cogo.Client() run from this directory (or below it)
# find this file, and the data dir it names (relative to this file)
data_dir = ".cogo"

[apps]
# what `cogo up` runs besides Cogo's own agents
load = ["{name}.agents:app"]
"""


def cmd_init(args: argparse.Namespace) -> int:
    root: Path = args.dir
    name = args.name or project_name(root)
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise CogoError(f"--name {name!r}: a Python package name (lowercase letters, digits, _)")
    files = {
        Path(CONFIG_FILE): CONFIG.format(name=name),
        Path(name) / "__init__.py": "",
        Path(name) / "agents.py": AGENTS.format(name=name),
        Path("tests") / "test_agents.py": TESTS.format(name=name),
    }
    root.mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        path = root / relative
        if path.exists():
            print(f"kept     {relative} (exists)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote    {relative}")
    _pytest_settings(root / "pyproject.toml", name)
    _ignore(root / ".gitignore", ".cogo/")
    print(
        f"\nnext:\n  cogo up                                   # runs {name}'s agents too\n"
        f'  cogo submit --route {name}.count.0 --payload \'{{"text": "a b c"}}\' --wait\n'
        "  pytest                                    # needs pip install 'cogo[testing]'"
    )
    return 0


def _pytest_settings(pyproject: Path, name: str) -> None:
    if not pyproject.exists():
        pyproject.write_text(PYPROJECT.format(name=name) + PYTEST)
        print("wrote    pyproject.toml (with the pytest settings)")
        return
    text = pyproject.read_text()
    if "[tool.pytest.ini_options]" in text:
        print(
            "kept     pyproject.toml: make sure [tool.pytest.ini_options] has\n"
            + "".join(f"           {line}\n" for line in PYTEST.strip().splitlines()[1:])
        )
        return
    pyproject.write_text(text.rstrip("\n") + "\n" + PYTEST)
    print("added    [tool.pytest.ini_options] to pyproject.toml")


def _ignore(gitignore: Path, entry: str) -> None:
    lines = gitignore.read_text().splitlines() if gitignore.exists() else []
    if entry not in lines:
        gitignore.write_text("\n".join([*lines, entry]) + "\n")
