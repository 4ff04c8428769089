"""``cogo.testing``: test your agents the way Cogo tests itself (a pytest plugin).

A real ``nats-server`` on a random loopback port, Cogo's dispatcher, the projector and your
apps' agents, in the test's process (or as real processes, to kill them), and a
``cogo.Client`` on it. No mocks of NATS: retries, budgets, validation and events are the real
ones.

    # conftest.py
    import pytest
    from lexicon.agents import app

    @pytest.fixture
    def cogo_apps():
        return [app]

    # test_lexicon.py
    async def test_count(cogo_env):
        handle = await cogo_env.client.submit("lexicon.count.0", {"text": "a b c"})
        assert await handle.result(timeout=10) == {"words": 3}

Fixtures: ``cogo_env`` (a started ``CogoEnv``; ``ctx.llm`` of its agents already points at
``chat_server``), ``cogo_apps`` (override it: the apps to run), ``cogo_config`` (override it:
TOML text merged over fast test settings), ``chat_server`` (an OpenAI-compatible endpoint on
127.0.0.1 that answers from a script and counts calls). For a unit test without a bus, see
``cogo.sdk.harness.AgentEnvironment`` (re-exported here).

The plugin is opt-in: ``-p cogo.testing`` in pytest's ``addopts`` (or
``pytest_plugins = ["cogo.testing"]`` in a top-level conftest.py). It needs pytest-asyncio
(``pip install 'cogo[testing]'``) and these settings, which ``cogo init`` writes::

    [tool.pytest.ini_options]
    addopts = "-p cogo.testing"
    asyncio_mode = "auto"        # async tests and fixtures without a marker on each
    pythonpath = ["."]           # your agents import from the project's root
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cogo.aio import dump_tasks
from cogo.config import LLM_BASE_URL_ENV, Config, load_config
from cogo.devllm import ChatServer, Reply, tool_call
from cogo.sdk.app import App
from cogo.sdk.client import Client
from cogo.sdk.harness import AgentEnvironment

if TYPE_CHECKING:
    from cogo.projections.projector import Projector
    from cogo.runtime.startup import Startup

__all__ = ["AgentEnvironment", "ChatServer", "CogoEnv", "Reply", "merged_toml", "tool_call"]

# Fast redelivery and short backoffs: fault paths finish in seconds in a test.
STOP_WATCHDOG_S = 60.0

TEST_CONFIG = """
[bus]
ack_wait_s = 2.0
# short enough for takeovers in seconds, long enough to renew on a loaded machine
lease_ttl_s = 4.0
max_deliver = 3
duplicate_window_s = 120.0

[actors]
concurrency = 16
batch = 16

