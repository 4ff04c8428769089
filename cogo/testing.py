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

Fixtures: ``cogo_env`` (a started ``CogoEnv``), ``cogo_apps`` (override it: the apps to run),
``cogo_config`` (override it: TOML text merged over fast test settings), ``chat_server`` (an
OpenAI-compatible endpoint on 127.0.0.1 that answers from a script and counts calls).
The plugin is registered under pytest's ``pytest11`` entry point; it needs pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cogo.actors.app import App
from cogo.aio import dump_tasks
from cogo.client import Client
from cogo.config import Config, load_config

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
    ) -> None:
        self.apps = list(apps)
        self._config_text = merged_toml(TEST_CONFIG, config)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.data_dir = data_dir
        self.processes = processes
        self.env = env or {}
        self.sync = sync  # JetStream fsync: the server default, or "always" (as `cogo up`)
        self.url = ""
        self.config: Config | None = None
        self.client = Client("", name="cogo-testing")
        self._server: Any = None
        self._running: list[Any] = []
        self._conns: list[Any] = []
        self.children: dict[str, Any] = {}
        self.projector: Any = None

    async def __aenter__(self) -> CogoEnv:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        from cogo.actors import app as builtin
        from cogo.actors.loader import declare_apps
        from cogo.projections.projector import Projector
        from cogo.streams.connection import connect
        from cogo.streams.server import EmbeddedServer

        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cogo-test-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.data_dir / "cogo.toml"
        config_path.write_text(self._config_text)
        self.config_path = config_path
        self.config = load_config(config_path)
        self._server = EmbeddedServer(self.data_dir, sync=self.sync)
        self._server.start()
        await self._server.wait_ready()
        self.url = self._server.url
        apps = [self._app(a) for a in self.apps]
        nc = await connect(self.url, "cogo-testing-admin")
        self._conns.append(nc)
        await declare_apps(nc.jetstream(), self.config, apps)
        await self._run(builtin.get("dispatcher"))
        self.projector = Projector(nc, self.config, data_dir=self.data_dir)
        await self.projector.start()
        for app, ref in zip(apps, self.apps, strict=True):
            for spec in app.agents.values():
                if self.processes:
                    for n in range(spec.replicas):
                        self.spawn(_ref_of(app, ref), spec.name, f"{app.name}.{spec.name}-{n}")
                else:
                    await self._run(spec)
        self.client = Client(self.url, name="cogo-testing")
        await self.client.connect()

    async def _run(self, spec: Any) -> None:
        from cogo.streams.connection import connect

        assert self.config is not None
        nc = await connect(self.url, f"cogo-testing-{spec.name}")
        self._conns.append(nc)
        actor = spec.build(nc, self.config, data_dir=self.data_dir)
        await actor.start()
        self._running.append(actor)

    def spawn(self, ref: str, agent: str, label: str | None = None, **kwargs: Any) -> Any:
        """Start ``cogo run <ref> --agent <agent>`` against this env (a real process)."""
        from cogo.actors.runner import agent_args, child_env
        from cogo.actors.supervisor import spawn

        label = label or agent
        args = agent_args(ref, agent, self.url, config_path=self.config_path,
                          data_dir=self.data_dir, **kwargs)  # fmt: skip
        assert self.data_dir is not None
        log = self.data_dir / "logs" / f"{label}.log"
        roots = [str(Path.cwd()), *_import_roots(ref)]
        self.children[label] = spawn(args, env=child_env(roots, self.env),
                                     log_file=log)  # fmt: skip
        return self.children[label]

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
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for child in self.children.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(child.wait, 20)
        await asyncio.gather(*(a.stop(grace=5) for a in self._running), return_exceptions=True)
        if self.projector is not None:
            with contextlib.suppress(Exception):
                await self.projector.stop()
        for nc in self._conns:
            with contextlib.suppress(Exception):
                await nc.close()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
        if self._tmp is not None:
            self._tmp.cleanup()

    @staticmethod
    def _app(app: App | str) -> App:
        if isinstance(app, App):
            return app
        from cogo.actors.loader import load_ref

        return load_ref(app)

    async def events(self, task_id: str, *, wait: float = 0.2) -> list[dict[str, Any]]:
        """Every event of ``task_id`` in the stream so far, as dicts, in order."""
        from nats.js import api

        js = self.client.nc.jetstream()
        sub = await js.pull_subscribe(
            "events.>", stream="EVENTS",
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=30.0),
        )  # fmt: skip
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
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
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


# -- an OpenAI-compatible endpoint for tests -----------------------------------------------