[policy.default]
backoff = { initial_ms = 100, multiplier = 2.0, max_ms = 1000 }
"""


class CogoEnv:
    """A whole Cogo on a private nats-server: dispatcher, projector and ``apps``' agents.

        async with CogoEnv(app) as env:
            await env.client.submit("lexicon.count.0", {"text": "a b"})

    ``processes=True`` runs each agent as ``cogo run <ref> --agent NAME`` processes (the app
    must then be importable as ``module:attr``), so a test can SIGKILL them (``env.kill``).
    """

    def __init__(
        self,
        *apps: App | str,
        config: str = "",
        data_dir: Path | None = None,
        processes: bool = False,
        env: dict[str, str] | None = None,
        sync: str = "default",
        llm_url: str | None = None,
    ) -> None:
        self.apps = list(apps)
        self._config_text = merged_toml(TEST_CONFIG, config)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.data_dir = data_dir
        self.processes = processes
        self.env = env or {}
        self.sync = sync  # JetStream fsync: the server default, or "always" (as `cogo up`)
        # ctx.llm's endpoint for every agent of this env (a ChatServer's url): in its
        # configuration, in the agent processes' environment and, while the env runs, in
        # this process's (an agent reads it once, when it starts)
        self.llm_url = llm_url
        if llm_url:
            self._config_text = merged_toml(self._config_text, f'[llm]\nbase_url = "{llm_url}"\n')
            self.env = {LLM_BASE_URL_ENV: llm_url, **self.env}
        self._saved_llm_env: str | None = None
        self.url = ""
        self.config: Config | None = None
        self.client = Client("", name="cogo-testing")
        self.startup: Startup | None = None

    async def __aenter__(self) -> CogoEnv:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        from cogo.runtime.components import components
        from cogo.runtime.startup import Startup

        if self.llm_url:
            self._saved_llm_env = os.environ.get(LLM_BASE_URL_ENV)
            os.environ[LLM_BASE_URL_ENV] = self.llm_url
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cogo-test-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.data_dir / "cogo.toml"
        config_path.write_text(self._config_text)
        self.config_path = config_path
        self.config = load_config(config_path)
        # `cogo up`'s start-up with a test's options: a private server, agents here or as
        # processes, the projector here, no HTTP facade
        self.startup = Startup(
            self.data_dir,
            self.config,
            config_path=config_path,
            sync=self.sync,
            name="cogo-testing",
        )
        await self.startup.start_bus()
        self.url = self.startup.url
        apps = [self._app(a) for a in self.apps]
        await self.startup.declare(apps)
        await self.startup.run_agent(components.get("dispatcher"))
        await self.startup.start_projector()
        for app, ref in zip(apps, self.apps, strict=True):
            for spec in app.agents.values():
                if self.processes:
                    for n in range(spec.replicas):
                        self.spawn(_ref_of(app, ref), spec.name, f"{app.name}.{spec.name}-{n}")
                else:
                    await self.startup.run_agent(spec)
        self.client = Client(self.url, name="cogo-testing")
        await self.client.connect()

    @property
    def projector(self) -> Projector | None:
        """The projector running in this process (``None`` before ``start``)."""
        return self.startup.projector if self.startup is not None else None

    @property
    def children(self) -> dict[str, subprocess.Popen[bytes]]:
        """The agent processes started by this env (``spawn``), by label."""
        return self.startup.children if self.startup is not None else {}

    def spawn(self, ref: str, agent: str, label: str | None = None, **kwargs: Any) -> Any:
        """Start ``cogo run <ref> --agent <agent>`` against this env (a real process)."""
        assert self.startup is not None, "start the env first"
        roots = [str(Path.cwd()), *_import_roots(ref)]
        return self.startup.spawn(ref, agent, label, env=self.env, import_roots=roots, **kwargs)

    def kill(self, label: str) -> None:
        """SIGKILL one agent process started by this env."""
        child = self.children[label]
        child.kill()
        child.wait(10)

    async def stop(self) -> None:
        # a stop that hangs says where: every task's stack, once, on stderr
        watchdog = asyncio.get_running_loop().call_later(
            STOP_WATCHDOG_S, lambda: print(dump_tasks(), file=sys.stderr, flush=True)
        )
        try:
            await self._stop()
        finally:
            watchdog.cancel()

    async def _stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
        if self.startup is not None:
            await self.startup.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
        if self.llm_url:  # as it was before the env started
            if self._saved_llm_env is None:
                os.environ.pop(LLM_BASE_URL_ENV, None)
            else:
                os.environ[LLM_BASE_URL_ENV] = self._saved_llm_env

    @staticmethod
    def _app(app: App | str) -> App:
        if isinstance(app, App):
            return app
        from cogo.runtime.loader import load_ref

        return load_ref(app)

    async def events(self, task_id: str, *, wait: float = 0.2) -> list[dict[str, Any]]:
        """Every event of ``task_id`` in the stream so far, as dicts, in order."""
        from nats.js import api

        js = self.client.nc.jetstream()
        sub = await js.pull_subscribe(
            "events.>",
            stream="EVENTS",
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=30.0),
        )
        out: list[dict[str, Any]] = []
        try:
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=wait)
                except Exception:
                    break
                for msg in msgs:
                    event = json.loads(msg.data)
                    if event.get("task_id") == task_id:
                        out.append(event)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out


def _import_roots(ref: str) -> list[str]:
    """Where the module of ``ref`` imports from in this process (its package's parent
    folder), so an agent process finds it too (pytest's ``pythonpath`` is not inherited)."""
    import importlib.util

    top = ref.partition(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin)
    return [str(origin.parent.parent if origin.name == "__init__.py" else origin.parent)]


def merged_toml(base: str, over: str) -> str:
    """``over`` laid over ``base`` table by table, as TOML text (a test's config may set keys
    of the tables the fast test settings already have)."""
    import tomllib

    from cogo.config import deep_merge

    merged = deep_merge(tomllib.loads(base), tomllib.loads(over))
    lines: list[str] = []
    for table, values in merged.items():
        if not isinstance(values, dict):
            lines.insert(0, f"{json.dumps(table)} = {_toml_value(values)}")
            continue
        lines.append(f"[{json.dumps(table)}]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, integers, floats: JSON's form is TOML's


def _ref_of(app: App, given: App | str) -> str:
    """``module:attr`` for an app object (found among loaded modules), or the given ref."""
    if isinstance(given, str):
        return given
    import sys

    for name, module in list(sys.modules.items()):
        for attr, value in list(vars(module).items()) if module else []:
            if value is app and not name.startswith("__"):
                return f"{name}:{attr}"
    raise ValueError(f"app {app.name!r}: pass 'module:attr' to run it as processes")


# -- the pytest plugin ---------------------------------------------------------------------


@pytest.fixture
def cogo_apps() -> Sequence[App | str]:
    """The apps ``cogo_env`` runs: override this fixture in your conftest.py."""
    return []


@pytest.fixture
def cogo_config() -> str:
    """TOML merged over the fast test settings: override it to change policies or limits."""
    return ""


async def _cogo_env(
    cogo_apps: Sequence[App | str], cogo_config: str, tmp_path: Path, chat_server: ChatServer
) -> AsyncIterator[CogoEnv]:
    """A started ``CogoEnv`` running ``cogo_apps`` on a private nats-server; ``ctx.llm``
    answers from ``chat_server`` unless ``cogo_config`` sets ``[llm] base_url``."""
    import tomllib

    configured = tomllib.loads(cogo_config or "").get("llm", {}).get("base_url")
    env = CogoEnv(
        *cogo_apps,
        config=cogo_config,
        data_dir=tmp_path / "cogo",
        llm_url=None if configured else chat_server.url,
    )
    await env.start()
    try:
        yield env
    finally:
        await env.stop()


try:  # the plugin loads in every pytest run: without pytest-asyncio, fail only where used
    import pytest_asyncio

    cogo_env = pytest_asyncio.fixture(_cogo_env, name="cogo_env")
except ImportError:  # pragma: no cover - depends on the environment

    @pytest.fixture
    def cogo_env() -> None:
        pytest.fail("the cogo_env fixture needs pytest-asyncio: pip install 'cogo[testing]'")


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 (see ``ChatServer``)."""
    server = ChatServer().start()
    try:
        yield server
    finally:
        server.stop()