@dataclass
class Reply:
    """One scripted answer of ``ChatServer``."""

    content: str | None = "ok"
    tool_calls: list[dict[str, Any]] | None = None
    status: int = 200
    prompt_tokens: int = 10
    completion_tokens: int = 5
    usage: bool = True  # False: a reply without usage (the caller must estimate)
    delay_s: float = 0.0
    finish_reason: str | None = None
    raw: str | None = None  # send this body as is (a malformed reply)
    retry_after: float | None = None  # a Retry-After header (with a 429 or 503)
    word_delay_s: float = 0.0  # streaming: a pause before each word
    honest: bool = True  # False: usage and text as scripted, past max_tokens (a lying endpoint)


@dataclass
class ChatServer:
    """``/v1/chat/completions`` on 127.0.0.1 answering from a script; counts every call.

    ``script`` is consumed in order; when it runs out, ``default`` answers. Streaming
    requests (``"stream": true``) get Server-Sent Events, word by word, with a final usage
    chunk. ``requests`` holds every request body received. Like a real endpoint it never
    reports more completion tokens than the request's ``max_tokens`` (the reply then ends
    with ``finish_reason: "length"``).
    """

    script: list[Reply] = field(default_factory=list)
    default: Reply = field(default_factory=Reply)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def start(self) -> ChatServer:
        chat = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    self._answer()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its deadline passed): as a real server, move on

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with chat._lock:
                    chat.requests.append({"path": self.path, "headers": _headers(self), **body})
                    reply = chat.script.pop(0) if chat.script else chat.default
                cap = body.get("max_tokens")
                if isinstance(cap, int) and reply.completion_tokens > cap and reply.honest:
                    reply = replace(reply, completion_tokens=cap, finish_reason="length")
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status != 200:
                    extra = {"Retry-After": str(reply.retry_after)} if reply.retry_after else {}
                    self._send(reply.status, {"error": {"message": f"scripted {reply.status}"}},
                               headers=extra)  # fmt: skip
                elif reply.raw is not None:
                    self._send(200, None, raw=reply.raw.encode())
                elif body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._send(200, _completion(body, reply))

            def _send(
                self, status: int, doc: Any, raw: bytes | None = None,
                headers: dict[str, str] | None = None,
            ) -> None:  # fmt: skip
                data = raw if raw is not None else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                words = (reply.content or "").split(" ")
                for i, word in enumerate(words):
                    if reply.word_delay_s:
                        time.sleep(reply.word_delay_s)
                    piece = word if i == 0 else " " + word
                    self._chunk({"choices": [{"index": 0, "delta": {"content": piece},
                                              "finish_reason": None}]}, body)  # fmt: skip
                if reply.tool_calls:
                    deltas = [{**call, "index": i} for i, call in enumerate(reply.tool_calls)]
                    self._chunk({"choices": [{"index": 0, "delta": {"tool_calls": deltas},
                                              "finish_reason": None}]}, body)  # fmt: skip
                finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
                self._chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
                            body)  # fmt: skip
                if reply.usage:
                    self._chunk({"choices": [], "usage": _usage(reply)}, body)
                self._write(b"data: [DONE]\n\n")
                self._write(b"")

            def _chunk(self, doc: dict[str, Any], body: dict[str, Any]) -> None:
                doc = {"id": "chatcmpl-test", "object": "chat.completion.chunk",
                       "model": body.get("model"), **doc}  # fmt: skip
                self._write(b"data: " + json.dumps(doc).encode() + b"\n\n")

            def _write(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def reply(self, content: str | None = "ok", **kwargs: Any) -> ChatServer:
        """Append one answer to the script."""
        self.script.append(Reply(content=content, **kwargs))
        return self


def _headers(handler: BaseHTTPRequestHandler) -> dict[str, str]:
    """The request's headers, names in one case (``Authorization``) whatever the client sent."""
    return {name.title(): value for name, value in handler.headers.items()}


def _usage(reply: Reply) -> dict[str, int]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}  # fmt: skip


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    doc: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message,
                     "finish_reason": reply.finish_reason or
                     ("tool_calls" if reply.tool_calls else "stop")}],
    }  # fmt: skip
    if reply.usage:
        doc["usage"] = _usage(reply)
    return doc


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
    cogo_apps: Sequence[App | str], cogo_config: str, tmp_path: Path
) -> AsyncIterator[CogoEnv]:
    """A started ``CogoEnv`` running ``cogo_apps`` on a private nats-server."""
    env = CogoEnv(*cogo_apps, config=cogo_config, data_dir=tmp_path / "cogo")
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
